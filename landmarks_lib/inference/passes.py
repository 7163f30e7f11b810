"""The passes around the networks, written once in numpy for every backend (``backends``): the network input
(``network_input``: ``uint8`` NHWC crops -> normalised ``float32`` NCHW), the landmark regressors' pass with flip TTA
(``predict_crops``), the face-box localizer's pass with its decoding and the face rule (``detect_crops``:
``codecs.decode_faceboxes``, ``codecs.choose``), the same over a crop cache mapped to original pixels
(``predict_cache``, ``predict_boxes_cache``), and the test-time settings (``Inference``).

Coordinates: crop pixels of the network's ``S x S`` input (continuous convention: pixel ``i`` spans ``[i, i + 1)``,
a flip maps ``x -> S - x``); ``predict_cache`` and ``predictor.Predictor`` map them to original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import geometry
from ..core.params import parse_scales
from ..models import codecs
from .backends import as_backend


def network_input(crops_u8: np.ndarray, mean, std) -> np.ndarray:
    """``uint8 [B, H, W, 3]`` crops -> ``float32 [B, 3, H, W]`` (C-contiguous): ``x * a + b`` per channel with
    ``a = 1 / (255 std)``, ``b = -mean / std`` (the same two float32 operations as ``loading.network_input``)."""
    x = np.ascontiguousarray(np.asarray(crops_u8).transpose(0, 3, 1, 2), dtype=np.float32)
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    a = (1.0 / (255.0 * s)).astype(np.float32).reshape(1, 3, 1, 1)
    b = (-m / s).astype(np.float32).reshape(1, 3, 1, 1)
    x *= a
    x += b
    return x


def predict_crops(net, meta: dict, crops, batch_size: int = 16, tta_flip: bool = False) -> np.ndarray:
    """A landmark regressor on ready crops.

    Args:
        net: a backend (a torch module runs on the CPU; ``backends.as_backend``): ``float32 [n, 3, S, S]`` numpy ->
        ``float32 [n, K, 2]`` target
            units.
        crops: ``uint8 [N, S, S, 3]``, ``S = meta["crop_size"]``.
        tta_flip: also predict on the mirrored crop, map back (``x -> S - x``, points re-indexed by
            ``meta["flip_perm"]``; points in ``meta["flip_unmatched"]`` keep the unflipped prediction) and average.
    Returns:
        ``float32 [N, K, 2]`` crop pixels.
    Raises:
        ValueError: ``tta_flip`` without ``meta["flip_perm"]``.
    """
    net, size, codec = as_backend(net), int(meta["crop_size"]), codecs.LandmarkCodec.from_meta(meta)
    if tta_flip and meta.get("flip_perm") is None:
        raise ValueError("tta_flip needs a checkpoint with a mirror permutation (trained with flip estimation)")
    perm = np.asarray(meta["flip_perm"], np.int64) if tta_flip else None
    unmatched = np.asarray(meta.get("flip_unmatched") or [], np.int64)
    out = np.zeros((len(crops), int(meta["num_points"]), 2), np.float32)
    for s in range(0, len(crops), batch_size):
        x = network_input(crops[s: s + batch_size], meta["input_mean"], meta["input_std"])
        y = codec.decode(net(x))
        if tta_flip:
            yf = codec.decode(net(np.ascontiguousarray(x[..., ::-1])))
            yf[..., 0] = size - yf[..., 0]
            yf = yf[:, perm]
            if len(unmatched):
                yf[:, unmatched] = y[:, unmatched]
            y = (y + yf) / np.float32(2)
        out[s: s + len(x)] = y
    return out


def detect_crops(net, meta: dict, crops, batch_size: int = 16, tta_flip: bool = False, raw: bool = False):
    """The chosen face of each ready letterboxed crop (``codecs.choose``, with the rule the localizer learned,
    ``meta["face_rule"]``, when it has one).

    Args:
        net: a backend (a torch module runs on the CPU; ``backends.as_backend``): ``float32 [n, 3, S, S]`` numpy ->
        ``float32 [n, 4, S/16, S/16]``.
        crops: ``uint8 [N, S, S, 3]``.
        tta_flip: average the output with that of the mirrored crop (mapped back: columns reversed, x offsets
            negated) before decoding.
        raw: return every detection instead of the chosen one.
    Returns:
        ``(boxes float64 [N, 3]`` input pixels, ``scores float64 [N]``, ``faces int64 [N]``); see ``choose``. With
        ``raw``: ``(boxes float64 [N, T, 3], scores float64 [N, T])``, ``FaceBoxCodec.decode``'s.
    """
    net, codec = as_backend(net), codecs.FaceBoxCodec(int(meta["crop_size"]))
    rule = meta.get("face_rule")
    out_b, out_s, out_n = [], [], []
    for s in range(0, len(crops), batch_size):
        x = network_input(crops[s: s + batch_size], meta["input_mean"], meta["input_std"])
        out = net(x)
        if tta_flip:
            mirrored = np.ascontiguousarray(net(np.ascontiguousarray(x[..., ::-1]))[..., ::-1])
            mirrored[:, 1] = -mirrored[:, 1]
            out = (out + mirrored) / np.float32(2)
        if raw:
            b, sc = codec.decode(out)
            out_b.append(b), out_s.append(sc)
            continue
        b, sc, n = codecs.choose(*codec.decode(out), rule=rule, size=codec.size)
        out_b.append(b), out_s.append(sc), out_n.append(n)
    if raw:
        return (np.concatenate(out_b), np.concatenate(out_s)) if out_b else (np.zeros((0, 8, 3)), np.zeros((0, 8)))
    if not out_b:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_n)


def predict_cache(model, meta, crop_cache, indices=None, device="cpu", batch_size: int = 128,
                  tta_flip: bool = False, amp: bool = False) -> np.ndarray:
    """Predict the images of a ``cache.CropCache`` (crops sliced from its border) and map to original pixels.

    Args:
        model: a torch module (run on ``device``, bf16 autocast on CUDA with ``amp``) or a backend.
        indices: the cache's rows (default all), in any order.
    Returns:
        ``float64 [n, K, 2]`` original pixels for ``indices``, in that order.
    """
    net = as_backend(model, device, amp)
    idx = np.arange(len(crop_cache)) if indices is None else np.asarray(indices)
    p, s = crop_cache.pad, crop_cache.size
    out = []
    for b in range(0, len(idx), 1024):
        sel = np.sort(idx[b: b + 1024])
        order = np.argsort(np.argsort(idx[b: b + 1024]))
        crops = crop_cache.images[sel, p: p + s, p: p + s]
        pred = predict_crops(net, meta, crops, batch_size, tta_flip)
        out.append(geometry.frames_to_original(pred, crop_cache.frames[sel])[order])
    if not out:
        return np.zeros((0, int(meta["num_points"]), 2))
    return np.concatenate(out)


def _cache_crops(crop_cache, sel) -> np.ndarray:
    """``uint8 [n, S, S, 3]``: the crops of the cache rows ``sel`` (read in index order), sliced from the border."""
    p, s = crop_cache.pad, crop_cache.size
    order = np.argsort(sel, kind="stable")
    crops = np.empty((len(sel), s, s, 3), np.uint8)
    crops[order] = crop_cache.images[sel[order], p: p + s, p: p + s]
    return crops


def predict_boxes_cache(model, meta: dict, crop_cache, indices, device="cpu") -> np.ndarray:
    """``float64 [n, 3]`` chosen face boxes ``(cx, cy, extent)`` in original pixels of the images ``indices`` of a
    letterbox ``cache.CropCache`` (crops sliced from its border); ``model`` a torch module or a backend."""
    net = as_backend(model, device)
    idx = np.asarray(indices)
    out = []
    for b in range(0, len(idx), 512):
        sel = idx[b: b + 512]
        boxes, _, _ = detect_crops(net, meta, _cache_crops(crop_cache, sel), 128)
        out.append(geometry.boxes_to_original(boxes, crop_cache.frames[sel]))
    return np.concatenate(out) if out else np.zeros((0, 3))


def detections_cache(model, meta: dict, crop_cache, indices, device="cpu"):
    """Every detection of the localizer on the images ``indices`` of a letterbox ``cache.CropCache``, in input
    (letterbox crop) pixels: ``(boxes float64 [n, T, 3], scores float64 [n, T])`` (``FaceBoxCodec.decode``)."""
    net = as_backend(model, device)
    idx = np.asarray(indices)
    bs, ss = [], []
    for b in range(0, len(idx), 512):
        boxes, scores = detect_crops(net, meta, _cache_crops(crop_cache, idx[b: b + 512]), 128, raw=True)
        bs.append(boxes), ss.append(scores)
    return (np.concatenate(bs), np.concatenate(ss)) if bs else (np.zeros((0, 8, 3)), np.zeros((0, 8)))


@dataclass(frozen=True)
class Inference:
    """Test-time settings: flip TTA, how often the face model re-places its own crop, the crop scales of the last
    pass (scale TTA, factors of the model's ``face_scale``), the batch size and bf16 autocast on CUDA."""

    tta_flip: bool = True
    refine_steps: int = 1
    tta_scales: tuple = (1.0,)
    batch_size: int = 128
    amp: bool = False

    @classmethod
    def from_settings(cls, settings: dict, **kw) -> Inference:
        """From a mapping with ``tta_flip``, ``refine_steps``, ``tta_scales`` (parameters, or a model's stored
        ``inference``); ``kw`` sets the others."""
        return cls(bool(settings["tta_flip"]), int(settings["refine_steps"]), parse_scales(settings["tta_scales"]),
                   **kw)
