"""The steps the notebooks call, each one function: start, data, finetuning, evaluation, submission, run info.

Every path of a run comes from ``run_folder.RunFolder`` (its manifest), every checkpoint from ``checkpoint``, every
parameter from ``params.resolve``; the notebooks do no file I/O of their own. Every file is written atomically.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import numpy as np
import pandas as pd
import torch

from ..core import logs
from ..core.devices import select_device
from ..core.files import atomic_open, atomic_save_npy, atomic_write_json, file_identity, fingerprint, read_json
from ..core.geometry import frames_to_crop, frames_to_original, letterbox_frame
from ..core.images import image_size, load_image
from ..core.params import SPEC, dump, resolve, scoped, split_list
from ..data import formats, synthetic
from ..data.tables import DataFormatError, TestPoints, link_outside, read_test_points
from ..evaluation import metrics, robustness
from ..evaluation.eda import sample_rows
from ..evaluation.submission import SubmissionError, write_submission
from ..inference import backends, export
from ..inference.passes import Inference
from ..inference.predict import ImageSet, predict_images, write_faces_csv
from ..inference.predictor import Predictor
from ..models import checkpoint
from ..training import cpuload, engine, noise
from ..training.engine import apply_threads
from .run_folder import RunFolder

LOG = logs.logger(__name__)

PACKAGES = ("torch", "torchvision", "onnxruntime", "numpy", "pandas", "pillow", "matplotlib", "papermill", "jupytext",
            "nbdime")


# ------------------------------------------------------------------------------------------------- start
def notebook_params(namespace: dict) -> dict:
    """A notebook's parameters (``params.resolve``): its ``run_dir``, ``profile`` and ``overrides`` variables,
    plus any parameter name set in ``namespace`` (papermill's injected cell), at the level of ``overrides``.

    Raises:
        params.ParamError: an unknown name or a bad value.
    """
    over = dict(namespace.get("overrides") or {})
    over.update({k: namespace[k] for k in SPEC if k in namespace and k != "run_dir"})
    return resolve(run_dir=namespace.get("run_dir") or None, profile=namespace.get("profile") or None,
                   overrides=over)


def start(notebook: str, namespace: dict) -> tuple[dict, RunFolder]:
    """The first step of every notebook: resolve its parameters (``notebook_params``), create the run folder (its
    marker), write ``params.yaml`` and ``run_info.json``, resolve the data folder (the embedded synthetic default
    when ``data_dir`` is empty) and set torch's thread count.

    In Jupyter the kernel then holds the run's lock, shared (``RunFolder.lock``): other notebooks may open the same
    run, a runner may not while the kernel lives.

    Returns:
        ``(params, run)``; ``params["data_dir"]`` is the folder the data is read from.
    Raises:
        params.ParamError, run.RunFolderError (a non-empty folder that is not a run folder, or a runner working on
        it).
    """
    logs.show()
    params = notebook_params(namespace)
    run = RunFolder(params["run_dir"]).create(created_by=f"notebook {notebook}").lock(notebook, shared=True)
    dump(params, run.file("params.yaml"))
    data_dir = resolve_data_dir(params)
    apply_threads(params)  # before run_info: it records the OpenMP wait policy the thread setting chose
    fp = data_fingerprint(data_dir)
    _STARTED_ON[(run.path, notebook)] = (os.path.abspath(data_dir), fp)  # run.path is absolute
    atomic_write_json(run.file("run_info.json"), run_info(params, data_dir, fingerprint=fp))
    return dict(params, data_dir=data_dir), run


# The data folder and its fingerprint as each notebook's ``start`` saw them, by (run folder, notebook): ``finish``
# records that fingerprint when it finishes on the same folder.
_STARTED_ON: dict = {}


def finish(notebook: str, params: dict, run: RunFolder) -> None:
    """The last step of every notebook: record in ``pipeline_state.json`` that it finished, with its parameters and
    the data's fingerprint (the runner's resume rule compares both).

    The fingerprint recorded is the one ``start`` took in this process (one listing and ``stat`` of every image
    fewer: tens of seconds at contest size), so data that changed while the notebook ran no longer matches it and
    the runner runs the notebook again; without a ``start`` in this process, or when ``params["data_dir"]`` is
    another folder than the one ``start`` saw, it is taken now."""
    seen = _STARTED_ON.pop((run.path, notebook), None)
    here = os.path.abspath(params["data_dir"])
    fp = seen[1] if seen is not None and seen[0] == here else data_fingerprint(params["data_dir"])
    run.record_notebook(notebook, dict(params, data_dir=resolve(run.path)["data_dir"]), fp)


def resolve_data_dir(params: dict) -> str:
    """The dataset folder of a run: ``params["data_dir"]``, or, when empty, the embedded synthetic default written
    into ``<run_dir>/data`` by ``synthetic.write_dataset`` (once; again when ``synthetic_*`` or ``seed`` change)."""
    if params["data_dir"]:
        return os.path.expanduser(str(params["data_dir"]))
    d = RunFolder(params["run_dir"]).file("data")
    want = {"n_train": params["synthetic_train"], "n_test": params["synthetic_test"],
            "num_points": params["synthetic_points"], "seed": params["seed"]}
    have = {}
    if os.path.exists(os.path.join(d, "test", "test_points.csv")):
        have = read_json(os.path.join(d, synthetic.MARKER), {}) or {}
    if any(have.get(k) != v for k, v in want.items()):  # missing, incomplete or made with other parameters
        synthetic.write_dataset(d, **want)
    return d


def data_fingerprint(data_dir) -> str:
    """``files.fingerprint`` of the tables' and every image's identity (name, size, mtime); for a data folder in
    another format than the contest's (``formats.detect_format``), of every file below it (links followed)."""
    parts = []
    try:
        other = formats.detect_format(data_dir) != "contest"
    except DataFormatError:
        other = False
    if other:
        for folder, dirs, files in os.walk(data_dir, followlinks=True):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(folder, f))
                parts.append(f"{os.path.relpath(os.path.join(folder, f), data_dir)}|{st.st_size}|{st.st_mtime_ns}")
        return fingerprint(parts)
    for sub in ("train", "test"):
        for table in ("landmarks.csv", "test_points.csv", "groups.csv"):
            p = os.path.join(data_dir, sub, table)
            if os.path.exists(p):
                parts.append(f"{sub}/{table}|" + file_identity(p).split("|", 1)[1])
        img = os.path.join(data_dir, sub, "images")
        if os.path.isdir(img):
            with os.scandir(img) as it:
                for e in sorted(it, key=lambda e: e.name):
                    st = e.stat()
                    parts.append(f"{e.name}|{st.st_size}|{st.st_mtime_ns}")
    return fingerprint(parts)


