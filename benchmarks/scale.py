"""The main job at contest size: wall time and memory of every stage, on a contest-size copy of the data.

``python benchmarks/scale.py --data-dir DIR [--budget-min 5] [--resume] [--json] [--work-dir W]
[--params params/cpu.yaml] [--stages validate,01_eda,...]``

``DIR`` is a contest-size copy (``python3 ../shared/tools/contest_scale_build.py ../shared/datasets/thousand-standin
DIR``: 393,930 training and 99,819 test rows, each a symlink to a stand-in image). The benchmark runs, each as its
own process, in this order:

- ``validate``: ``python -m landmarks_lib.validate DIR``;
- ``01_eda`` ... ``04_visualize``: ``python -m landmarks_lib.pipeline --notebooks NN`` with ``--params`` (default
  ``params/cpu.yaml``), ``time_budget_min`` = ``--budget-min`` (each training stage stops after that many minutes of
  its epoch loop) and its own ``cache_dir``; the run folder is ``W/run`` (the submission is checked there);
- ``predict``: the predict CLI on every test image with the run's model and the faster backend (onnx when
  onnxruntime imports, else torch), the model's own inference setting.

Per stage it reports ``wall_s`` and ``peak_mb``: the largest sum, over the stage's whole process tree (the notebook
kernel, loader and cache workers included), of ``Pss_Anon + Pss_Shmem`` from ``/proc/PID/smaps_rollup``, sampled
every 0.5 s (or 10x as long as one sample takes, when that is longer: reading ``smaps_rollup`` of a process with
tens of GB mapped costs tens of ms, and the sampler must not slow what it measures). Proportional set sizes count
shared pages once across forked workers, and memory-mapped file pages
(the crop caches, the parsed labels) are not anonymous, so they do not count: they are the page cache's to drop.
``train:<stage>`` rows give each training stage's time inside its epoch loops (``time_s`` of ``history.csv``);
``training_s`` is their sum, ``non_training_s`` everything else (the stages' wall times minus ``training_s``),
``cache_gb`` the size on disk of the cache folder after the last stage (its peak). ``submission_rows`` counts the
data rows of the run's checked ``submission.csv``.

The work folder ``W`` (default ``$TMPDIR/thousand-landmarks-scale``) holds the run, the cache, the predict CLI's
output and ``scale_state.json`` (every finished stage's figures). ``--resume`` skips the finished stages and
continues the interrupted one (the runner's ``--resume``: finished training stages are reused, an interrupted one
continues from its last checkpoint); without it the work folder is started afresh. The cache folder is removed when
the benchmark completes (every stage); an interrupted benchmark, or one run in parts with ``--stages``, keeps it
for ``--resume`` and says where it is. ``--json`` prints
one object: ``stages`` (name -> ``wall_s``, ``peak_mb``), ``peak_mb_max``, ``training_s``, ``non_training_s``,
``cache_gb``, ``submission_rows``, ``budget_min`` and the conditions (``cpu_count``, ``threads`` of the profile).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report import emit  # noqa: E402

NOTEBOOKS = ("01_eda", "02_train", "03_finetune", "04_visualize")
STAGES = ("validate",) + NOTEBOOKS + ("predict",)
SAMPLE_S = 0.5
MAX_SHARE = 0.1  # the sampler's largest share of one core
MARKER = ".thousand-landmarks-scale"  # the work folder is ours: --resume and a fresh start touch nothing else


# ------------------------------------------------------------------------------------------- memory of a tree
def _children() -> dict:
    """``{ppid: [pid, ...]}`` of every process now (from ``/proc/PID/stat``)."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree_pss_mb(root: int) -> float:
    """``Pss_Anon + Pss_Shmem`` (MB) summed over ``root`` and all its descendants (0 for processes gone)."""
    kids, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024.0


