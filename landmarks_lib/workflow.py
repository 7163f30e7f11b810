"""The steps the notebooks call, each one function: data, training, finetuning, evaluation, submission, run info.

A run folder is self-describing: ``params.yaml`` (resolved), ``run_info.json`` (git commit, package versions, data
fingerprint), ``checkpoints/``, ``history.csv``, ``metrics.json``, ``noise.csv``, ``val_predictions.npy``,
``submission.csv`` (``submission_partial.csv`` instead when ``max_test_images`` left test images out), ``figures/``,
``notebooks/`` and ``reports/``. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import importlib.metadata
import os
import platform
import subprocess

import numpy as np
import pandas as pd

from . import engine, metrics, noise, synthetic
from .io import atomic_open, atomic_save_npy, atomic_write_json, read_test_points
from .params import default_cache_dir
from .engine import apply_threads  # noqa: F401  (the notebooks call workflow.apply_threads)
from .predict import predict_images, select_device
from .submission import SubmissionError, validate_submission, write_submission

SUBMISSION = "submission.csv"  # every test image of test_points.csv: the file to upload
PARTIAL_SUBMISSION = "submission_partial.csv"  # only the first max_test_images of them: not a contest submission

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pillow", "matplotlib", "papermill", "jupytext", "nbdime")


def resolve_data_dir(params: dict) -> str:
    """The dataset folder of a run: ``params["data_dir"]``, or, when empty, the embedded synthetic default written
    into ``<run_dir>/data`` by ``synthetic.write_dataset`` (once; again when ``synthetic_*`` or ``seed`` change).

    Raises:
        FileNotFoundError: a given ``data_dir`` without ``train/landmarks.csv``.
    """
    if params["data_dir"]:
        d = os.path.expanduser(str(params["data_dir"]))
        if not os.path.exists(os.path.join(d, "train", "landmarks.csv")):
            raise FileNotFoundError(f"{d}: no train/landmarks.csv; data_dir must hold the contest layout "
                                    f"(train/images, train/landmarks.csv, test/images, test/test_points.csv)")
        return d
    d = os.path.join(params["run_dir"], "data")
    want = {"n_train": params["synthetic_train"], "n_test": params["synthetic_test"],
            "num_points": params["synthetic_points"], "seed": params["seed"]}
    marker = os.path.join(d, synthetic.MARKER)
    have = {}
    if os.path.exists(marker) and os.path.exists(os.path.join(d, "test", "test_points.csv")):
        with open(marker) as f:
            have = json.load(f)
    if any(have.get(k) != v for k, v in want.items()):  # missing, incomplete or made with other parameters
        synthetic.write_dataset(d, **want)
    return d


def data_fingerprint(data_dir) -> str:
    """SHA-1 (16 hex digits) of the tables' fingerprints and every image's name, size and mtime."""
    h = hashlib.sha1()
    for sub in ("train", "test"):
        for table in ("landmarks.csv", "test_points.csv", "groups.csv"):
            p = os.path.join(data_dir, sub, table)
            if os.path.exists(p):
                st = os.stat(p)
                h.update(f"{sub}/{table}|{st.st_size}|{st.st_mtime_ns}".encode())
        img = os.path.join(data_dir, sub, "images")
        if os.path.isdir(img):
            for n in sorted(os.listdir(img)):
                st = os.stat(os.path.join(img, n))
                h.update(f"{n}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def git_commit(path=None) -> str | None:
    """The git commit of the checkout holding this package (``+dirty`` when it has changes), or None."""
    root = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(params: dict, data_dir) -> dict:
    """What produced a run: commit, package versions, Python, platform, data fingerprint, device."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = None
    return {"git_commit": git_commit(), "packages": versions, "python": platform.python_version(),
            "platform": platform.platform(), "data_dir": os.path.abspath(data_dir),
            "data_fingerprint": data_fingerprint(data_dir), "device": str(select_device(params["device"]))}


def write_run_info(params: dict, data_dir) -> dict:
    """Write ``params.yaml`` and ``run_info.json`` into the run folder; returns the info."""
    from .params import dump

    os.makedirs(params["run_dir"], exist_ok=True)
    dump(params, os.path.join(params["run_dir"], "params.yaml"))
    info = run_info(params, data_dir)
    atomic_write_json(os.path.join(params["run_dir"], "run_info.json"), info)
    return info


def checkpoint_path(run_dir, stage: str, kind: str = "best") -> str:
    """``<run_dir>/checkpoints/<stage>_<kind>.pt``."""
    return os.path.join(run_dir, "checkpoints", f"{stage}_{kind}.pt")


