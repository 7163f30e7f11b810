"""Dataset statistics for the EDA notebook: crop coverage, face placement, shape residuals."""

from __future__ import annotations

import numpy as np

from ..core import geometry
from ..core.coords import POINT_CHUNK, point_blocks

# ------------------------------------------------------------------------------------ EDA: crops and shapes
#: Faces drawn (seeded) where a figure or a reference shape gains nothing from more: the EDA's mean shape, mirror
#: check, face-centre scatter and the Procrustes reference. Counts and per-image statistics stay exact.
SHAPE_SAMPLE = 20000


def sample_rows(n: int, size: int = SHAPE_SAMPLE, seed: int = 0) -> np.ndarray:
    """``int64 [min(n, size)]`` sorted row positions: all ``n`` when ``n <= size``, else a seeded sample without
    replacement (``numpy.random.default_rng(seed)``), the same on every run."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, int(size), replace=False)).astype(np.int64)


def sample_note(shown: int, total: int, what: str = "faces") -> str:
    """``"20,000 of 393,930 faces (seeded sample)"`` when a figure shows a sample, else ``"4,193 faces"``."""
    if shown < total:
        return f"{shown:,} of {total:,} {what} (seeded sample)"
    return f"{total:,} {what}"


def crop_frames(mode: str, widths, heights, size: int, points=None, face_scale: float = 1.25) -> np.ndarray:
    """Vectorised ``make_frame``: ``float64 [N, 4]`` ``CropFrame`` rows of ``mode`` for ``N`` images.

    Args:
        widths, heights: ``[N]`` image sizes, pixels.
        points: ``[N, K, 2]`` landmarks in original pixels (``face`` mode; a point with a non-finite coordinate is
            ignored).
    Raises:
        ValueError: an unknown mode, ``face`` without points, or a face without a finite point.
    """
    w = np.asarray(widths, dtype=np.float64).reshape(-1)
    h = np.asarray(heights, dtype=np.float64).reshape(-1)
    size_col = np.full(len(w), float(int(size)))
    if mode in ("center", "letterbox"):
        side = np.minimum(w, h) if mode == "center" else np.maximum(w, h)
        return np.stack([(w - side) / 2.0, (h - side) / 2.0, side, size_col], 1)
    if mode == "face":
        if points is None:
            raise ValueError("crop_mode 'face' needs landmarks (ground truth or the localizer's prediction)")
        p = np.asarray(points, dtype=np.float64)
        ok = np.isfinite(p).all(axis=2)
        return geometry.box_frames(_finite_face_boxes(p, ok), size, face_scale)
    raise ValueError(f"unknown crop_mode {mode!r}; expected one of {geometry.CROP_MODES}")


def _finite_face_boxes(p: np.ndarray, ok: np.ndarray, strict: bool = True) -> np.ndarray:
    """``face_boxes`` of ``p [N, K, 2]`` from its points whose both coordinates are finite (``ok [N, K]``).

    Raises:
        ValueError: with ``strict``, a face without a finite point (no crop can be placed; else its box is NaN).
    """
    if ok.all():
        return geometry.face_boxes(p)
    if strict and not ok.any(axis=1).all():
        raise ValueError(f"face_frame: no finite landmarks to place the crop of image "
                         f"{int(np.flatnonzero(~ok.any(axis=1))[0])}")
    return geometry.face_boxes(np.where(ok[..., None], p, np.nan))


def _size_check(points, w, h) -> None:
    shape = tuple(np.shape(points)) if not hasattr(points, "shape") else tuple(points.shape)
    if len(shape) != 3 or shape[2] != 2 or shape[0] != len(w) or len(w) != len(h):
        raise ValueError(f"points {shape} must be [N, K, 2] with N widths and heights ({len(w)}, {len(h)})")


def crop_coverage(points, widths, heights, crop_size: int, face_scale: float = 1.25, modes=None,
                  chunk: int = POINT_CHUNK) -> list:
    """How each crop mode treats the faces of a dataset (EDA: which crop keeps the face, at what resolution).

    For every image the crop of each mode is placed (``crop_frames``; ``face`` crops from the labels themselves, as
    in training) and the landmarks are compared with the image and with the crop. Visits the faces in blocks of
    ``chunk`` (memory: one block, at any dataset size); every figure is exact, whatever ``chunk``.

    Args:
        points: ``[N, K, 2]`` landmarks, original pixels (NaN allowed): an array, a memmap or an ``coords.PointsView``.
        widths, heights: ``[N]`` image sizes, pixels.
        crop_size: crop side in pixels.
        face_scale: face crop side over the landmarks' bounding-box longer side.
        modes: crop modes to report (default ``geometry.CROP_MODES``).
        chunk: faces per block.
    Returns:
        a list of dicts, one per mode (``pd.DataFrame(rows)`` shows them): ``crop_mode``,
        ``points_outside_image_pct`` (share of all points outside ``[0, W] x [0, H]``; the same for every mode),
        ``points_outside_crop_pct`` (share of all points outside the crop), ``images_cut_pct`` (share of images with
        at least one point outside the crop), ``face_px_median`` (median longer side of the landmarks' bounding box in
        crop pixels: the resolution the network sees) and ``face_share_median`` (the same over the crop side).
    Raises:
        ValueError: shapes that disagree, or an unknown mode.
    """
    w = np.asarray(widths, dtype=np.float64).reshape(-1)
    h = np.asarray(heights, dtype=np.float64).reshape(-1)
    _size_check(points, w, h)
    modes = list(modes or geometry.CROP_MODES)
    for mode in modes:
        if mode not in geometry.CROP_MODES:
            raise ValueError(f"unknown crop_mode {mode!r}; expected one of {geometry.CROP_MODES}")
    n = len(w)
    n_ok = n_out_img = 0
    n_out = dict.fromkeys(modes, 0)
    cut = {m: np.zeros(n, bool) for m in modes}
    share = {m: np.zeros(n, np.float64) for m in modes}
    for s, p in point_blocks(points, chunk):
        e = s + len(p)
        ok = np.isfinite(p).all(axis=2)
        every = bool(ok.all())  # no point left unlabelled: the masks below need no ``ok &``
        x, y = p[..., 0], p[..., 1]
        n_ok += int(ok.sum())
        out = (x < 0) | (y < 0) | (x > w[s:e, None]) | (y > h[s:e, None])
        if not every:  # a point with a non-finite coordinate counts nowhere
            out &= ok
        n_out_img += int(out.sum())
        # the landmarks' boxes once per block (crop_frames' face crop; a face without a finite point raises there)
        boxes = _finite_face_boxes(p, ok, strict="face" in modes)
        face_side = boxes[:, 2]
        for mode in modes:
            if mode == "face":  # as crop_frames places it
                f = geometry.box_frames(boxes, crop_size, face_scale)
            else:
                f = crop_frames(mode, w[s:e], h[s:e], crop_size)
            x0, y0, side = f[:, 0:1], f[:, 1:2], f[:, 2:3]
            out = (x < x0) | (y < y0) | (x > x0 + side) | (y > y0 + side)
            if not every:
                out &= ok
            n_out[mode] += int(out.sum())
            cut[mode][s:e] = out.any(axis=1)
            share[mode][s:e] = face_side / f[:, 2]
    rows = []
    for mode in modes:
        rows.append({"crop_mode": mode,
                     "points_outside_image_pct": 100.0 * n_out_img / max(n_ok, 1),
                     "points_outside_crop_pct": 100.0 * n_out[mode] / max(n_ok, 1),
                     "images_cut_pct": 100.0 * cut[mode].mean() if n else 0.0,
                     "face_px_median": float(np.nanmedian(share[mode] * crop_size)) if n else float("nan"),
                     "face_share_median": float(np.nanmedian(share[mode])) if n else float("nan")})
    return rows


def face_placement(points, widths, heights, chunk: int = POINT_CHUNK) -> np.ndarray:
    """``float64 [N, 3]`` per image: the centre of the landmarks' bounding box as a share of the image width and
    height (``(0.5, 0.5)`` is the image centre) and the box width over the image width (EDA; NaN points ignored).
    Visits the faces in blocks of ``chunk``; ``points`` as in ``crop_coverage``."""
    w = np.asarray(widths, dtype=np.float64).reshape(-1)
    h = np.asarray(heights, dtype=np.float64).reshape(-1)
    _size_check(points, w, h)
    out = np.zeros((len(w), 3), np.float64)
    for s, p in point_blocks(points, chunk):
        e = s + len(p)
        lo, hi = geometry._nanmin(p, 1), geometry._nanmax(p, 1)
        out[s:e, 0] = (lo[:, 0] + hi[:, 0]) / 2 / w[s:e]
        out[s:e, 1] = (lo[:, 1] + hi[:, 1]) / 2 / h[s:e]
        out[s:e, 2] = (hi[:, 0] - lo[:, 0]) / w[s:e]
    return out


def shape_reference(points, iterations: int = 3, sample: int = SHAPE_SAMPLE, seed: int = 0) -> np.ndarray:
    """The reference shape of ``shape_residuals``: ``float64 [K, 2]``, centred, in normalised units.

    Generalised Procrustes with a robust mean on at most ``sample`` shapes (all of them when there are fewer, else a
    seeded sample, ``sample_rows``): the shapes are normalised (``normalize_shapes``: centred, RMS radius 1), the
    reference starts as their per-coordinate median and is replaced ``iterations`` times by the median of the shapes
    rotated onto it (least-squares rotation, no reflection), so the shapes' own rotations do not blur it.

    Args:
        points: ``[N, K, 2]`` landmarks (any pixels; NaN points ignored), as in ``crop_coverage``.
    """
    idx = sample_rows(len(points), sample, seed)
    q = geometry.normalize_shapes(np.asarray(points[idx], dtype=np.float64))
    m = geometry._nanmedian(q, 0)
    m = m - geometry._nanmean(m, 0)
    for _ in range(max(0, int(iterations))):
        m = geometry._nanmedian(_rotate_onto(q, m), 0)
        m = m - geometry._nanmean(m, 0)
    return m


def shape_residuals(points, per_point: bool = False, iterations: int = 3, reference=None,
                    chunk: int = POINT_CHUNK):
    """How far each labelled shape is from the reference shape, up to position, scale and rotation (EDA: labels
    that look wrong by shape, whatever the image shows).

    Each shape is normalised (``normalize_shapes``: centred, RMS radius 1) and rotated onto the reference
    (``shape_reference``, from at most ``SHAPE_SAMPLE`` seeded shapes unless given) by the least-squares rotation
    (2-D Procrustes, no reflection). The residual of a shape is the RMS distance of its rotated points to the
    reference's, in units of the shape's RMS radius; every shape's residual is computed, in blocks of ``chunk``. Flag
    outliers with ``noise.flag_outliers(residuals, threshold)``.

    Args:
        points: ``[N, K, 2]`` landmarks (any pixels; NaN points are ignored), as in ``crop_coverage``.
        per_point: also return the per-point distances (``float64 [N, K]``: pass a few shapes, with ``reference``).
        iterations: Procrustes refinements of the reference shape (when ``reference`` is None).
        reference: ``float [K, 2]`` from ``shape_reference``.
    Returns:
        ``float64 [N]`` residuals, or ``(residuals, float64 [N, K] per-point distances)`` with ``per_point``.
    """
    m = shape_reference(points, iterations) if reference is None else np.asarray(reference, dtype=np.float64)
    res = np.zeros(len(points), np.float64)
    dist = np.zeros((len(points), m.shape[0]), np.float64) if per_point else None
    for s, p in point_blocks(points, chunk):
        r = _rotate_onto(geometry.normalize_shapes(p), m)
        d = np.sqrt(((r - m[None]) ** 2).sum(-1))
        res[s:s + len(p)] = np.sqrt(geometry._nanmean(d ** 2, 1))
        if per_point:
            dist[s:s + len(p)] = d
    return (res, dist) if per_point else res


def _rotate_onto(q, m):
    """Rotate each centred shape of ``q [N, K, 2]`` by the angle that best maps it onto ``m [K, 2]`` (least
    squares: ``atan2(sum(q_x m_y - q_y m_x), sum(q_x m_x + q_y m_y))``; NaN points ignored)."""
    s = geometry._nansum(q[..., 0] * m[None, :, 1] - q[..., 1] * m[None, :, 0], 1)
    c = geometry._nansum(q[..., 0] * m[None, :, 0] + q[..., 1] * m[None, :, 1], 1)
    a = np.arctan2(s, c)
    ca, sa = np.cos(a)[:, None], np.sin(a)[:, None]
    return np.stack([ca * q[..., 0] - sa * q[..., 1], sa * q[..., 0] + ca * q[..., 1]], axis=-1)
