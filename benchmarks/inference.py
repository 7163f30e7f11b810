"""Inference speed and accuracy of a run's final model, per inference setting.

``python benchmarks/inference.py --run-dir RUN [--data-dir DIR] [--rounds 3] [--threads 2] [--json]``

- speed: the predict CLI as a whole process (start to CSV, ``python -m landmarks_lib.predict``) on the data's test
  images, for ``accurate`` and ``fast``, in ``--rounds`` alternating rounds with the same thread limit; images/s is
  the median over rounds;
- accuracy: validation MSE and NME of each setting through ``Predictor`` (the run's split), and how well the
  confidence ranks the errors (Spearman correlation of ``-confidence`` with the per-image MSE).

Prints one JSON object with ``--json``. MediaPipe Face Mesh is not part of it yet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report import emit  # noqa: E402
from landmarks_lib import engine, metrics  # noqa: E402
from landmarks_lib import params as P  # noqa: E402
from landmarks_lib.predictor import Predictor  # noqa: E402
from landmarks_lib.run import RunFolder  # noqa: E402

SETTINGS = ("accurate", "fast")


def time_cli(run_dir, images, inference, threads) -> float:
    """Seconds of one whole predict-CLI process on ``images``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "landmarks_lib.predict", "--checkpoint", run_dir, "--images", images,
                        "--out", os.path.join(d, "p.csv"), "--inference", inference, "--device", "cpu"],
                       check=True, env=env, capture_output=True, cwd=REPO)
        return time.perf_counter() - t


def accuracy(run: RunFolder, inference: str) -> dict:
    """Validation MSE / NME of one setting and the confidence's rank correlation with the per-image MSE."""
    p = P.resolve(run.path)
    data = engine.load_train_data(p, progress=False)
    paths = [os.path.join(data.image_dir, data.names[i]) for i in data.val_idx]
    res = list(Predictor.load(run.path, "cpu", inference).predict_iter(paths))
    pts = np.concatenate([r.points for r in res])
    conf = np.concatenate([r.confidence for r in res])
    truth = data.points(data.val_idx)
    err = ((pts - truth) ** 2).reshape(len(pts), -1).mean(axis=1)
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = float(np.corrcoef(rank(-conf), rank(err))[0, 1]) if len(err) > 2 else float("nan")
    return {"val_mse": metrics.mse(pts, truth), "val_nme": float(metrics.per_image_nme(pts, truth).mean()),
            "confidence_error_spearman": rho, "n_val": len(err)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--data-dir", default=None, help="default: the run's data_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    run = RunFolder(a.run_dir)
    data_dir = a.data_dir or P.resolve(run.path)["data_dir"]
    images = os.path.join(data_dir, "test", "images")
    n = len([f for f in os.listdir(images) if not f.startswith(".")])
    seconds = {s: [] for s in SETTINGS}
    for r in range(a.rounds):
        for s in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
            seconds[s].append(time_cli(run.path, images, s, a.threads))
    out = {"n_test_images": n, "threads": a.threads, "rounds": a.rounds,
           "seconds": {s: [round(v, 2) for v in seconds[s]] for s in SETTINGS}}
    for s in SETTINGS:
        out[f"{s}_img_s"] = round(n / statistics.median(seconds[s]), 1)
        out[s] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in accuracy(run, s).items()}
    return emit(out, a.json, 22)


if __name__ == "__main__":
    raise SystemExit(main())