def final_checkpoint(run_dir) -> str:
    """The model a run submits: of ``finetune_best.pt`` and ``train_best.pt``, the one with the lower validation MSE
    recorded in it (finetuning restarts the learning rate and may not improve on the annealed model); a checkpoint
    without a finite validation MSE (no validation split) counts as worse, and ties go to ``finetune_best``.

    Raises:
        FileNotFoundError: neither exists (train first).
    """
    from .predict import load_checkpoint

    found = [p for p in (checkpoint_path(run_dir, s) for s in ("finetune", "train")) if os.path.exists(p)]
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoints/finetune_best.pt or train_best.pt; run the train step "
                                f"first")
    if len(found) == 1:
        return found[0]

    def val(path):
        v = load_checkpoint(path).get("val_mse")
        return float(v) if v is not None and np.isfinite(v) else float("inf")

    scores = [val(p) for p in found]
    return found[0] if scores[0] <= scores[1] or scores[1] == float("inf") else found[1]


def find_noisy_labels(params: dict, data: engine.TrainData, checkpoint, progress: bool = True) -> pd.DataFrame:
    """Per-image NME of ``checkpoint`` on the training images and the robust flag (``noise`` module).

    Returns:
        a table ``file_name, split, nme, flagged, weight`` (``weight`` by ``noise_action``), one row per image.
    """
    c = engine.stage_cache(params, data, "train", progress)
    err = noise.training_errors(checkpoint, data, c, None, params["device"])
    flags = noise.flag_outliers(err[data.train_idx], params["noise_threshold"])
    all_flags = np.zeros(len(err), bool)
    all_flags[data.train_idx] = flags
    weights = np.ones(len(err), np.float32)
    weights[data.train_idx] = noise.sample_weights(err[data.train_idx], flags, params["noise_action"])
    split = np.array(["train"] * len(err), dtype=object)
    split[data.val_idx] = "val"
    return pd.DataFrame({"file_name": data.names, "split": split, "nme": err, "flagged": all_flags,
                         "weight": weights})


def run_finetune(params: dict, data: engine.TrainData, progress: bool = True) -> dict:
    """The finetune stage: find noisy labels with ``train_best``, then continue training from it at
    ``finetune_lr`` for ``finetune_epochs`` with the resulting sample weights (written to ``noise.csv``).

    Returns:
        ``{"noise": DataFrame, "fit": fit result or None (finetune_epochs == 0), "checkpoint": final path}``.
    """
    run_dir = params["run_dir"]
    train_best = checkpoint_path(run_dir, "train")
    table = find_noisy_labels(params, data, train_best, progress)
    with atomic_open(os.path.join(run_dir, "noise.csv"), "w", newline="") as f:
        table.to_csv(f, index=False)
    res = None
    if params["finetune_epochs"] > 0:
        coarse = checkpoint_path(run_dir, "coarse")
        res = engine.fit(params, data, run_dir, "finetune", init_checkpoint=train_best,
                         coarse_checkpoint=coarse if os.path.exists(coarse) else None,
                         sample_weights=table["weight"].to_numpy(), progress=progress)
    return {"noise": table, "fit": res, "checkpoint": final_checkpoint(run_dir)}


def ensemble_checkpoints(params: dict) -> list:
    """This run's final checkpoint plus those of ``ensemble_runs`` (comma-separated run folders)."""
    out = [final_checkpoint(params["run_dir"])]
    for r in str(params.get("ensemble_runs") or "").split(","):
        if r.strip():
            out.append(final_checkpoint(r.strip()))
    return out


def evaluate_validation(params: dict, data: engine.TrainData, checkpoints, exclude_flagged: bool = True,
                        progress: bool = True) -> tuple[np.ndarray, dict]:
    """End-to-end validation as on the test set: raw validation images -> (coarse model -> face crop ->) model ->
    original pixels, with flip TTA as configured.

    Returns:
        ``(pred float64 [n_val, K, 2] original pixels, metrics dict)``; metrics has ``val_mse``, ``val_nme``,
        ``val_auc``, ``val_failure_rate`` (NME threshold 10 %), ``n_val`` and, with ``exclude_flagged``,
        ``val_mse_clean`` / ``val_nme_clean`` / ``n_val_flagged``: the same without the validation images whose
        error the robust rule of ``noise.flag_outliers`` flags (``noise_threshold``), i.e. likely wrong labels.
    """
    if len(data.val_idx) == 0:
        return np.zeros((0, data.table.num_points, 2)), {"n_val": 0}
    names = [data.names[i] for i in data.val_idx]
    pred = predict_images(checkpoints, data.image_dir, names, default_cache_dir(params),
                          select_device(params["device"]), tta_flip=params["tta_flip"],
                          refine_steps=params["refine_steps"], progress=progress, tta_scales=params["tta_scales"])
    truth = data.points(data.val_idx)
    out = _val_metrics(metrics.summary(pred, truth))
    if exclude_flagged:
        err = metrics.per_image_nme(pred, truth)
        flagged = noise.flag_outliers(err, params["noise_threshold"])
        keep = ~flagged
        out.update({"val_mse_clean": metrics.mse(pred[keep], truth[keep]),
                    "val_nme_clean": float(err[keep].mean()), "n_val_flagged": int(flagged.sum())})
    return pred, out


