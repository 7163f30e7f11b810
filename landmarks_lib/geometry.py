"""Crop geometry: square boxes in original-image pixels, their maps to crop pixels and back.

All coordinates follow the package convention (see ``landmarks_lib.__init__``): continuous pixels, pixel ``i``
spans ``[i, i + 1)``. A crop is the square box ``[x0, x0 + side) x [y0, y0 + side)`` of the original image
resampled to ``size x size`` pixels, so

    crop = (original - (x0, y0)) * size / side          original = crop * side / size + (x0, y0)

The box may extend past the image (letterbox crops do); pixels outside the image are zero (black).

Crop modes (parameter ``crop_mode``):

- ``center``: the course baseline: scale the shorter side to ``size`` and take the centre square.
- ``letterbox``: scale the longer side to ``size`` and pad, so the whole image is kept.
- ``face``: a square around the face, placed from landmarks: from the ground truth when training and from the
  localizer's prediction at inference (``landmarks_lib.predict``). Its side is ``face_scale`` times the longer side of the
  landmarks' bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .io import POINT_CHUNK, point_blocks


# NaN-aware reductions with numpy's plain ones where the array holds no NaN (labels usually have none): the same
# values (tested), without the nan-functions' masked copies (``nanmean``, ``nansum``) and checks: up to 3x faster on
# blocks of faces.
def _has_nan(a: np.ndarray) -> bool:
    return bool(np.isnan(a).any())


def _nanmin(a, axis):
    return np.nanmin(a, axis=axis) if _has_nan(a) else a.min(axis=axis)


def _nanmax(a, axis):
    return np.nanmax(a, axis=axis) if _has_nan(a) else a.max(axis=axis)


def _nanmean(a, axis, keepdims: bool = False):
    return np.nanmean(a, axis=axis, keepdims=keepdims) if _has_nan(a) else a.mean(axis=axis, keepdims=keepdims)


def _nansum(a, axis):
    return np.nansum(a, axis=axis) if _has_nan(a) else a.sum(axis=axis)


def _nanmedian(a, axis):
    return np.nanmedian(a, axis=axis) if _has_nan(a) else np.median(a, axis=axis)

CROP_MODES = ("center", "letterbox", "face")


@dataclass(frozen=True)
class CropFrame:
    """The map between an original image and a square crop of it.

    Attributes:
        x0, y0: top-left corner of the box in original pixels (continuous convention); may be negative.
        side: side of the box in original pixels (> 0).
        size: side of the crop in crop pixels (> 0).
    """

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        """Crop pixels per original pixel."""
        return self.size / self.side

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Map points ``[..., 2]`` (x, y) from original pixels to crop pixels; float64 in, float64 out."""
        p = np.asarray(points, dtype=np.float64)
        return (p - np.array([self.x0, self.y0])) * self.scale

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map points ``[..., 2]`` (x, y) from crop pixels back to original pixels (exact inverse of ``to_crop``)."""
        p = np.asarray(points, dtype=np.float64)
        return p / self.scale + np.array([self.x0, self.y0])

    def expand(self, margin: float) -> "CropFrame":
        """The same centre with ``margin * side`` added on every side, at ``size + 2 * round(margin * size)`` pixels.

        The extra pixels are a whole number on each side, so the original crop sits at an integer offset inside.
        """
        pad = int(round(margin * self.size))
        side = self.side * (self.size + 2 * pad) / self.size
        d = self.side * pad / self.size
        return CropFrame(self.x0 - d, self.y0 - d, side, self.size + 2 * pad)

    def as_array(self) -> np.ndarray:
        """``float64 [4]``: ``(x0, y0, side, size)``."""
        return np.array([self.x0, self.y0, self.side, self.size], dtype=np.float64)

    @staticmethod
    def from_array(a) -> "CropFrame":
        """Inverse of ``as_array``."""
        return CropFrame(float(a[0]), float(a[1]), float(a[2]), int(round(float(a[3]))))


def frames_to_original(crop_points: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Vectorised ``CropFrame.to_original``.

    Args:
        crop_points: ``[N, K, 2]`` crop pixels.
        frames: ``float64 [N, 4]`` rows of ``CropFrame.as_array``.
    Returns:
        ``float64 [N, K, 2]`` original pixels.
    """
    f = np.asarray(frames, dtype=np.float64)
    scale = (f[:, 3] / f[:, 2])[:, None, None]
    return np.asarray(crop_points, dtype=np.float64) / scale + f[:, None, 0:2]


