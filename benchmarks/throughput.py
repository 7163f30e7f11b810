"""Throughput of the training and inference paths, measured side by side in one run.

Usage: ``python benchmarks/throughput.py [--data-dir DIR] [--json] [--quick]`` (see ``benchmarks/README.md``).

Measures images/s of (a) a naive per-sample pipeline like the course baseline's (PIL decode + torchvision transforms
in ``Dataset.__getitem__``, data side only), (b) our cached pipeline (memory-mapped crop cache, ``data.make_loader``,
per-batch ``augment`` warp, data side only), (c) model training steps on random tensors, alone and while another
process keeps a core busy: ``train_step_img_s_loaded`` / ``ratio_loaded_unloaded`` in a fresh process started while
the busy loop runs, and ``train_step_img_s_loaded_after_start`` / ``ratio_loaded_after_start`` in this process
while a busy loop started after it runs (both with the defaults: ``landmarks_lib.cpuload``'s watcher lets OpenMP's
waiting threads sleep while the CPU is busy), (d) full training steps
through ``engine.fit`` (loader + augmentation + model step), (e) batched inference (``predict.predict_crops``; on
the CPU with onnxruntime installed also ``passes.predict_crops`` through onnxruntime: ``infer_onnx_img_s``,
``ratio_infer_onnx_torch``), all
with the backbone, crop and batch of ``params/cpu.yaml``; then the parse time and peak memory of ``io.read_landmarks``
on a generated contest-sized ``landmarks.csv`` (394,000 rows x 971 points) in a subprocess. Each throughput is
measured a few times in rotation (the order reversed every other round) and the median is reported, so background
load affects all of them alike; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from report import emit  # noqa: E402
from threads_under_load import busy_core, loaded_at_start  # noqa: E402

from landmarks_lib.core import params as P
from landmarks_lib.core.devices import select_device
from landmarks_lib.data.loading import BatchSampler, loader_settings, make_loader
from landmarks_lib.inference.backends import as_backend
from landmarks_lib.inference.passes import predict_crops
from landmarks_lib.models import landmark
from landmarks_lib.runs.run_folder import RunFolder
from landmarks_lib.runs.workflow import inference_backend
from landmarks_lib.training import cpuload, engine

CONTEST_ROWS = 394_000


# ------------------------------------------------------------------------------------------------ setup
def load_params(data_dir: str, bench_dir: str, profile=None) -> tuple[dict, str]:
    """``profile`` (default ``params/cpu.yaml``; defaults where it is missing), pointed at ``data_dir`` and the bench
    cache folder; ``pretrained=false`` (weights do not change speed)."""
    profile = Path(profile).resolve() if profile else REPO / "params" / "cpu.yaml"
    used = (str(profile.relative_to(REPO)) if profile.is_relative_to(REPO) else str(profile)) if profile.exists() \
        else f"defaults ({profile} not found)"
    p = P.resolve(profile=str(profile) if profile.exists() else None, data_dir=str(data_dir),
                  overrides=dict(cache_dir=bench_dir, pretrained=False, val_fraction=0.0, max_train_images=0,
                                 time_budget_min=0.0))
    return p, used


def build_cache(params: dict, data, bench_dir: str):
    """Open (building it first if needed) the crop cache of ``engine.stage_cache``; returns ``(cache, build_s)``
    where ``build_s`` is the time of this run's build, or the one recorded when this script built it earlier."""
    record = os.path.join(bench_dir, "cache_build.json")
    before = set(os.listdir(bench_dir)) if os.path.isdir(bench_dir) else set()
    t = time.perf_counter()
    c = engine.stage_cache(engine.stage_recipe(params, "train"), data, params, progress=False)
    dt = time.perf_counter() - t
    times = {}
    if os.path.exists(record):
        with open(record) as f:
            times = json.load(f)
    name = os.path.basename(c.path)
    if name not in before:
        times[name] = round(dt, 2)
        with open(record, "w") as f:
            json.dump(times, f)
    return c, times.get(name)