def git_commit(path=None) -> str | None:
    """The git commit of the checkout holding this package (``+dirty`` when it has changes), or None."""
    root = path or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_info() -> dict:
    """The CPU this process computes on: ``model`` (``/proc/cpuinfo``'s model name, else ``platform.processor()``,
    which may name only the architecture; None when neither says), ``capability`` (the instruction set torch's CPU
    kernels dispatch to, ``torch.backends.cpu.get_cpu_capability()``: ``AVX2``, ``AVX512``, ...) and ``cpus`` (the
    CPUs this process may use). Training on the CPU is bit-identical on the same kind of CPU; another instruction
    set (other float summation orders in oneDNN's and ATen's kernels) gives slightly different weights and
    metrics."""

    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"model": model or platform.processor() or None,
            "capability": torch.backends.cpu.get_cpu_capability(), "cpus": cpuload.available_cpus()}


def run_info(params: dict, data_dir, fingerprint: str | None = None) -> dict:
    """What produced a run: commit, package versions, Python, platform, the CPU (``cpu_info``), data fingerprint,
    device and the OpenMP wait policy (``cpuload.summary()``: adaptive to the CPU's load, the user's, or libgomp's
    default). ``fingerprint``: ``data_fingerprint(data_dir)`` when the caller has it."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = None
    return {"git_commit": git_commit(), "packages": versions, "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu_info(), "data_dir": os.path.abspath(data_dir),
            "data_fingerprint": fingerprint or data_fingerprint(data_dir),
            "device": str(select_device(params["device"])),
            "omp_wait_policy": cpuload.summary()}


# ------------------------------------------------------------------------------------------------- finetune
def find_noisy_labels(params: dict, data: engine.TrainData, stage_checkpoint, progress: bool = True) -> pd.DataFrame:
    """Per-image NME of a stage checkpoint on the training images and the robust flag (``noise.flag_outliers``,
    with the validation images' errors as the reference: a model too weak to judge flags nothing); reads the
    ``data``, ``train`` and ``finetune`` scopes.

    Returns:
        a table ``file_name, split, nme, flagged, weight`` (``weight`` by ``noise_action``), one row per image.
    """
    c = engine.stage_cache(engine.stage_recipe(params, "train"), data, params, progress)
    err = noise.training_errors(stage_checkpoint, data, c, None, params["device"], progress=progress,
                                backend=inference_backend(params))
    tr = data.train_idx
    flags = np.zeros(len(err), bool)
    flags[tr] = noise.flag_outliers(err[tr], params["noise_threshold"], reference=err[data.val_idx])
    weights = np.ones(len(err), np.float32)
    weights[tr] = noise.sample_weights(err[tr], flags[tr], params["noise_action"])
    split = np.array(["train"] * len(err), dtype=object)
    split[data.val_idx] = "val"
    return pd.DataFrame({"file_name": data.names, "split": split, "nme": err, "flagged": flags, "weight": weights})


def _recorded_noise(params: dict, data: engine.TrainData, run: RunFolder, retrain: bool):
    """The ``noise.csv`` the finished finetune stage trained with, when that stage still holds for ``params`` (so
    re-running the notebook, e.g. with other threads or on another device, does not recompute flags that float
    noise could flip), else None."""
    if params["finetune_epochs"] <= 0 or not os.path.exists(run.file("noise.csv")):
        return None
    table = run.read_noise()
    if list(table["file_name"]) != list(data.names):
        return None
    try:
        done = engine.finished_result(params, data, run, "finetune", table["weight"].to_numpy(np.float32), retrain)
    except engine.StageChanged:
        return None
    return table if done is not None else None


def run_finetune(params: dict, data: engine.TrainData, run: RunFolder, retrain: bool = False,
                 progress: bool = True) -> dict:
    """The finetune stage: find noisy labels with ``train_best`` (``noise.csv``), continue training from it at
    ``finetune_lr`` for ``finetune_epochs`` with the resulting sample weights, then write the run's final model
    (``write_model``). A finetune stage that finished with these parameters keeps the ``noise.csv`` it trained with.

    Returns:
        ``{"noise": DataFrame, "fit": fit result or None (finetune_epochs == 0), "model": path of model.pt,
        "source": "train" or "finetune"}``.
    Raises:
        engine.StageChanged: the finetune stage was made with other parameters or data, without ``retrain``.
    """
    train_best = run.checkpoint("train")
    table = _recorded_noise(params, data, run, retrain)
    if table is None:
        table = find_noisy_labels(params, data, train_best, progress)
        with atomic_open(run.file("noise.csv"), "w", newline="") as f:
            table.to_csv(f, index=False)
    res = None
    if params["finetune_epochs"] > 0:
        res = engine.fit(params, data, run, "finetune", init_checkpoint=train_best,
                         sample_weights=table["weight"].to_numpy(np.float32), retrain=retrain, progress=progress)
    source = write_model(params, run)
    return {"noise": table, "fit": res, "model": run.model, "source": source}


def final_stage(run: RunFolder, params: dict | None = None) -> str:
    """The stage a run submits: of ``finetune`` and ``train``, the one whose best checkpoint has the lower
    validation MSE (finetuning restarts the learning rate and may not improve on the annealed model); one without a
    finite validation MSE counts as worse, and ties go to ``finetune``. With ``params``, only checkpoints made with
    them count (``engine.stage_key``): a ``finetune_best.pt`` left from other finetune settings, or from a run
    with ``finetune_epochs`` 0, is never submitted.

    Raises:
        FileNotFoundError: no checkpoint counts (train first).
    """
    stages = ("finetune", "train") if params is None or params["finetune_epochs"] > 0 else ("train",)
    found = {}
    for s in stages:
        if os.path.exists(run.checkpoint(s)):
            ck = checkpoint.load(run.checkpoint(s), "stage")
            if params is None or ck.get("scope_key") == engine.stage_key(params, s):
                found[s] = ck
    if not found:
        raise FileNotFoundError(f"{run.path}: no checkpoints/finetune_best.pt or train_best.pt made with these "
                                f"parameters; run the train notebook first")

    def val(stage):
        v = found[stage].get("val_mse")
        return float(v) if v is not None and np.isfinite(v) else float("inf")

    return min(found, key=val)


def write_model(params: dict, run: RunFolder) -> str:
    """Write ``model.pt``: the better face model (``final_stage``), the localizer (``face`` crops) and the
    inference settings of ``params``; then its ONNX export, ``export/`` (``export.export``: it records ``model.pt``'s
    SHA-256, so a run folder predicts through it without torch, and never through a stale one). Returns the stage
    the face model comes from."""
    source = final_stage(run, params)
    face = checkpoint.load(run.checkpoint(source), "stage")
    loc = checkpoint.load(run.checkpoint("localizer"), "stage") if face["meta"]["crop_mode"] == "face" else None
    checkpoint.save(run.model, checkpoint.make_model(face, loc, params, source))
    export.export(run.model, run.file(backends.RUN_EXPORT))
    return source


def ensemble_models(params: dict, num_points: int | None = None) -> list:
    """This run's final model plus those of ``ensemble_runs`` (comma-separated run folders).

    Raises:
        checkpoint.CheckpointError: a model predicting another number of points than ``num_points`` (the data's),
            naming the run folder.
    """
    out = []
    for r in [params["run_dir"], *split_list(params["ensemble_runs"])]:
        m = checkpoint.load_model(r)
        if num_points is not None and checkpoint.num_points(m) != num_points:
            raise checkpoint.CheckpointError(f"{r}: its model predicts {checkpoint.num_points(m)} points per face; "
                                             f"this data has {num_points}")
        out.append(m)
    return out


# ------------------------------------------------------------------------------------------------- evaluation
def inference_settings(params: dict) -> Inference:
    """``passes.Inference`` from the ``inference`` scope (and ``amp``)."""
    return Inference.from_settings(scoped(params, "inference"), amp=params["amp"])


def inference_backend(params: dict, device=None) -> str:
    """The ``inference_backend`` parameter resolved: ``auto`` is ``"onnx"`` when the device (``select_device`` of
    ``params["device"]`` unless given) is the CPU and onnxruntime imports, else ``"torch"``.

    Raises:
        RuntimeError: ``onnx`` named but onnxruntime is not installed (the message says what to install).
    """

    choice = params["inference_backend"]
    if choice != "auto":
        return backends.resolve_backend(choice)
    dev = select_device(params["device"]) if device is None else device
    return backends.resolve_backend(choice, getattr(dev, "type", str(dev)))


def evaluate_validation(params: dict, data: engine.TrainData, models, exclude_flagged: bool = True,
                        progress: bool = True) -> tuple[np.ndarray, dict]:
    """End-to-end validation as on the test set: raw validation images -> (localizer -> face crop ->) model ->
    original pixels, with the run's inference settings.

    Returns:
        ``(pred float32 [n_val, K, 2] original pixels, metrics dict)``; metrics has ``val_mse``, ``val_nme``,
        ``val_auc``, ``val_failure_rate`` (NME threshold 10 %), ``n_val``, for layouts with known outer eye corners
        the field's figures (``metrics.field_summary``: ``val_nme_io``, ``val_auc_08``, ``val_fr_08``,
        ``val_auc_10``, ``val_fr_10``) and, with ``exclude_flagged``,
        ``val_mse_clean`` / ``val_nme_clean`` / ``n_val_flagged``: the same without the validation images whose
        error the robust rule of ``noise.flag_outliers`` flags (``noise_threshold``), i.e. likely wrong labels.
    """
    if len(data.val_idx) == 0:
        return np.zeros((0, data.table.num_points, 2)), {"n_val": 0}
    images = ImageSet(data.image_dir, tuple(data.names[i] for i in data.val_idx), progress=progress)
    dev = select_device(params["device"])
    pred = predict_images(models, images, dev, inference_settings(params), backend=inference_backend(params, dev))
    truth = data.points(data.val_idx)
    out = _val_metrics(metrics.summary(pred, truth))
    out.update({f"val_{k}": v for k, v in metrics.field_summary(pred, truth).items() if not k.startswith("n_")})
    if exclude_flagged:
        err = metrics.per_image_nme(pred, truth)
        keep = ~noise.flag_outliers(err, params["noise_threshold"])
        out.update({"val_mse_clean": metrics.mse(pred[keep], truth[keep]),
                    "val_nme_clean": float(err[keep].mean()), "n_val_flagged": int((~keep).sum())})
    return pred, out


def evaluate_robustness(params: dict, data: engine.TrainData, models, max_images: int = robustness.MAX_IMAGES,
                        progress: bool = True):
    """The robustness set of the validation images (``robustness.RobustnessSet``: each re-framed once, seed 0),
    predicted with the run's inference settings and scored.

    Returns:
        ``(metrics, per_image, rset)``: ``{"robust_mse", "robust_nme", "robust_off_face", "n_robust"}`` (px², %,
        count), the per-image arrays of ``robustness.evaluate`` and the set (``rset.item(i)`` renders image ``i``).
    """

    names = [data.names[i] for i in data.val_idx]
    rset = robustness.RobustnessSet(data.image_dir, names, data.points(data.val_idx), max_images)
    if not len(rset):
        return {"n_robust": 0}, {}, rset
    dev = select_device(params["device"])
    pr = Predictor(models, dev, inference_settings(params), backend=inference_backend(params, dev))
    m, per = robustness.evaluate(pr, rset, float(models[0]["face"]["meta"]["face_scale"]))
    if progress:
        LOG.info(f"robustness set: {m['n_robust']} re-framed validation images, MSE {m['robust_mse']:.2f} px^2, "
                 f"{m['robust_off_face']} with the face crop off the face")
    return m, per, rset


def _val_metrics(s: dict) -> dict:
    """``metrics.summary`` under the names of ``metrics.json``."""
    return {"val_mse": s["mse"], "val_nme": s["nme"], "val_auc": s["auc"], "val_failure_rate": s["failure_rate"],
            "n_val": s["n_images"]}


def has_test_set(data_dir) -> bool:
    """Whether ``data_dir`` has test images to predict (the contest's ``test/test_points.csv``)."""
    return os.path.isfile(os.path.join(data_dir, "test", "test_points.csv"))


def predict_test(params: dict, data_dir, models, progress: bool = True, with_faces: bool = False):
    """Predict every test image listed in ``test/test_points.csv`` (all points, original pixels). A data folder
    without that file (``has_test_set``) has no test images: zero rows are returned.

    Returns:
        ``(TestPoints, pred float32 [N, K, 2])``; ``max_test_images`` > 0 predicts only the first ones (the
        ``TestPoints`` then hold only those rows, and ``write_results`` writes ``submission_partial.csv``); with
        ``with_faces`` a third item, the face crops and confidences (``predict.predict_images``).
    """
    if not has_test_set(data_dir):
        k = checkpoint.num_points(models[0])
        empty = (TestPoints([], np.zeros((0, 0), np.int64)), np.zeros((0, k, 2), np.float32))
        return (*empty, {"boxes": np.zeros((0, 4)), "confidence": np.zeros(0), "faces": np.zeros(0, np.int32)}) \
            if with_faces else empty
    tp = read_test_points(os.path.join(data_dir, "test", "test_points.csv"),
                          num_points=checkpoint.num_points(models[0]),
                          allow_links_outside=params.get("allow_links_outside", False))
    if params["max_test_images"]:
        tp.names, tp.indices = tp.names[: params["max_test_images"]], tp.indices[: params["max_test_images"]]
    image_dir = os.path.join(data_dir, "test", "images")
    if not params.get("allow_links_outside", False):
        for n in tp.names:
            why = link_outside(os.path.join(image_dir, n), data_dir)
            if why:
                raise DataFormatError(f"{os.path.join(image_dir, n)}: {why}")
    images = ImageSet(image_dir, tuple(tp.names), progress=progress)
    dev = select_device(params["device"])
    out = predict_images(models, images, dev, inference_settings(params), with_faces=with_faces,
                         backend=inference_backend(params, dev))
    return (tp, *out) if with_faces else (tp, out)


def write_results(params: dict, run: RunFolder, test_points, test_pred, val_metrics: dict, val_pred=None,
                  test_faces: dict | None = None) -> dict:
    """Write the submission, ``metrics.json``, ``test_predictions.npy`` (``float32 [N, K, 2]`` original pixels,
    rows in ``test_points.csv`` order), ``val_predictions.npy`` and, given ``test_faces`` (``predict_test``'s
    third item), ``test_faces.csv`` (``predict.write_faces_csv``: each test image's face crop and confidence),
    atomically. Returns the metrics written.

    ``test_points`` (with ``test_pred`` in its row order) must be the first ``N`` rows of the data's
    ``test/test_points.csv``. When it holds all of them the submission is ``submission.csv``, checked against the
    whole file; when ``max_test_images`` left some out it is ``submission_partial.csv`` (checked against the rows
    predicted; not a contest submission), and no ``submission.csv`` is written. Either removes the other name from
    the run folder, so a folder never holds a submission from an earlier run beside this run's.

    A data folder without a test set (``has_test_set``) gets no submission (it says so in the log); the other files
    are written, the test ones with zero rows.

    Raises:
        SubmissionError: ``test_points`` are not the first rows of ``test_points.csv``, or the submission fails its
            check (nothing is written then).
    """
    if not has_test_set(params["data_dir"]):
        LOG.info(f"{params['data_dir']}: no test set (test/test_points.csv): no submission to write")
        return _write_files(run, test_points, test_pred, val_metrics, val_pred, test_faces)
    tp_path = os.path.join(params["data_dir"], "test", "test_points.csv")
    full = read_test_points(tp_path, allow_links_outside=params.get("allow_links_outside", False))
    n = len(test_points)
    if list(test_points.names) != full.names[:n] or not np.array_equal(test_points.indices, full.indices[:n]):
        raise SubmissionError(f"{tp_path}: the {n} test images predicted are not its first {n} rows")
    name, stale = ("submission.csv", "submission_partial.csv") if n == len(full) else \
        ("submission_partial.csv", "submission.csv")
    write_submission(run.file(name), test_points, test_pred, decimals=params["submission_decimals"])
    if os.path.exists(run.file(stale)):
        os.remove(run.file(stale))
    return _write_files(run, test_points, test_pred, val_metrics, val_pred, test_faces)


def _write_files(run: RunFolder, test_points, test_pred, val_metrics: dict, val_pred, test_faces) -> dict:
    """``write_results``' files beside the submission; returns the metrics written."""
    n = len(test_points)
    atomic_save_npy(run.file("test_predictions.npy"), np.asarray(test_pred, np.float32))
    if val_pred is not None:
        atomic_save_npy(run.file("val_predictions.npy"), np.asarray(val_pred, np.float32))
    if test_faces is not None:
        write_faces_csv(run.file("test_faces.csv"), test_points.names, test_faces["boxes"],
                        test_faces["confidence"], test_faces["faces"])
    m = dict(val_metrics, n_test=n)
    atomic_write_json(run.file("metrics.json"), m)
    return m


# --------------------------------------------------------------------------------------------- notebook helpers
def predict_training_images(params: dict, data: engine.TrainData, checkpoint, indices=None) -> np.ndarray:
    """A checkpoint's predictions on training images, crops placed as in training (``engine.stage_cache`` of the
    ``train`` stage; face crops from the labels), no augmentation, no TTA: what ``noise.training_errors`` scores
    (``noise.training_predictions``).

    Returns:
        ``float64 [n, K, 2]`` original pixels for ``indices`` (default all), in that order.
    """
    c = engine.stage_cache(engine.stage_recipe(params, "train"), data, params, progress=False)
    return noise.training_predictions(checkpoint, data, c, indices, params["device"],
                                      backend=inference_backend(params))


def image_loader(image_dir, names):
    """A callable ``i -> uint8 [H, W, 3]`` loading ``names[i]`` from ``image_dir`` (``images.load_image``), for the
    lazy ``images`` argument of ``viz.gallery``."""

    names = list(names)
    image_dir = os.fspath(image_dir)

    def load(i):
        return load_image(os.path.join(image_dir, names[int(i)]))

    return load


def test_images(params: dict, n: int | None = None):
    """The first ``n`` test images of ``test_points.csv`` (all by default): ``(loader i -> uint8 [H, W, 3], names)``
    for ``viz.gallery``; no names for a data folder without a test set (``has_test_set``)."""
    if not has_test_set(params["data_dir"]):
        return image_loader(params["data_dir"], []), []
    names = read_test_points(os.path.join(params["data_dir"], "test", "test_points.csv"),
                             allow_links_outside=params.get("allow_links_outside", False)).names[:n]
    return image_loader(os.path.join(params["data_dir"], "test", "images"), names), names


def results_summary(run: RunFolder, test_points) -> str:
    """One sentence on what ``write_results`` wrote: the submission and its shape, or that there is none."""
    if not len(test_points) and run.submission() is None:
        return "no test set in this data folder: no submission written (metrics.json holds the validation figures)"
    return (f"{run.submission()}: {len(test_points)} rows, {2 * test_points.indices.shape[1]} value columns, validated "
            f"against test_points.csv (a submission_partial.csv holds only its first rows: not for upload)")


def mean_shape_baseline(data: engine.TrainData, threshold: float = 10.0) -> tuple[np.ndarray, dict]:
    """The no-model baseline on the validation split: the mean training shape in whole-image (letterbox) units (of
    at most ``eda.SHAPE_SAMPLE`` training images, a seeded sample),
    placed on each validation image by its own letterbox frame (``geometry.letterbox_frame``). A model that has
    learnt anything is far below it.

    Returns:
        ``(pred float64 [n_val, K, 2] original pixels, {"val_mse", "val_nme", "val_auc", "val_failure_rate",
        "n_val"})``.
    """

    def frames(idx):
        return np.stack([letterbox_frame(*image_size(os.path.join(data.image_dir, data.names[i])), 1).as_array()
                         for i in idx]).reshape(-1, 4)

    # The mean of at most SHAPE_SAMPLE training shapes (seeded): more would not move it.
    tr = data.train_idx[sample_rows(len(data.train_idx))]
    mean = np.nanmean(frames_to_crop(data.points(tr), frames(tr)), axis=0)
    pred = frames_to_original(np.repeat(mean[None], len(data.val_idx), axis=0), frames(data.val_idx))
    return pred, _val_metrics(metrics.summary(pred, data.points(data.val_idx), threshold))