def run_measured(cmd: list, log_path: str, env: dict) -> dict:
    """Run ``cmd`` (output to ``log_path``), sampling its tree's memory every ``SAMPLE_S``; ``{"wall_s", "peak_mb",
    "rc"}``. Ctrl-C stops the child too, then re-raises."""
    with open(log_path, "ab") as log:
        log.write(("\n$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak = [0.0]
        done = threading.Event()

        def sample():
            # Reading smaps_rollup walks every mapping of a process: for a kernel with 20 GB of memory-mapped
            # caches one read takes tens of ms. The interval stretches to MAX_SHARE x the read's own time, so the
            # sampler never takes more than a tenth of a core from the stage it measures.
            while not done.is_set():
                t = time.perf_counter()
                peak[0] = max(peak[0], tree_pss_mb(proc.pid))
                done.wait(max(SAMPLE_S, (time.perf_counter() - t) / MAX_SHARE))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            done.set()
            th.join()
    return {"wall_s": round(time.time() - t0, 1), "peak_mb": round(peak[0], 1), "rc": rc}


def disk_gb(path) -> float:
    """Size on disk (allocated blocks) of the files under ``path``, GB (links not followed)."""
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_blocks * 512
            except OSError:
                pass
    return total / 1e9


# ---------------------------------------------------------------------------------------------- the stages
def stage_command(stage: str, args, work: str, resume: bool) -> list:
    py = sys.executable
    run_dir = os.path.join(work, "run")
    if stage == "validate":
        return [py, "-m", "landmarks_lib.validate", args.data_dir]
    if stage in NOTEBOOKS:
        cmd = [py, "-m", "landmarks_lib.pipeline", "--data-dir", args.data_dir, "--run-dir", run_dir,
               "--params", args.params, "-p", "time_budget_min", str(args.budget_min),
               "-p", "cache_dir", os.path.join(work, "cache"), "--notebooks", stage[:2], "--quiet"]
        # The first notebook starts the run folder afresh, unless a benchmark is resumed; later ones continue it.
        return cmd + (["--force"] if stage == NOTEBOOKS[0] and not resume else ["--resume"])
    if stage == "predict":
        out = os.path.join(work, "predict", "test_points.csv")
        return [py, "-m", "landmarks_lib.predict", "--checkpoint", run_dir, "--images",
                os.path.join(args.data_dir, "test", "images"), "--out", out, "--backend", fastest_backend()]
    raise ValueError(stage)


def fastest_backend() -> str:
    """``onnx`` where onnxruntime imports (``inference.default_backends``), else ``torch``."""
    from inference import default_backends

    return "onnx" if "onnx" in default_backends().split(",") else "torch"


def training_rows(work: str) -> dict:
    """``train:<stage>`` -> seconds inside the epoch loops (the last ``time_s`` of each stage in ``history.csv``)."""
    path = os.path.join(work, "run", "history.csv")
    if not os.path.exists(path):
        return {}
    import pandas as pd
    df = pd.read_csv(path)
    return {f"train:{s}": float(g["time_s"].max()) for s, g in df.groupby("stage", sort=False)}


def submission_rows(work: str) -> int | None:
    path = os.path.join(work, "run", "submission.csv")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1


def prepare_work(work: str, resume: bool) -> dict:
    """The state of a resumed benchmark, or a fresh work folder (only ever one this script made)."""
    state_path = os.path.join(work, "scale_state.json")
    if resume and os.path.exists(state_path):
        with open(state_path) as f:
            return json.load(f)
    if os.path.exists(work):
        if not os.path.exists(os.path.join(work, MARKER)):
            raise SystemExit(f"{work} exists and was not made by this benchmark: choose another --work-dir")
        shutil.rmtree(work)
    os.makedirs(work)
    open(os.path.join(work, MARKER), "w").close()
    return {"stages": {}}


def save_state(work: str, state: dict) -> None:
    tmp = os.path.join(work, "scale_state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(work, "scale_state.json"))


def profile_threads(path: str):
    try:
        import yaml
        with open(path) as f:
            return (yaml.safe_load(f) or {}).get("threads")
    except Exception:  # noqa: BLE001  (a condition, reported when readable)
        return None


def summary(state: dict, work: str, args) -> dict:
    stages = {k: {"wall_s": v["wall_s"], "peak_mb": v["peak_mb"]} for k, v in state["stages"].items()}
    train = training_rows(work)
    training_s = round(sum(train.values()), 1)
    total = sum(v["wall_s"] for v in stages.values())
    out = {"stages": stages, "training": {k: round(v, 1) for k, v in train.items()},
           "peak_mb_max": max((v["peak_mb"] for v in stages.values()), default=0.0),
           "training_s": training_s, "non_training_s": round(total - training_s, 1),
           "cache_gb": round(max(state.get("cache_gb", 0.0), 0.0), 2), "submission_rows": submission_rows(work),
           "budget_min": args.budget_min, "cpu_count": os.cpu_count(), "threads": profile_threads(args.params),
           "complete": all(s in stages for s in STAGES)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="a contest-size copy of the data (see the module docstring)")
    ap.add_argument("--budget-min", type=float, default=5.0, help="minutes of each training stage's epoch loop")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted benchmark in --work-dir")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "thousand-landmarks-scale"))
    ap.add_argument("--params", default=os.path.join(REPO, "params", "cpu.yaml"))
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    args = ap.parse_args(argv)
    args.data_dir = os.path.abspath(args.data_dir)
    args.params = os.path.abspath(args.params)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in args.stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
    if not os.path.isdir(os.path.join(args.data_dir, "train")):
        ap.error(f"{args.data_dir}: not a contest-format data folder (no train/)")
    work = os.path.abspath(args.work_dir)
    state = prepare_work(work, args.resume)
    cache_dir = os.path.join(work, "cache")
    env = dict(os.environ)
    log_path = os.path.join(work, "scale.log")
    interrupted = False
    try:
        for stage in args.stages:
            if stage in state["stages"]:
                continue
            resumed = args.resume and stage == state.get("running")
            state["running"] = stage
            save_state(work, state)
            os.makedirs(os.path.join(work, "predict"), exist_ok=True)
            print(f"[scale] {stage} ...", file=sys.stderr, flush=True)
            res = run_measured(stage_command(stage, args, work, args.resume or resumed), log_path, env)
            if os.path.isdir(cache_dir):
                state["cache_gb"] = max(state.get("cache_gb", 0.0), disk_gb(cache_dir))
            print(f"[scale] {stage}: {res['wall_s']:.0f} s, peak {res['peak_mb']:.0f} MB, exit {res['rc']}",
                  file=sys.stderr, flush=True)
            if res["rc"] != 0:
                save_state(work, state)
                print(f"[scale] {stage} failed (exit {res['rc']}); its output: {log_path}", file=sys.stderr)
                return 1
            state["stages"][stage] = res
            state.pop("running", None)
            save_state(work, state)
    except KeyboardInterrupt:
        interrupted = True
        print(f"[scale] interrupted; the work folder {work} (cache included) is kept: continue with --resume",
              file=sys.stderr)
        return 130
    finally:
        if not interrupted and os.path.isdir(cache_dir):
            if all(s in state["stages"] for s in STAGES):
                shutil.rmtree(cache_dir, ignore_errors=True)
            else:  # a part of the benchmark (--stages): the rest continues with --resume, on the same cache
                print(f"[scale] the cache {cache_dir} is kept for the remaining stages (--resume --stages ...)",
                      file=sys.stderr)
    return emit(summary(state, work, args), args.json)


if __name__ == "__main__":
    sys.exit(main())