def _val_metrics(s: dict) -> dict:
    """``metrics.summary`` under the names of ``metrics.json``."""
    return {"val_mse": s["mse"], "val_nme": s["nme"], "val_auc": s["auc"], "val_failure_rate": s["failure_rate"],
            "n_val": s["n_images"]}


def predict_test(params: dict, data_dir, checkpoints, progress: bool = True):
    """Predict every test image listed in ``test/test_points.csv`` (all points, original pixels).

    Returns:
        ``(TestPoints, pred float64 [N, K, 2])``; ``max_test_images`` > 0 predicts only the first ones (the
        ``TestPoints`` then hold only those rows, and ``write_results`` writes ``submission_partial.csv``).
    """
    from .predict import load_checkpoint

    first = checkpoints[0] if isinstance(checkpoints, (list, tuple)) else checkpoints
    k = load_checkpoint(first)["meta"]["num_points"]
    tp = read_test_points(os.path.join(data_dir, "test", "test_points.csv"), num_points=k)
    if params["max_test_images"]:
        tp.names, tp.indices = tp.names[: params["max_test_images"]], tp.indices[: params["max_test_images"]]
    pred = predict_images(checkpoints, os.path.join(data_dir, "test", "images"), tp.names,
                          default_cache_dir(params), select_device(params["device"]),
                          tta_flip=params["tta_flip"], refine_steps=params["refine_steps"],
                          progress=progress, tta_scales=params["tta_scales"])
    return tp, pred


def write_results(params: dict, test_points, test_pred, val_metrics: dict, val_pred=None) -> dict:
    """Write the submission, ``metrics.json``, ``test_predictions.npy`` (all points of every predicted test image,
    ``float32 [N, K, 2]`` original pixels, rows in ``test_points.csv`` order) and ``val_predictions.npy`` into the
    run folder, atomically. Returns the metrics written.

    ``test_points`` (with ``test_pred`` in its row order) must be the first ``N`` rows of the data's
    ``test/test_points.csv``. When it holds all of them the submission is ``submission.csv``, checked against the
    whole file; when ``max_test_images`` left some out it is ``submission_partial.csv`` (checked against the rows
    predicted; not a contest submission), and no ``submission.csv`` is written. Either removes the other name from
    the run folder, so a folder never holds a submission from an earlier run beside this run's.

    Raises:
        SubmissionError: ``test_points`` are not the first rows of ``test_points.csv``, or the submission fails its
            check (nothing is written then).
    """
    run_dir = params["run_dir"]
    tp_path = os.path.join(resolve_data_dir(params), "test", "test_points.csv")
    full = read_test_points(tp_path)
    n = len(test_points)
    if list(test_points.names) != full.names[:n] or not np.array_equal(test_points.indices, full.indices[:n]):
        raise SubmissionError(f"{tp_path}: the {n} test images predicted are not its first {n} rows")
    name, stale = (SUBMISSION, PARTIAL_SUBMISSION) if n == len(full) else (PARTIAL_SUBMISSION, SUBMISSION)
    write_submission(os.path.join(run_dir, name), test_points, test_pred,
                     decimals=params["submission_decimals"])
    if os.path.exists(os.path.join(run_dir, stale)):
        os.remove(os.path.join(run_dir, stale))
    atomic_save_npy(os.path.join(run_dir, "test_predictions.npy"), np.asarray(test_pred, np.float32))
    if val_pred is not None:
        atomic_save_npy(os.path.join(run_dir, "val_predictions.npy"), np.asarray(val_pred, np.float32))
    m = dict(val_metrics)
    m["n_test"] = len(test_points)
    atomic_write_json(os.path.join(run_dir, "metrics.json"), m)
    return m


