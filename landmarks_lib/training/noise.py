"""Label-noise finding: training images whose labels disagree with the image.

Recipe: predict every training image with a trained model (no augmentation, crops placed from the labels), take each
image's NME against its own labels, and flag images whose NME exceeds ``median + threshold * 1.4826 * MAD`` of all
images (a robust z-score: the median absolute deviation scaled to a normal standard deviation, Rousseeuw & Croux,
JASA 1993; the few wrong labels do not inflate the cut as they would a mean and standard deviation).
A label is flagged only when the model is good enough to judge (a median validation NME of at most 10 %) and its
error also stands above the same cut of the model's errors on the validation images (which it did not train on), so
a model too weak to judge the labels flags none of them (``flag_outliers(..., reference=...)``). Flagged images can be
kept, dropped or down-weighted when finetuning
(parameter ``noise_action``).
"""

from __future__ import annotations

import os

import numpy as np
from tqdm.auto import tqdm

from ..core.coords import POINT_CHUNK
from ..core.devices import select_device
from ..evaluation import metrics
from ..inference.export import onnx_network
from ..inference.passes import predict_cache
from ..models import checkpoint as checkpoint_mod
from ..models import networks


def robust_cut(errors, threshold: float) -> float:
    """``median + threshold * 1.4826 * MAD`` of ``errors`` (``[N]``, NaN ignored)."""
    e = np.asarray(errors, dtype=np.float64)
    med = np.nanmedian(e)
    mad = np.nanmedian(np.abs(e - med)) * 1.4826
    return float(med + threshold * mad)


MIN_REFERENCE = 20  # images a reference error distribution needs before it counts
JUDGE_MAX_MEDIAN_NME = 10.0  # percent: a model whose median validation NME is above this cannot judge labels


def flag_outliers(errors, threshold: float, reference=None) -> np.ndarray:
    """``bool [N]``: errors above ``robust_cut`` of ``errors``; with a ``reference`` of at least ``MIN_REFERENCE``
    errors (the model's NME on images it was not trained on, the validation split), only when the model is good
    enough to judge and above the reference's own cut too.

    Good enough to judge means a median reference NME of at most ``JUDGE_MAX_MEDIAN_NME`` percent (the CED's failure
    threshold): a weaker model, whose errors come from its own mistakes more than from the labels, flags nothing. A
    good model keeps its validation errors small, and a wrong training label stands far above them.
    """
    e = np.asarray(errors, dtype=np.float64)
    cut = robust_cut(e, threshold)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    if ref is not None and np.isfinite(ref).sum() >= MIN_REFERENCE:
        if np.nanmedian(ref) > JUDGE_MAX_MEDIAN_NME:
            return np.zeros(len(e), bool)
        cut = max(cut, robust_cut(ref, threshold))
    return e > cut


def sample_weights(errors, flags, action: str) -> np.ndarray:
    """``float32 [N]`` training weights: ``keep`` -> 1; ``drop`` -> 0 where flagged; ``downweight`` -> flagged
    images get ``(cut / error) ** 2`` (< 1), so their loss counts like an image at the cut.

    Raises:
        ValueError: unknown action.
    """
    e = np.asarray(errors, dtype=np.float64)
    f = np.asarray(flags, dtype=bool)
    w = np.ones(len(e), np.float32)
    if action == "keep":
        return w
    if action == "drop":
        w[f] = 0.0
        return w
    if action == "downweight":
        cut = e[~f].max() if (~f).any() else 1.0
        w[f] = np.clip((cut / np.maximum(e[f], 1e-9)) ** 2, 0.0, 1.0)
        return w
    raise ValueError(f"noise_action must be keep, drop or downweight, got {action!r}")


def scoring_network(checkpoint, device="cpu", backend: str = "torch"):
    """``(network, meta)`` of a stage checkpoint (path or loaded) for ``training_predictions``: the torch module, or
    with ``backend="onnx"`` the onnxruntime network (``export.onnx_network``, exported in memory once).

    Raises:
        ValueError: another ``backend``; RuntimeError: ``"onnx"`` without onnxruntime installed.
    """
    ck = checkpoint_mod.load(checkpoint, "stage") if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if backend == "onnx":

        return onnx_network(ck, "cpu"), ck["meta"]
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    return networks.network(ck, select_device(str(device))), ck["meta"]


def training_predictions(checkpoint, data, crop_cache, indices=None, device="cpu", batch_size: int = 16,
                         backend: str = "torch", network=None):
    """A model's predictions on training images from their cached crops (no augmentation, no TTA).

    Args:
        checkpoint: path or loaded checkpoint whose geometry matches ``crop_cache`` (``engine.stage_cache``).
        data: ``engine.TrainData``. indices: positions (default all).
        backend: ``"torch"`` or ``"onnx"`` (``scoring_network``; the points agree within 2e-3 px).
        network: ``scoring_network``'s pair, built once by a caller that predicts in blocks.
    Returns:
        ``float64 [n, K, 2]`` original pixels, in ``indices`` order.
    """
    net, meta = network or scoring_network(checkpoint, device, backend)
    idx = np.arange(len(data.names)) if indices is None else np.asarray(indices, dtype=np.int64)
    return predict_cache(net, meta, crop_cache, idx, select_device(str(device)), batch_size)


def training_errors(checkpoint, data, crop_cache, indices=None, device="cpu", batch_size: int = 16,
                    chunk: int = POINT_CHUNK, progress: bool = False, backend: str = "torch") -> np.ndarray:
    """Per-image NME (percent) of a model against the training labels (``training_predictions``), ``chunk`` images
    at a time (a multiple of ``predict_cache``'s 1,024-image blocks, so the predictions are those of one pass):
    memory stays at one block of predictions at any dataset size. ``batch_size`` 16, the ``Predictor``'s micro-batch:
    MobileNetV2 at crop 112 ran at 290 images/s on 2 cores at 16 against 206 at 128 with torch (its activations stay
    in cache); ``backend="onnx"`` (onnxruntime) ran 1.65x torch's images/s on 2 cores (``benchmarks/throughput.py``:
    ``ratio_infer_onnx_torch``).

    Returns:
        ``float64 [n]`` NME per image, percent, in ``indices`` order.
    """

    network = scoring_network(checkpoint, device, backend)
    idx = np.arange(len(data.names)) if indices is None else np.asarray(indices, dtype=np.int64)
    out = np.zeros(len(idx), np.float64)
    with tqdm(total=len(idx), desc="scoring training labels", disable=not progress, mininterval=2.0) as bar:
        for s in range(0, len(idx), chunk):
            part = idx[s:s + chunk]
            pred = training_predictions(None, data, crop_cache, part, device, batch_size, network=network)
            out[s:s + len(part)] = metrics.per_image_nme(pred, data.points(part))
            bar.update(len(part))
    return out
