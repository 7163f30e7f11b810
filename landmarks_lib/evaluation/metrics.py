"""Metrics in original-image pixels.

- **MSE** (the contest metric): the mean over every scored x and every scored y of the squared difference, in
  original-image pixels, per coordinate (not per point): ``mean((pred - truth) ** 2)`` over ``[N, K, 2]``.
- **NME**: per image, the mean point-to-point distance divided by ``sqrt(w * h)`` of the ground-truth points'
  bounding box (the layout has no documented eye corners, so no inter-ocular distance), in percent.
- **CED**: the cumulative distribution of per-image NME, its area under the curve up to a threshold (normalised to
  ``[0, 1]``) and the failure rate (share of images with NME above the threshold), as in the 300-W benchmark
  (Sagonas et al., 2016).
- **The field's NME** (``field_summary``, for layouts with known outer eye corners: iBUG-68, WFLW-98): per image, the
  mean point-to-point distance divided by the distance between the ground truth's outer eye corners (``OUTER_EYES``),
  in percent; the mean over images, with the CED's AUC and failure rate at 8 % and 10 %, as 300-W and WFLW report.

Unlabelled points (NaN in ``truth``) are left out of every NME: an image's NME is the mean over its labelled points;
an image with no labelled point, or without both eye corners for the field's NME, is left out of the mean (and
counted in ``n_unscored``).
"""

from __future__ import annotations

import warnings

import numpy as np


def _finite_pairs(pred, truth):
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != truth shape {t.shape}")
    return p, t


def mse(pred, truth) -> float:
    """Contest MSE in squared pixels: mean over all coordinates of ``(pred - truth) ** 2``; coordinates of unlabelled
    points (NaN in ``truth``) are left out.

    Args:
        pred, truth: ``[..., 2]`` points, original pixels, same shape.
    Raises:
        ValueError: shapes differ, an infinite value in either, a NaN in ``pred`` where ``truth`` is labelled, or no
            labelled coordinate.
    """
    p, t = _finite_pairs(pred, truth)
    known = ~np.isnan(t)
    if np.isinf(t).any() or not np.isfinite(p[known]).all():
        raise ValueError("mse: NaN or infinite coordinates")
    if known.all():
        return float(np.mean((p - t) ** 2))
    if not known.any():
        raise ValueError("mse: no labelled coordinate")
    return float(np.mean((p[known] - t[known]) ** 2))


#: 0-based indices of the outer eye corners (the field's NME normaliser) by point count: iBUG-68 (points 37 and 46,
#: 1-based) and WFLW-98 (points 61 and 73, 1-based).
OUTER_EYES = {68: (36, 45), 98: (60, 72)}

#: The CED thresholds (percent) the field reports AUC and failure rate at.
FIELD_THRESHOLDS = (8.0, 10.0)


def per_point_error(pred, truth) -> np.ndarray:
    """``float64 [N, K]``: Euclidean distance of each point, pixels (NaN where either point is NaN)."""
    p, t = _finite_pairs(pred, truth)
    return np.sqrt(((p - t) ** 2).sum(-1))


def bbox_size(truth) -> np.ndarray:
    """``float64 [N]``: ``sqrt(w * h)`` of each ground-truth shape's bounding box (labelled points), pixels (at
    least 1e-6; NaN for an image without labelled points)."""
    t = np.asarray(truth, dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wh = np.nanmax(t, axis=1) - np.nanmin(t, axis=1)
    return np.sqrt(np.maximum(wh[:, 0] * wh[:, 1], 1e-12))


def outer_eye_distance(truth) -> np.ndarray:
    """``float64 [N]``: the distance between the outer eye corners of each ground-truth shape, pixels (NaN when
    either corner is unlabelled).

    Raises:
        ValueError: a point count without known eye corners (``OUTER_EYES``).
    """
    t = np.asarray(truth, dtype=np.float64)
    if t.shape[1] not in OUTER_EYES:
        raise ValueError(f"no outer eye corners known for {t.shape[1]} points (known: {sorted(OUTER_EYES)})")
    a, b = OUTER_EYES[t.shape[1]]
    return np.sqrt(((t[:, a] - t[:, b]) ** 2).sum(-1))


def _mean_error(pred, truth) -> np.ndarray:
    e = per_point_error(pred, truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an image without labelled points: NaN
        return np.nanmean(e, axis=1) if np.isnan(e).any() else e.mean(axis=1)


def per_image_nme(pred, truth, norm: str = "box") -> np.ndarray:
    """``float64 [N]``: NME of each image, percent, over its labelled points.

    Args:
        pred, truth: ``[N, K, 2]`` original pixels; NaN in ``truth`` marks unlabelled points.
        norm: ``"box"`` (``bbox_size``, any layout) or ``"outer_eyes"`` (``outer_eye_distance``, the field's).
    Returns:
        NaN for an image with nothing to score.
    Raises:
        ValueError: another ``norm``; ``"outer_eyes"`` for a layout without known eye corners.
    """
    if norm not in ("box", "outer_eyes"):
        raise ValueError(f"norm must be 'box' or 'outer_eyes', got {norm!r}")
    d = bbox_size(truth) if norm == "box" else outer_eye_distance(truth)
    return _mean_error(pred, truth) / d * 100.0


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


def field_summary(pred, truth) -> dict:
    """The field's figures for a layout with known outer eye corners (``OUTER_EYES``), else ``{}``.

    Args:
        pred, truth: ``[N, K, 2]`` original pixels (NaN in ``truth``: unlabelled points).
    Returns:
        ``{"nme_io": mean NME (percent, outer-eye normalised), "auc_08", "fr_08", "auc_10", "fr_10" (CED at 8 % and
        10 %, in [0, 1]), "n_scored", "n_unscored"}``.
    """
    if np.asarray(truth).shape[1] not in OUTER_EYES:
        return {}
    n = per_image_nme(pred, truth, "outer_eyes")
    ok = np.isfinite(n)
    out = {"nme_io": float(n[ok].mean()) if ok.any() else float("nan"), "n_scored": int(ok.sum()),
           "n_unscored": int((~ok).sum())}
    for t in FIELD_THRESHOLDS:
        _, _, auc, fr = ced(n[ok], t)
        out[f"auc_{int(t):02d}"], out[f"fr_{int(t):02d}"] = auc, fr
    return out


def summary(pred, truth, threshold: float = 10.0) -> dict:
    """``{"mse", "nme", "auc", "failure_rate", "n_images"}`` for ``[N, K, 2]`` predictions in original pixels."""
    n = per_image_nme(pred, truth)
    _, _, auc, fail = ced(n, threshold)
    return {"mse": mse(pred, truth), "nme": float(n.mean()), "auc": auc, "failure_rate": fail,
            "n_images": int(len(n))}
