"""How the training step degrades on a shared CPU, per OpenMP wait setting, side by side.

``python benchmarks/threads_under_load.py [--spins auto,unset,1000,0] [--series 4] [--rounds 2] [--batches 12]
[--json]``

For each setting (``auto``: ``adaptive_threads`` on, nothing set: ``landmarks_lib.training.cpuload``'s watcher lets
waiting
threads sleep while other processes keep the CPU busy; ``unset``: libgomp's default, the watcher off; a number:
``GOMP_SPINCOUNT``; ``0`` is what ``OMP_WAIT_POLICY=PASSIVE`` does) a fresh process builds the model of
``params/cpu.yaml`` (its backbone, crop, batch, optimizer, channels-last; 2 threads on 2 cores with ``threads: 0``)
and times ``engine.train_step`` on random tensors ``--rounds`` times alone and ``--rounds`` times while a busy-loop
process, started after the job, holds one core (``loaded``); for ``auto`` a second process started while the busy
loop already runs gives ``loaded_at_start``. The settings run in ``--series`` alternating series (the order
reversed every other series). Reports per setting the medians of ``alone_img_s``, ``loaded_img_s`` and ``ratio``
(loaded / alone, per round), and for ``auto`` ``loaded_at_start_img_s`` and ``ratio_at_start`` (over the median
alone); every process gets its setting explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from report import emit  # noqa: E402

CHILD = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, REPO)
import torch
from landmarks_lib.core import params as P
from landmarks_lib.models import landmark as models
from landmarks_lib.training import cpuload, engine
p = P.resolve(profile=REPO + "/params/cpu.yaml", overrides={"pretrained": False, "adaptive_threads": True})
engine.apply_threads(p)  # starts cpuload's watcher (adaptive_threads) unless the environment sets the wait
size, b, k = int(p["crop_size"]), int(p["batch_size"]), 971
torch.manual_seed(0)
model = models.build_model(p["backbone"], k, pretrained=False, head=p["head"], crop_size=size,
                           dropout=p["dropout"]).train()
if p["channels_last"]:
    model = model.to(memory_format=torch.channels_last)
opt = engine.make_optimizer(p, model, p["lr"])
sched, per_step = engine.make_scheduler(p, opt, p["lr"], 1, 10000)
x = torch.randn(b, 3, size, size)
if p["channels_last"]:
    x = x.contiguous(memory_format=torch.channels_last)
target, w = torch.rand(b, k, 2) * size, torch.ones(b)
def rate(n):
    t = time.perf_counter()
    for _ in range(n):
        engine.train_step(model, opt, sched if per_step else None, x, target, w, p, size)
    return n * b / (time.perf_counter() - t)
rate(3)
out = {"alone": [], "loaded": [], "threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY")}
for _ in range(ROUNDS):
    if MODE == "loaded":  # the parent started the busy loop before this process
        out["loaded"].append(rate(BATCHES))
        continue
    out["alone"].append(rate(BATCHES))
    if MODE == "alone":
        continue
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        out["loaded"].append(rate(BATCHES))
    finally:
        hog.kill()
        hog.wait()
    time.sleep(1.5)  # the next alone round starts on a calm CPU (the watcher lets threads spin again after 1 s)
out["choice"] = dict(cpuload.STATE)
print(json.dumps(out))
"""


@contextlib.contextmanager
def busy_core(settle_s: float = 0.5):
    """A pure-Python busy loop holding one core while the block runs (started ``settle_s`` before it)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(settle_s)
        yield hog
    finally:
        hog.kill()
        hog.wait()


def default_env() -> dict:
    """This environment without the OpenMP wait settings (``cpuload``'s watcher then runs)."""
    return {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                                             "LANDMARKS_WAIT_POLICY")}


def loaded_at_start(rounds: int, batches: int) -> dict:
    """The child in ``loaded`` mode, started while ``busy_core`` runs, with the project's defaults:
    ``{"loaded": [img/s per round], "choice": cpuload.STATE at the end, ...}``."""
    with busy_core():
        return _child(default_env(), "loaded", rounds, batches)


def _child(env: dict, mode: str, rounds: int, batches: int) -> dict:
    code = (CHILD.replace("REPO", repr(REPO)).replace("ROUNDS", str(rounds)).replace("BATCHES", str(batches))
            .replace("MODE", repr(mode)))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(spin: str, rounds: int, batches: int) -> dict:
    """One setting: ``unset`` (libgomp's default, ``LANDMARKS_WAIT_POLICY=default``), a spin count, or ``auto``
    (``adaptive_threads``: nothing set, ``cpuload``'s watcher runs; also timed in a process started while the
    busy loop already runs, ``loaded_at_start``)."""
    env = default_env()
    if spin == "auto":
        out = _child(env, "both", rounds, batches)
        at_start = loaded_at_start(rounds, batches)
        out["loaded_at_start"] = at_start["loaded"]
        out["choice"] = {"after_start": out["choice"], "at_start": at_start["choice"]}
        return out
    if spin == "unset":
        env["LANDMARKS_WAIT_POLICY"] = "default"
    else:
        env["GOMP_SPINCOUNT"] = spin
    return _child(env, "both", rounds, batches)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spins", default="auto,unset,1000,0")
    ap.add_argument("--series", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    spins = [s.strip() for s in a.spins.split(",") if s.strip()]
    got = {s: {"alone": [], "loaded": [], "ratio": [], "at_start": [], "choice": None} for s in spins}
    threads = None
    for series in range(a.series):
        for s in (spins if series % 2 == 0 else spins[::-1]):
            r = measure(s, a.rounds, a.batches)
            threads = r["threads"]
            got[s]["alone"] += r["alone"]
            got[s]["loaded"] += r["loaded"]
            got[s]["ratio"] += [lo / al for al, lo in zip(r["alone"], r["loaded"])]
            got[s]["at_start"] += r.get("loaded_at_start", [])
            got[s]["choice"] = r.get("choice")
            print(f"series {series + 1}/{a.series} GOMP_SPINCOUNT={s}: alone {statistics.median(r['alone']):.1f}, "
                  f"loaded {statistics.median(r['loaded']):.1f} img/s", file=sys.stderr, flush=True)
    out = {s: {"alone_img_s": round(statistics.median(v["alone"]), 1),
               "loaded_img_s": round(statistics.median(v["loaded"]), 1),
               "ratio": round(statistics.median(v["ratio"]), 3), "choice": v["choice"]} for s, v in got.items()}
    for s, v in got.items():
        if v["at_start"]:
            out[s].update(loaded_at_start_img_s=round(statistics.median(v["at_start"]), 1),
                          ratio_at_start=round(statistics.median(v["at_start"]) / statistics.median(v["alone"]), 3))
    out["conditions"] = {"torch_threads": threads, "cpu_count": os.cpu_count(), "series": a.series,
                         "rounds": a.rounds, "batches": a.batches, "loadavg_1min": os.getloadavg()[0]}
    return emit(out, a.json)


if __name__ == "__main__":
    sys.exit(main())