def warm_files(paths) -> None:
    """Read files once so both pipelines start from a warm page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


# ------------------------------------------------------------------------------------------------ (a) naive
class NaiveDataset(torch.utils.data.Dataset):
    """The course baseline's way: decode each JPEG with PIL in ``__getitem__``, scale the shorter side to the crop
    size, take the centre square, ``ToTensor`` and ``Normalize`` per sample; landmarks moved per sample."""

    def __init__(self, image_dir, names, points, size):
        from torchvision import transforms as T

        self.image_dir, self.names, self.points, self.size = image_dir, names, points, size
        self.tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                             T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(os.path.join(self.image_dir, self.names[i])) as im:
            im = im.convert("RGB")
            w, h = im.size
            x = self.tf(im)
        s = self.size / min(w, h)
        off = np.array([(w * s - self.size) / 2, (h * s - self.size) / 2], np.float32)
        pts = torch.from_numpy(np.asarray(self.points[i], np.float32) * s - off)
        return {"image": x, "landmarks": pts}


def run_naive(ctx, n_batches: int) -> float:
    ds = NaiveDataset(ctx["data"].image_dir, ctx["data"].names, ctx["data"].table.points, ctx["size"])
    sub = torch.utils.data.Subset(ds, ctx["data"].train_idx)
    kw = loader_settings(ctx["device"], ctx["params"]["num_workers"])
    loader = torch.utils.data.DataLoader(sub, batch_size=ctx["batch"], shuffle=True, drop_last=True, **kw)
    t = time.perf_counter()
    count = 0
    for i, batch in enumerate(loader):
        batch["image"].to(ctx["device"])
        count += len(batch["image"])
        if i + 1 >= n_batches:
            break
    _sync(ctx["device"])
    return count / (time.perf_counter() - t)


# ------------------------------------------------------------------------------------------------ (b) cached
def run_cached(ctx, n_batches: int, round_: int = 0, augment_: bool = True) -> float:
    """Our data side as ``engine.fit`` runs it (``engine.prepare_batch``): cache batches -> affine warp of images
    and points -> photometric jitter fused with /255 and ``normalize`` (no model). ``augment_=False``: the crop
    sliced out instead (``augment: false``), the same work as the naive pipeline does."""
    p, c, device, size = ctx["params"], ctx["cache"], ctx["device"], ctx["size"]
    sampler = BatchSampler(ctx["data"].train_idx, ctx["batch"], shuffle=True, seed=round_, drop_last=True)
    loader = make_loader(c, sampler, device, p["num_workers"])
    gen = torch.Generator().manual_seed(round_)
    perm = ctx["perm"]
    t = time.perf_counter()
    count = 0
    for i, batch in enumerate(loader):
        x, _ = engine.prepare_batch(batch, p, device, size, c.pad, ctx["mean"], ctx["std"],
                                    gen if augment_ else None, perm, False, ctx["unmatched"])
        count += len(x)
        if i + 1 >= n_batches:
            break
    _sync(device)
    return count / (time.perf_counter() - t)


def run_load(ctx, n_batches: int, round_: int = 0) -> float:
    """The loader alone (``data.make_loader`` over the cache: batch gather of images and points, with pinned memory
    on CUDA): all the CPU does per image when the augmentation runs on the accelerator."""
    sampler = BatchSampler(ctx["data"].train_idx, ctx["batch"], shuffle=True, seed=round_, drop_last=True)
    loader = make_loader(ctx["cache"], sampler, ctx["device"], ctx["params"]["num_workers"])
    t = time.perf_counter()
    count = 0
    for i, batch in enumerate(loader):
        count += len(batch["images"])
        if i + 1 >= n_batches:
            break
    return count / (time.perf_counter() - t)


# ------------------------------------------------------------------------------------------------ (c) model alone
def run_model_step(ctx, n_batches: int, round_: int = 0) -> float:
    """``engine.train_step`` (``engine.fit``'s model part) on random tensors: forward, ``landmark_loss``, backward,
    optimizer and scheduler step (a fresh model each time, as (d) starts one)."""
    p, device, size, b, k = ctx["params"], ctx["device"], ctx["size"], ctx["batch"], ctx["num_points"]
    torch.manual_seed(round_)
    model = landmark.build_model(p["backbone"], k, pretrained=False, dropout=p["dropout"], head=p["head"],
                               crop_size=size).to(device).train()
    cl = p["channels_last"]  # as engine.fit
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = engine.make_optimizer(p, model, p["lr"])
    sched, per_step = engine.make_scheduler(p, opt, p["lr"], 1, n_batches)
    x = torch.randn(b, 3, size, size, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.rand(b, k, 2, device=device) * size  # crop pixels
    w = torch.ones(b, device=device)
    _sync(device)
    t = time.perf_counter()
    for _ in range(n_batches):
        engine.train_step(model, opt, sched if per_step else None, x, target, w, p, size, p["amp"])
    _sync(device)
    return n_batches * b / (time.perf_counter() - t)


def run_model_step_loaded(ctx, n_batches: int, round_: int = 0) -> float:
    """``run_model_step`` while another process keeps one core busy (a pure-Python loop, as a second job or a
    notebook kernel would): how the training step degrades when the machine is shared."""
    with busy_core(0.3):
        rate = run_model_step(ctx, n_batches, round_)
    time.sleep(1.5)  # the next measurement starts on a calm CPU (the watcher lets threads spin again after 1 s)
    return rate


# ------------------------------------------------------------------------------------------------ (d) engine.fit
def run_train(ctx, n_batches: int, round_: int = 0) -> float:
    """One epoch of ``engine.fit`` itself (stage ``train``, no validation) over ``n_batches`` batches of the training
    split; its own epoch timer (``history[-1]["time_s"]``: the batch loop only, not model building or
    checkpointing) gives images/s."""
    data = ctx["data"]
    b = ctx["batch"]
    sub = np.sort(np.random.default_rng([round_, 11]).choice(data.train_idx, n_batches * b, replace=False))
    part = dataclasses.replace(data, train_idx=sub, val_idx=np.zeros(0, np.int64))  # same cache, same flip perm
    p = {**ctx["params"], "epochs": 1, "seed": round_}
    run_dir = tempfile.mkdtemp(prefix="throughput-run-", dir=ctx["bench_dir"])
    try:
        res = engine.fit(p, part, RunFolder(run_dir).create("benchmarks/throughput.py"), "train", progress=False)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return n_batches * b / max(res["history"][-1]["time_s"], 1e-9)


# ------------------------------------------------------------------------------------------------ (e) inference
def run_infer(ctx, n_batches: int, round_: int = 0) -> float:
    """``predict.predict_crops`` (no flip TTA) on crops sliced from the cache, as ``predict_cache`` does."""
    c, size, b = ctx["cache"], ctx["size"], ctx["batch"]
    idx = np.sort(np.random.default_rng([round_, 13]).choice(len(c), min(len(c), n_batches * b), replace=False))
    crops = c.images[idx, c.pad: c.pad + size, c.pad: c.pad + size]
    _sync(ctx["device"])
    t = time.perf_counter()
    predict_crops(as_backend(ctx["infer_model"], ctx["device"], ctx["params"]["amp"]), ctx["meta"], crops,
                  batch_size=b, tta_flip=False)
    _sync(ctx["device"])
    return len(idx) / (time.perf_counter() - t)


def run_infer_onnx(ctx, n_batches: int, round_: int = 0) -> float:
    """``run_infer``'s crops through onnxruntime (``passes.predict_crops`` on ``export.onnx_network`` of the same
    network), as noise finding and the pipeline's predictions run on the CPU (``inference_backend: auto``)."""

    c, size, b = ctx["cache"], ctx["size"], ctx["batch"]
    idx = np.sort(np.random.default_rng([round_, 13]).choice(len(c), min(len(c), n_batches * b), replace=False))
    crops = c.images[idx, c.pad: c.pad + size, c.pad: c.pad + size]
    t = time.perf_counter()
    predict_crops(ctx["onnx_model"], ctx["meta"], crops, batch_size=b, tta_flip=False)
    return len(idx) / (time.perf_counter() - t)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ CSV parse
