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
  localizer's prediction at inference (``landmarks_lib.predict``). Its side is ``face_scale`` times the longer side of
  the
  landmarks' bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


# NaN-aware reductions with numpy's plain ones where the array holds no NaN (labels usually have none): the same
# values (tested), without the nan-functions' masked copies and checks.
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

    def expand(self, margin: float) -> CropFrame:
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
    def from_array(a) -> CropFrame:
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


def boxes_to_crop(boxes: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``float [N, 3]`` face boxes ``(cx, cy, extent)`` in original pixels -> ``float64 [N, 3]`` crop pixels of
    ``frames`` (``float64 [N, 4]``): the inverse of ``boxes_to_original``."""
    f = np.asarray(frames, np.float64)
    k = f[:, 2] / f[:, 3]
    b = np.asarray(boxes, np.float64)
    return np.stack([(b[:, 0] - f[:, 0]) / k, (b[:, 1] - f[:, 1]) / k, b[:, 2] / k], 1)


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
