"""Throughput of the training and inference paths, measured side by side in one run.

Usage: ``python benchmarks/throughput.py [--data-dir DIR] [--json] [--quick]`` (see ``benchmarks/README.md``).

Measures images/s of (a) a naive per-sample pipeline like the course baseline's (PIL decode + torchvision transforms
in ``Dataset.__getitem__``, data side only), (b) our cached pipeline (memory-mapped crop cache, ``data.make_loader``,
per-batch ``augment`` warp, data side only), (c) model training steps on random tensors, (d) full training steps
through ``engine.fit`` (loader + augmentation + model step), (e) batched inference (``predict.predict_crops``), all
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from landmarks_lib import augment, engine, models  # noqa: E402
from landmarks_lib import params as P  # noqa: E402
from landmarks_lib.data import BatchSampler, loader_settings, make_loader, normalize, to_input  # noqa: E402
from landmarks_lib.predict import predict_crops, select_device  # noqa: E402

CONTEST_ROWS = 394_000


# ------------------------------------------------------------------------------------------------ setup
def load_params(data_dir: str, bench_dir: str) -> tuple[dict, str]:
    """``params/cpu.yaml`` (defaults where it is missing), pointed at ``data_dir`` and the bench cache folder;
    ``pretrained=false`` (weights do not change speed)."""
    profile = REPO / "params" / "cpu.yaml"
    used = str(profile.relative_to(REPO)) if profile.exists() else "defaults (params/cpu.yaml not found)"
    p = P.resolve(str(profile) if profile.exists() else None)
    p.update(data_dir=str(data_dir), cache_dir=bench_dir, pretrained=False, val_fraction=0.0,
             max_train_images=0, time_budget_min=0.0)
    return p, used


def build_cache(params: dict, data, bench_dir: str):
    """Open (building it first if needed) the crop cache of ``engine.stage_cache``; returns ``(cache, build_s)``
    where ``build_s`` is the time of this run's build, or the one recorded when this script built it earlier."""
    record = os.path.join(bench_dir, "cache_build.json")
    before = set(os.listdir(bench_dir)) if os.path.isdir(bench_dir) else set()
    t = time.perf_counter()
    c = engine.stage_cache(params, data, "train", progress=False)
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
def run_cached(ctx, n_batches: int, round_: int = 0) -> float:
    """Our data side as ``engine.fit`` runs it: cache batches -> ``to_input`` -> affine warp of images and points ->
    photometric jitter -> ``normalize`` (no model)."""
    p, c, device, size = ctx["params"], ctx["cache"], ctx["device"], ctx["size"]
    sampler = BatchSampler(ctx["data"].train_idx, ctx["batch"], shuffle=True, seed=round_, drop_last=True)
    loader = make_loader(c, sampler, device, p["num_workers"])
    gen = torch.Generator().manual_seed(round_)
    perm = ctx["perm"]
    t = time.perf_counter()
    count = 0
    for i, batch in enumerate(loader):
        x = to_input(batch["images"], device)
        pts = batch["points"].to(device)
        if p["augment"]:
            m, flipped = augment.random_matrices(len(x), size, c.pad, gen, p["rotate_deg"], p["scale_jitter"],
                                                 p["translate_frac"], p["flip"] and perm is not None)
            x = augment.warp_images(x, m, size)
            pts = augment.warp_points(pts, m, flipped, perm)
            x = augment.photometric(x, p["photometric"], gen)
        else:
            x = x[:, :, c.pad: c.pad + size, c.pad: c.pad + size]
        x = normalize(x, ctx["mean"], ctx["std"])
        count += len(x)
        if i + 1 >= n_batches:
            break
    _sync(device)
    return count / (time.perf_counter() - t)