def contest_csv(bench_dir: str, source: str, rows: int) -> str:
    """A contest-sized ``landmarks.csv`` (``rows`` rows, names ``000000.jpg``...; coordinates cycling through the
    real rows of ``source``), written once into ``bench_dir`` and reused."""
    path = os.path.join(bench_dir, f"landmarks-{rows}.csv")
    if os.path.exists(path):
        return path
    with open(source, newline="", encoding="utf-8-sig") as f:
        head = f.readline()
        rests = [s[s.index("\t"):] for s in f if "\t" in s]
    rests = [s if s.endswith("\n") else s + "\n" for s in rests]
    tmp = path + f".{os.getpid()}.tmp"
    try:
        with open(tmp, "w", newline="") as g:
            g.write(head)
            for s in range(0, rows, 5000):
                g.write("".join(f"{i:06d}.jpg{rests[i % len(rests)]}" for i in range(s, min(rows, s + 5000))))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    return path


_PARSE = r"""
import json, resource, sys, time
from landmarks_lib.data.tables import read_landmarks


def peak_mb():
    # VmHWM: this process image's own peak RSS (ru_maxrss would carry the parent's peak across fork + exec).
    try:
        with open("/proc/self/status") as f:
            return next(int(s.split()[1]) for s in f if s.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


r0, base = resource.getrusage(resource.RUSAGE_SELF), peak_mb()
t = time.perf_counter()
tb = read_landmarks(sys.argv[1])
dt = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": dt, "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, "peak_mb": peak_mb(),
                  "base_mb": base, "shape": list(tb.points.shape), "dtype": str(tb.points.dtype)}))
"""