def submission_file(run_dir) -> str | None:
    """The run's submission: ``<run_dir>/submission.csv``, else ``<run_dir>/submission_partial.csv`` (a run with
    ``max_test_images``; see ``write_results``), else None."""
    for name in (SUBMISSION, PARTIAL_SUBMISSION):
        if os.path.exists(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    return None


def check_submission(params: dict, data_dir) -> pd.DataFrame:
    """Validate the run's ``submission.csv`` against the data's ``test_points.csv`` (``submission`` module)."""
    tp = read_test_points(os.path.join(data_dir, "test", "test_points.csv"))
    return validate_submission(os.path.join(params["run_dir"], "submission.csv"), tp)



# --------------------------------------------------------------------------------------------- notebook helpers
def params_from_namespace(namespace: dict) -> dict:
    """Resolve the parameters a notebook holds as top-level variables (its ``parameters`` cell, possibly
    overridden by papermill's injected cell): ``params.resolve`` of every ``SPEC`` name found in ``namespace``
    (pass ``globals()``); names missing from it take their defaults. Values are used as they are (not re-parsed
    as YAML), then type-checked.

    Raises:
        params.ParamError: a value of the wrong type.
    """
    from .params import SPEC, resolve

    return resolve(None, None, **{k: namespace[k] for k in SPEC if k in namespace})


def crop_coverage(points, widths, heights, crop_size: int, face_scale: float = 1.25, modes=None) -> pd.DataFrame:
    """How each crop mode treats the faces of a dataset (EDA: which crop keeps the face, at what resolution).

    For every image the crop of each mode is placed (``geometry.make_frame``; ``face`` crops from the labels
    themselves, as in training) and the landmarks are compared with the image and with the crop.

    Args:
        points: ``[N, K, 2]`` landmarks, original pixels (NaN allowed).
        widths, heights: ``[N]`` image sizes, pixels.
        crop_size: crop side in pixels.
        face_scale: face crop side over the landmarks' bounding-box longer side.
        modes: crop modes to report (default ``geometry.CROP_MODES``).
    Returns:
        one row per mode: ``crop_mode``, ``points_outside_image_pct`` (share of all points outside
        ``[0, W] x [0, H]``; the same for every mode), ``points_outside_crop_pct`` (share of all points outside the
        crop), ``images_cut_pct`` (share of images with at least one point outside the crop), ``face_px_median``
        (median longer side of the landmarks' bounding box in crop pixels: the resolution the network sees) and
        ``face_share_median`` (the same over the crop side).
    """
    from .geometry import CROP_MODES, make_frame

    p = np.asarray(points, dtype=np.float64)
    w = np.asarray(widths, dtype=np.float64).reshape(-1)
    h = np.asarray(heights, dtype=np.float64).reshape(-1)
    if p.ndim != 3 or p.shape[2] != 2 or len(p) != len(w) or len(w) != len(h):
        raise ValueError(f"points {p.shape} must be [N, K, 2] with N widths and heights ({len(w)}, {len(h)})")
    ok = np.isfinite(p).all(axis=2)
    x, y = p[..., 0], p[..., 1]
    outside_img = ok & ((x < 0) | (y < 0) | (x > w[:, None]) | (y > h[:, None]))
    lo = np.nanmin(np.where(ok[..., None], p, np.nan), axis=1)
    hi = np.nanmax(np.where(ok[..., None], p, np.nan), axis=1)
    face_side = (hi - lo).max(axis=1)
    rows = []
    for mode in (modes or CROP_MODES):
        frames = np.array([make_frame(mode, w[i], h[i], crop_size, points=p[i], face_scale=face_scale).as_array()
                           for i in range(len(p))]).reshape(-1, 4)
        x0, y0, side = frames[:, 0], frames[:, 1], frames[:, 2]
        out = ok & ((x < x0[:, None]) | (y < y0[:, None]) | (x > (x0 + side)[:, None]) | (y > (y0 + side)[:, None]))
        share = face_side / side
        rows.append({"crop_mode": mode,
                     "points_outside_image_pct": 100.0 * outside_img.sum() / max(ok.sum(), 1),
                     "points_outside_crop_pct": 100.0 * out.sum() / max(ok.sum(), 1),
                     "images_cut_pct": 100.0 * out.any(axis=1).mean() if len(p) else 0.0,
                     "face_px_median": float(np.nanmedian(share * crop_size)) if len(p) else float("nan"),
                     "face_share_median": float(np.nanmedian(share)) if len(p) else float("nan")})
    return pd.DataFrame(rows)


def shape_residuals(points, per_point: bool = False, iterations: int = 3):
    """How far each labelled shape is from the mean shape, up to position, scale and rotation (EDA: labels that
    look wrong by shape, whatever the image shows).

    Each shape is normalised (``geometry.normalise_shapes``: centred, RMS radius 1) and rotated onto a reference by
    the least-squares rotation (2-D Procrustes, no reflection). The reference starts as ``geometry.mean_shape`` and
    is replaced ``iterations`` times by the per-coordinate median of the rotated shapes (generalised Procrustes
    with a robust mean), so the shapes' own rotations do not blur it. The residual of a shape is the RMS distance of
    its rotated points to the reference's, in units of the shape's RMS radius. Flag outliers with
    ``noise.flag_outliers(residuals, threshold)``.

    Args:
        points: ``[N, K, 2]`` landmarks (any pixels; NaN points are ignored).
        per_point: also return the per-point distances.
        iterations: Procrustes refinements of the reference shape.
    Returns:
        ``float64 [N]`` residuals, or ``(residuals, float64 [N, K] per-point distances)`` with ``per_point``.
    """
    from .geometry import mean_shape, normalise_shapes

    q = normalise_shapes(points)
    m = mean_shape(points)
    m = m - np.nanmean(m, axis=0)
    r = _rotate_onto(q, m)
    for _ in range(max(0, int(iterations))):
        m = np.nanmedian(r, axis=0)
        m = m - np.nanmean(m, axis=0)
        r = _rotate_onto(q, m)
    d = np.sqrt(((r - m[None]) ** 2).sum(-1))
    res = np.sqrt(np.nanmean(d ** 2, axis=1))
    return (res, d) if per_point else res


def _rotate_onto(q, m):
    """Rotate each centred shape of ``q [N, K, 2]`` by the angle that best maps it onto ``m [K, 2]`` (least
    squares: ``atan2(sum(q_x m_y - q_y m_x), sum(q_x m_x + q_y m_y))``; NaN points ignored)."""
    s = np.nansum(q[..., 0] * m[None, :, 1] - q[..., 1] * m[None, :, 0], axis=1)
    c = np.nansum(q[..., 0] * m[None, :, 0] + q[..., 1] * m[None, :, 1], axis=1)
    a = np.arctan2(s, c)
    ca, sa = np.cos(a)[:, None], np.sin(a)[:, None]
    return np.stack([ca * q[..., 0] - sa * q[..., 1], sa * q[..., 0] + ca * q[..., 1]], axis=-1)


def predict_training_images(params: dict, data: engine.TrainData, checkpoint, indices=None) -> np.ndarray:
    """A checkpoint's predictions on training images, crops placed as in training (``engine.stage_cache`` of the
    ``train`` stage; face crops from the labels), no augmentation, no TTA: what ``noise.training_errors`` scores
    (``noise.training_predictions``).

    Returns:
        ``float64 [n, K, 2]`` original pixels for ``indices`` (default all), in that order.
    """
    c = engine.stage_cache(params, data, "train", progress=False)
    return noise.training_predictions(checkpoint, data, c, indices, params["device"])


def image_loader(image_dir, names):
    """A callable ``i -> uint8 [H, W, 3]`` loading ``names[i]`` from ``image_dir`` (``images.load_image``), for the
    lazy ``images`` argument of ``viz.gallery``."""
    from .images import load_image

    names = list(names)
    image_dir = os.fspath(image_dir)

    def load(i):
        return load_image(os.path.join(image_dir, names[int(i)]))

    return load


def mean_shape_baseline(data: engine.TrainData, threshold: float = 10.0) -> tuple[np.ndarray, dict]:
    """The no-model baseline on the validation split: the mean training shape in whole-image (letterbox) units,
    placed on each validation image by its own letterbox frame (``geometry.letterbox_frame``). A model that has
    learnt anything is far below it.

    Returns:
        ``(pred float64 [n_val, K, 2] original pixels, {"val_mse", "val_nme", "val_auc", "val_failure_rate",
        "n_val"})``.
    """
    from .geometry import frames_to_crop, frames_to_original, letterbox_frame
    from .images import image_size

    frames = np.stack([letterbox_frame(*image_size(os.path.join(data.image_dir, n)), 1).as_array()
                       for n in data.names])
    unit = frames_to_crop(data.points(), frames)
    mean = np.nanmean(unit[data.train_idx], axis=0)
    pred = frames_to_original(np.repeat(mean[None], len(data.val_idx), axis=0), frames[data.val_idx])
    return pred, _val_metrics(metrics.summary(pred, data.points(data.val_idx), threshold))
