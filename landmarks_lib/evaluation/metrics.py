"""Metrics in original-image pixels.

- **MSE** (the contest metric): the mean over every scored x and every scored y of the squared difference, in
  original-image pixels, per coordinate (not per point): ``mean((pred - truth) ** 2)`` over ``[N, K, 2]``.
- **NME**: per image, the mean point-to-point distance divided by ``sqrt(w * h)`` of the ground-truth points'
  bounding box (the layout has no documented eye corners, so no inter-ocular distance), in percent.
- **CED**: the cumulative distribution of per-image NME, its area under the curve up to a threshold (normalised to
  ``[0, 1]``) and the failure rate (share of images with NME above the threshold), as in the 300-W benchmark
  (Sagonas et al., 2016).
"""

from __future__ import annotations

import numpy as np


def _finite_pairs(pred, truth):
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != truth shape {t.shape}")
    return p, t


def mse(pred, truth) -> float:
    """Contest MSE in squared pixels: mean over all coordinates of ``(pred - truth) ** 2``.

    Args:
        pred, truth: ``[..., 2]`` points, original pixels, same shape.
    Raises:
        ValueError: shapes differ, or a NaN in either.
    """
    p, t = _finite_pairs(pred, truth)
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("mse: NaN or infinite coordinates")
    return float(np.mean((p - t) ** 2))


def per_point_error(pred, truth) -> np.ndarray:
    """``float64 [N, K]``: Euclidean distance of each point, pixels."""
    p, t = _finite_pairs(pred, truth)
    return np.sqrt(((p - t) ** 2).sum(-1))


def bbox_size(truth) -> np.ndarray:
    """``float64 [N]``: ``sqrt(w * h)`` of each ground-truth shape's bounding box, pixels (at least 1e-6)."""
    t = np.asarray(truth, dtype=np.float64)
    wh = t.max(axis=1) - t.min(axis=1)
    return np.sqrt(np.maximum(wh[:, 0] * wh[:, 1], 1e-12))


def per_image_nme(pred, truth) -> np.ndarray:
    """``float64 [N]``: NME of each image, percent (see module docstring)."""
    return per_point_error(pred, truth).mean(axis=1) / bbox_size(truth) * 100.0


def ced(nme_values, threshold: float = 10.0, steps: int = 1000):
    """Cumulative error distribution of per-image NME.

    Args:
        nme_values: ``[N]`` per-image NME, percent.
        threshold: NME (percent) up to which the AUC is taken and above which an image counts as a failure.
    Returns:
        ``(x, y, auc, failure_rate)``: ``x`` ``[steps]`` NME grid in ``[0, threshold]``, ``y`` share of images with
        NME <= x, ``auc`` in ``[0, 1]`` (area under ``y`` divided by ``threshold``), ``failure_rate`` in ``[0, 1]``.
    """
    v = np.sort(np.asarray(nme_values, dtype=np.float64))
    x = np.linspace(0.0, threshold, steps)
    y = np.searchsorted(v, x, side="right") / max(len(v), 1)
    auc = float(np.trapezoid(y, x) / threshold)
    fail = float(np.mean(v > threshold)) if len(v) else 0.0
    return x, y, auc, fail


def summary(pred, truth, threshold: float = 10.0) -> dict:
    """``{"mse", "nme", "auc", "failure_rate", "n_images"}`` for ``[N, K, 2]`` predictions in original pixels."""
    n = per_image_nme(pred, truth)
    _, _, auc, fail = ced(n, threshold)
    return {"mse": mse(pred, truth), "nme": float(n.mean()), "auc": auc, "failure_rate": fail,
            "n_images": int(len(n))}