def parse_csv(path: str) -> dict:
    """``io.read_landmarks`` (no parsed-once cache) in a fresh interpreter: wall and CPU seconds, peak RSS (MB) of
    that process, and its RSS before parsing (interpreter and imports)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _PARSE, path], capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"parsing {path} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "thousand-standin"),
                    help="contest-format data folder (default: ../shared/datasets/thousand-standin)")
    ap.add_argument("--params", default=None, help="the profile whose backbone, crop, batch and device are "
                    "measured (default params/cpu.yaml; params/gpu.yaml on a GPU)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 1 round, 2 batches, a 20,000-row CSV")
    ap.add_argument("--rounds", type=int, default=None, help="rotations over all measurements (default 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: the profile's `threads`, 0 = torch's default)")
    ap.add_argument("--csv-rows", type=int, default=None, help=f"rows of the generated CSV (default {CONTEST_ROWS})")
    ap.add_argument("--no-csv", action="store_true", help="skip the CSV parse measurement")
    a = ap.parse_args(argv)
    rounds = a.rounds or (1 if a.quick else 3)
    data_batches, model_batches = (2, 2) if a.quick else (12, 4)
    csv_rows = a.csv_rows or (20_000 if a.quick else CONTEST_ROWS)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    bench_dir = os.path.join(P.default_cache_dir(), "bench")
    os.makedirs(bench_dir, exist_ok=True)
    params, profile = load_params(a.data_dir, bench_dir, a.params)
    threads = a.threads if a.threads is not None else params["threads"]
    if threads:
        params["threads"] = int(threads)
    engine.apply_threads(params)  # as every stage does: the thread count (and cpuload's watcher with adaptive_threads)
    device = select_device(params["device"])
    load_before = os.getloadavg()

    log(f"params: {profile}; backbone {params['backbone']}, crop {params['crop_size']} ({params['crop_mode']}), "
        f"batch {params['batch_size']}, device {device}, torch threads {torch.get_num_threads()}")
    data = engine.load_train_data(params, progress=False)
    t = time.perf_counter()
    cache, build_s = build_cache(params, data, bench_dir)
    log(f"crop cache {cache.path}: {cache.images.shape}, build {build_s} s (open {time.perf_counter() - t:.1f} s)")
    perm = data.flip_perm()
    mean, std = landmark.input_normalization(params["backbone"], params["input_norm"])
    meta = engine.model_meta(engine.stage_recipe(params, "train"), data.table.num_points, None)
    infer_model = landmark.build_model(params["backbone"], data.table.num_points, pretrained=False,
                                     head=params["head"], crop_size=int(params["crop_size"])).to(device).eval()
    ctx = dict(params=params, data=data, cache=cache, device=device, size=int(params["crop_size"]),
               batch=int(params["batch_size"]), num_points=data.table.num_points, bench_dir=bench_dir,
               perm=None if perm is None else torch.as_tensor(perm, dtype=torch.long), mean=mean, std=std,
               unmatched=None if perm is None else torch.as_tensor(data.flip_unmatched(), dtype=torch.long),
               meta=meta, infer_model=infer_model)
    warm_files([os.path.join(data.image_dir, n) for n in data.names] + [os.path.join(cache.path, "images.npy")])

    runs = {"naive": lambda r: run_naive(ctx, data_batches),
            "cached": lambda r: run_cached(ctx, data_batches, r),
            "cached_noaug": lambda r: run_cached(ctx, data_batches, r, augment_=False),
            "cached_load": lambda r: run_load(ctx, data_batches, r),
            "model_step": lambda r: run_model_step(ctx, model_batches, r),
            "model_step_loaded": lambda r: run_model_step_loaded(ctx, model_batches, r),
            "train_step": lambda r: run_train(ctx, model_batches, r),
            "infer": lambda r: run_infer(ctx, model_batches * 2, r)}
    warms = [run_naive, run_cached, run_model_step, run_train, run_infer]
    if device.type == "cpu" and inference_backend(params, device) == "onnx":
        from landmarks_lib.inference.export import onnx_network

        ctx["onnx_model"] = onnx_network({"meta": meta, "state_dict": infer_model.state_dict()})
        runs["infer_onnx"] = lambda r: run_infer_onnx(ctx, model_batches * 2, r)
        warms.append(run_infer_onnx)
    log("warm-up")
    for warm in warms:
        warm(ctx, 1)
    results = {k: [] for k in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            results[name].append(runs[name](r))
            log(f"round {r + 1}/{rounds} {name}: {results[name][-1]:.1f} img/s")

    def med(name):
        return statistics.median(results[name])

    def ratio(num, den):
        return statistics.median([x / y for x, y in zip(results[num], results[den])])

    # (c) in a fresh process started while a busy loop holds one core, with this project's defaults
    # (landmarks_lib.cpuload's watcher lets OpenMP's waiting threads sleep while the CPU is busy)
    started_loaded = loaded_at_start(rounds, 12) if device.type == "cpu" else None
    out = {"naive_img_s": med("naive"), "cached_img_s": med("cached"), "model_step_img_s": med("model_step"),
           "train_step_img_s": med("train_step"), "infer_img_s": med("infer"),
           "csv_parse_s": None, "csv_peak_mb": None,
           "ratio_cached_naive": ratio("cached", "naive"), "ratio_train_model": ratio("train_step", "model_step"),
           "cached_noaug_img_s": med("cached_noaug"), "ratio_cached_noaug_naive": ratio("cached_noaug", "naive"),
           "cached_load_img_s": med("cached_load"), "ratio_cached_load_naive": ratio("cached_load", "naive"),
           "train_step_img_s_loaded_after_start": med("model_step_loaded"),
           "ratio_loaded_after_start": ratio("model_step_loaded", "model_step")}
    if started_loaded is not None:
        out.update(train_step_img_s_loaded=statistics.median(started_loaded["loaded"]),
                   ratio_loaded_unloaded=statistics.median(started_loaded["loaded"]) / med("model_step"),
                   loaded_wait_policy=started_loaded["choice"])
    if "infer_onnx" in results:
        out.update(infer_onnx_img_s=med("infer_onnx"), ratio_infer_onnx_torch=ratio("infer_onnx", "infer"))
    if not a.no_csv:
        t = time.perf_counter()
        path = contest_csv(bench_dir, os.path.join(a.data_dir, "train", "landmarks.csv"), csv_rows)
        log(f"CSV {path} ready in {time.perf_counter() - t:.1f} s; parsing")
        res = parse_csv(path)
        if res["shape"] != [csv_rows, data.table.num_points, 2] or res["dtype"] != "int16":
            raise RuntimeError(f"unexpected parse result {res}")
        out.update(csv_parse_s=res["s"], csv_peak_mb=res["peak_mb"], csv_parse_cpu_s=res["cpu_s"],
                   csv_base_mb=res["base_mb"], csv_rows=csv_rows)
    out.update(cache_build_s=build_s, profile=profile, backbone=params["backbone"], crop_size=ctx["size"],
               crop_mode=params["crop_mode"], batch_size=ctx["batch"], device=str(device),
               torch_threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
               wait_watcher=dict(cpuload.STATE),
               gomp_spincount=os.environ.get("GOMP_SPINCOUNT"),
               rounds=rounds, data_batches=data_batches,
               model_batches=model_batches, all_img_s={k: [round(v, 1) for v in vs] for k, vs in results.items()},
               loadavg_1min=[round(load_before[0], 2), round(os.getloadavg()[0], 2)], quick=bool(a.quick))
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}
    return emit(out, a.json, 24)


if __name__ == "__main__":
    raise SystemExit(main())