def frames_to_crop(points: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Vectorised ``CropFrame.to_crop``: ``[N, K, 2]`` original pixels -> ``float64 [N, K, 2]`` crop pixels."""
    f = np.asarray(frames, dtype=np.float64)
    scale = (f[:, 3] / f[:, 2])[:, None, None]
    return (np.asarray(points, dtype=np.float64) - f[:, None, 0:2]) * scale


def face_boxes(points: np.ndarray) -> np.ndarray:
    """Face boxes ``(cx, cy, extent)`` of landmarks: the centre of each shape's bounding box and its longer side,
    the box that ``face_frame`` scales by ``face_scale`` (NaN coordinates are ignored).

    Args:
        points: ``float [N, K, 2]``, any pixel units.
    Returns:
        ``float64 [N, 3]`` in the same units.
    """
    p = np.asarray(points, np.float64)
    lo, hi = _nanmin(p, 1), _nanmax(p, 1)
    return np.concatenate([(lo + hi) / 2, (hi - lo).max(1, keepdims=True)], 1)


def box_frames(boxes: np.ndarray, size: int, face_scale: float) -> np.ndarray:
    """``float64 [N, 4]`` ``CropFrame`` rows of the face crops around ``boxes`` (``float [N, 3]`` ``face_boxes``
    rows, original pixels): the square of side ``face_scale * extent`` (at least 1 px) on the box centre, as
    ``face_frame`` places it around landmarks."""
    b = np.asarray(boxes, np.float64)
    side = np.maximum(b[:, 2] * face_scale, 1.0)
    return np.stack([b[:, 0] - side / 2, b[:, 1] - side / 2, side, np.full(len(b), float(size))], 1)


def boxes_to_original(boxes: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``float [N, 3]`` face boxes in crop pixels of ``frames`` (``float64 [N, 4]``, ``CropFrame`` rows) ->
    ``float64 [N, 3]`` original pixels (``frames_to_original`` for the centre, the extent scaled)."""
    f = np.asarray(frames, np.float64)
    k = f[:, 2] / f[:, 3]  # original pixels per crop pixel
    b = np.asarray(boxes, np.float64)
    return np.stack([b[:, 0] * k + f[:, 0], b[:, 1] * k + f[:, 1], b[:, 2] * k], 1)


def center_frame(width: int, height: int, size: int) -> CropFrame:
    """Course-baseline crop: the centre square of side ``min(width, height)`` scaled to ``size``."""
    side = float(min(width, height))
    return CropFrame((width - side) / 2.0, (height - side) / 2.0, side, int(size))


def letterbox_frame(width: int, height: int, size: int) -> CropFrame:
    """The whole image: the square of side ``max(width, height)`` centred on it, scaled to ``size`` (padded)."""
    side = float(max(width, height))
    return CropFrame((width - side) / 2.0, (height - side) / 2.0, side, int(size))


def face_frame(points: np.ndarray, size: int, face_scale: float = 1.25) -> CropFrame:
    """A square around landmarks: centred on their bounding box, side ``face_scale`` times its longer side.

    Args:
        points: ``[K, 2]`` original pixels; NaN rows are ignored.
        size: crop side in pixels.
        face_scale: box side over the landmarks' bounding-box longer side.
    Raises:
        ValueError: if no point is finite.
    """
    p = np.asarray(points, dtype=np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        raise ValueError("face_frame: no finite landmarks to place the crop")
    lo, hi = p.min(axis=0), p.max(axis=0)
    side = max(float((hi - lo).max()) * face_scale, 1.0)
    cx, cy = (lo + hi) / 2.0
    return CropFrame(cx - side / 2.0, cy - side / 2.0, side, int(size))


def make_frame(mode: str, width: int, height: int, size: int, points=None, face_scale: float = 1.25) -> CropFrame:
    """Dispatch on ``crop_mode`` (``center``, ``letterbox``, ``face``); ``face`` needs ``points [K, 2]``.

    Raises:
        ValueError: unknown mode, or ``face`` without points.
    """
    if mode == "center":
        return center_frame(width, height, size)
    if mode == "letterbox":
        return letterbox_frame(width, height, size)
    if mode == "face":
        if points is None:
            raise ValueError("crop_mode 'face' needs landmarks (ground truth or the localizer's prediction)")
        return face_frame(points, size, face_scale)
    raise ValueError(f"unknown crop_mode {mode!r}; expected one of {CROP_MODES}")


def crop_image(image: np.ndarray, frame: CropFrame) -> np.ndarray:
    """Resample the box of ``frame`` from ``image`` into a ``size x size`` crop.

    Uses PIL's ``resize(box=...)`` (bilinear, antialiased when shrinking), whose box is in the same continuous pixel
    convention as ours. Pixels outside the image are black.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        frame: the crop.
    Returns:
        ``uint8 [size, size, 3]``.
    """
    h, w = image.shape[:2]
    x1, y1 = frame.x0 + frame.side, frame.y0 + frame.side
    # Pad so that the box and its resampling filter's support (about one source pixel per output pixel, each side)
    # lie inside the (padded) image: PIL refuses boxes that leave the image and renormalises its filter at image
    # edges, which would make a crop depend on how far the image extends beyond the box.
    support = int(np.ceil(2.0 * frame.side / frame.size)) + 2
    pl = int(np.ceil(max(0.0, -frame.x0))) + support
    pt = int(np.ceil(max(0.0, -frame.y0))) + support
    pr = int(np.ceil(max(0.0, x1 - w))) + support
    pb = int(np.ceil(max(0.0, y1 - h))) + support
    padded = np.zeros((h + pt + pb, w + pl + pr, 3), dtype=np.uint8)
    padded[pt:pt + h, pl:pl + w] = image
    box = (frame.x0 + pl, frame.y0 + pt, x1 + pl, y1 + pt)
    out = Image.fromarray(padded).resize((frame.size, frame.size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- affine matrices
def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a ``[3, 3]`` (or ``[2, 3]``) affine map to points ``[..., 2]``; float64 out."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:2, :2].T + m[:2, 2]


# ----------------------------------------------------------------------------------------- mirror permutation
def normalize_shapes(points: np.ndarray) -> np.ndarray:
    """Remove translation and scale: each shape ``[K, 2]`` of ``[N, K, 2]`` centred on its mean, divided by its RMS
    distance to it. NaN points are ignored in the statistics and stay NaN. Returns ``float64 [N, K, 2]``."""
    p = np.asarray(points, dtype=np.float64)
    c = _nanmean(p, 1, keepdims=True)
    q = p - c
    s = np.sqrt(_nanmean((q ** 2).sum(-1), 1))[:, None, None]
    return q / np.maximum(s, 1e-12)


def mean_shape(points: np.ndarray) -> np.ndarray:
    """Robust mean of normalised shapes (``normalize_shapes``): the per-coordinate median, ``float64 [K, 2]``."""
    return _nanmedian(normalize_shapes(points), 0)


def _pair_greedy(cost: np.ndarray) -> np.ndarray:
    """Involutive matching: pairs ``{i, j}`` (``i == j`` allowed) taken greedily by ascending symmetric cost."""
    k = len(cost)
    iu = np.triu_indices(k)
    order = np.argsort(cost[iu], kind="stable")
    perm = -np.ones(k, dtype=np.int64)
    left = k
    for idx in order:
        i, j = iu[0][idx], iu[1][idx]
        if perm[i] < 0 and perm[j] < 0:
            perm[i], perm[j] = j, i
            left -= 1 if i == j else 2
            if left == 0:
                break
    return perm


def _fit_reflection(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares reflection (orthogonal, det -1) plus translation mapping ``src`` onto ``dst``; ``[3, 3]``.

    Kabsch/Umeyama alignment (Umeyama, IEEE TPAMI 1991) with the determinant forced to -1."""
    ms, md = src.mean(0), dst.mean(0)
    h = (src - ms).T @ (dst - md)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    a = vt.T @ np.diag([1.0, -d]) @ u.T  # det = -1
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = md - a @ ms
    return m


MIRROR_TOLERANCE = 0.1


def estimate_mirror_permutation(points: np.ndarray, iterations: int = 8, max_tilt_deg: float = 45.0,
                                step_deg: float = 0.1) -> np.ndarray:
    """Estimate which point mirrors which from training landmarks, for horizontal-flip augmentation and TTA.

    Recipe: take the mean normalised shape (``mean_shape``), centred. (1) Find its mirror line: for lines through
    the centre tilted by up to ``max_tilt_deg`` from the vertical (every degree, then every ``step_deg`` around the
    best), mirror the shape and take the median distance from each mirrored point to its nearest shape point; the
    line with the smallest median is the symmetry axis (a symmetric layout lands on itself there, and unpaired
    points cannot move a median). (2) Pair each point with the mirrored point
    nearest to it, greedily by the symmetric cost ``(|m(p_i) - p_j| + |m(p_j) - p_i|) / 2`` in ascending order, so
    that the result is an involution by construction (midline points pair with themselves). (3) Refit the mirror as
    the least-squares reflection mapping the shape onto its permuted self, trimmed to the well-matched pairs
    (``mirror_residuals``), and pair again, up to ``iterations`` times.

    Args:
        points: ``[N, K, 2]`` landmarks of many images (any pixels; NaN allowed).
    Returns:
        ``int64 [K]`` permutation ``perm`` with ``perm[perm] == arange(K)``: after flipping an image, point ``i`` of the
        flipped face is point ``perm[i]`` of the original, flipped.
    """
    ms = mean_shape(points)
    ms = ms - ms.mean(axis=0)
    ms32 = ms.astype(np.float32)

    def line(t):  # reflection about the line through the centre along the vertical tilted by t
        u = np.array([np.sin(t), np.cos(t)])
        return 2 * np.outer(u, u) - np.eye(2)

    def cost(t):  # median distance from a mirrored point to its nearest shape point (robust to unpaired points)
        m = ms32 @ line(t).astype(np.float32).T
        return float(np.median(np.sqrt(((m[:, None, :] - ms32[None, :, :]) ** 2).sum(-1)).min(1)))

    coarse = np.deg2rad(np.arange(-max_tilt_deg, max_tilt_deg + 1e-9, 1.0))
    t0 = coarse[int(np.argmin([cost(t) for t in coarse]))]
    fine = t0 + np.deg2rad(np.arange(-1.0, 1.0 + 1e-9, step_deg))
    best = line(fine[int(np.argmin([cost(t) for t in fine]))])
    refl = np.eye(3)
    refl[:2, :2] = best
    perm = None
    for _ in range(max(1, iterations)):
        mirrored = apply_affine(refl, ms)
        d = np.sqrt(((mirrored[:, None, :] - ms[None, :, :]) ** 2).sum(-1))
        new = _pair_greedy((d + d.T) / 2.0)
        if perm is not None and np.array_equal(new, perm):
            break
        perm = new
        refl = _trimmed_reflection(ms, perm)[0]
    return perm


def _trimmed_reflection(ms: np.ndarray, perm: np.ndarray, trim: float = None, iterations: int = 5):
    """``(reflection [3, 3], residuals [K])``: ``_fit_reflection`` of ``ms`` onto ``ms[perm]`` refitted up to
    ``iterations`` times on the pairs whose residual is at most ``max(trim, 3 x median residual)`` (a loose first
    cut while outliers still tilt the fit), so unpaired points neither tilt it nor hide among the paired ones."""
    trim = MIRROR_TOLERANCE if trim is None else trim
    keep = np.ones(len(ms), bool)
    refl, res = np.eye(3), np.zeros(len(ms))
    for _ in range(max(1, iterations)):
        refl = _fit_reflection(ms[keep], ms[perm][keep])
        res = np.sqrt(((apply_affine(refl, ms) - ms[perm]) ** 2).sum(-1))
        new = res <= max(trim, 3.0 * float(np.median(res)))
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
    return refl, res


def mirror_residuals(points: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Per point, how far the best-fitting reflection of the mean shape lands from the point ``perm`` pairs it with,
    in units of the shape's RMS radius: ``float64 [K]``, about 0.01 for a symmetric layout's points. Large values
    mark points without a mirror partner in the layout (a dense mesh need not be symmetric) or wrong pairs. The
    reflection is a trimmed least-squares fit (``_trimmed_reflection``)."""
    return _trimmed_reflection(mean_shape(points), perm)[1]


def mirror_unmatched(points: np.ndarray, perm: np.ndarray, tolerance: float = MIRROR_TOLERANCE) -> np.ndarray:
    """``int64`` indices of the points whose mirror residual (``mirror_residuals``) exceeds ``tolerance`` (default
    10 % of the face's RMS radius, a few pixels on a typical face): after a horizontal flip their position is
    unknown. Training masks them out of the loss on flipped samples and flip TTA keeps their unflipped prediction.
    The set is closed under ``perm`` (a point and its partner are dropped together)."""
    bad = mirror_residuals(points, perm) > tolerance
    bad |= bad[perm]
    return np.flatnonzero(bad).astype(np.int64)


def mirror_error(points: np.ndarray, perm: np.ndarray) -> float:
    """How well ``perm`` maps the mean shape onto its mirror image: RMS distance between the best-fitting reflection
    of the mean shape and the permuted one, in units of the shape's RMS radius (0 for a perfectly symmetric
    layout)."""
    return float(np.sqrt((mirror_residuals(points, perm) ** 2).mean()))


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
        return box_frames(_finite_face_boxes(p, ok), size, face_scale)
    raise ValueError(f"unknown crop_mode {mode!r}; expected one of {CROP_MODES}")


def _finite_face_boxes(p: np.ndarray, ok: np.ndarray, strict: bool = True) -> np.ndarray:
    """``face_boxes`` of ``p [N, K, 2]`` from its points whose both coordinates are finite (``ok [N, K]``).

    Raises:
        ValueError: with ``strict``, a face without a finite point (no crop can be placed; else its box is NaN).
    """
    if ok.all():
        return face_boxes(p)
    if strict and not ok.any(axis=1).all():
        raise ValueError(f"face_frame: no finite landmarks to place the crop of image "
                         f"{int(np.flatnonzero(~ok.any(axis=1))[0])}")
    return face_boxes(np.where(ok[..., None], p, np.nan))


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
        points: ``[N, K, 2]`` landmarks, original pixels (NaN allowed): an array, a memmap or an ``io.PointsView``.
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
    modes = list(modes or CROP_MODES)
    for mode in modes:
        if mode not in CROP_MODES:
            raise ValueError(f"unknown crop_mode {mode!r}; expected one of {CROP_MODES}")
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
                f = box_frames(boxes, crop_size, face_scale)
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
        lo, hi = _nanmin(p, 1), _nanmax(p, 1)
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
    q = normalize_shapes(np.asarray(points[idx], dtype=np.float64))
    m = _nanmedian(q, 0)
    m = m - _nanmean(m, 0)
    for _ in range(max(0, int(iterations))):
        m = _nanmedian(_rotate_onto(q, m), 0)
        m = m - _nanmean(m, 0)
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
        r = _rotate_onto(normalize_shapes(p), m)
        d = np.sqrt(((r - m[None]) ** 2).sum(-1))
        res[s:s + len(p)] = np.sqrt(_nanmean(d ** 2, 1))
        if per_point:
            dist[s:s + len(p)] = d
    return (res, dist) if per_point else res


def _rotate_onto(q, m):
    """Rotate each centred shape of ``q [N, K, 2]`` by the angle that best maps it onto ``m [K, 2]`` (least
    squares: ``atan2(sum(q_x m_y - q_y m_x), sum(q_x m_x + q_y m_y))``; NaN points ignored)."""
    s = _nansum(q[..., 0] * m[None, :, 1] - q[..., 1] * m[None, :, 0], 1)
    c = _nansum(q[..., 0] * m[None, :, 0] + q[..., 1] * m[None, :, 1], 1)
    a = np.arctan2(s, c)
    ca, sa = np.cos(a)[:, None], np.sin(a)[:, None]
    return np.stack([ca * q[..., 0] - sa * q[..., 1], sa * q[..., 0] + ca * q[..., 1]], axis=-1)
