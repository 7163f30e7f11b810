"""The localizer's training augmentation: images re-framed (new aspect, face anywhere, a pasted second face)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core import geometry
from . import augment

REFRAME = 0.8  # share of training samples re-framed (the rest keep their letterbox framing)
SECOND_FACE = 0.3  # share of re-framed samples with a second face pasted in
ASPECT = (0.4, 2.5)  # frame width / height
FACE_SHARE = (0.2, 0.9)  # face extent / frame long side


def sample_frame(rng: np.random.Generator, cx: float, cy: float, extent: float, whole_pixels: bool = False):
    """A new frame around a face (the re-framing of training and of the robustness set): aspect ratio
    (width / height) log-uniform in ``ASPECT``, the face's extent a share ``FACE_SHARE`` of the long side (the frame
    grown where the face would not fit with a margin), the face box anywhere inside.

    Args:
        rng: the draws' generator. cx, cy, extent: the face box (``geometry.face_boxes``), any pixel units.
        whole_pixels: width and height rounded up and the corner down to whole pixels.
    Returns:
        ``(x0, y0, width, height)`` in the face box's units.
    """
    a = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
    long = extent / rng.uniform(*FACE_SHARE)
    w, h = (long, long / a) if a >= 1 else (long * a, long)
    grow = max(1.0, 1.15 * extent / min(w, h))
    w, h = w * grow, h * grow
    if whole_pixels:
        w, h = int(math.ceil(w)), int(math.ceil(h))
    lo_x, lo_y = cx + 0.575 * extent - w, cy + 0.575 * extent - h
    x0 = rng.uniform(lo_x, max(lo_x, cx - 0.575 * extent))
    y0 = rng.uniform(lo_y, max(lo_y, cy - 0.575 * extent))
    if whole_pixels:
        x0, y0 = int(math.floor(x0)), int(math.floor(y0))
    return x0, y0, w, h


def reframe_batch(images_u8: torch.Tensor, points: torch.Tensor, content: np.ndarray, size: int,
                  generator: torch.Generator, reframe: float = REFRAME, second_face: float = SECOND_FACE,
                  flip: bool = True, scale_jitter: float = 0.1):
    """Re-frame a batch of letterboxed training images (see the module docstring) and return their face boxes.

    Args:
        images_u8: ``uint8 [B, C, C, 3]`` letterboxed images (the localizer's crop cache).
        points: ``float32 [B, K, 2]`` landmarks in cache pixels (NaN = unknown).
        content: ``float64 [B, 4]`` the image's rectangle ``x0, y0, x1, y1`` inside each cache image (the rest is
            letterbox padding).
        size: the input side ``S``. generator: a CPU ``torch.Generator``; every draw comes from it.
    Returns:
        ``(images float32 [B, 3, S, S]`` in 0..255, ``boxes float32 [B, 2, 3]`` input pixels,
        ``present bool [B, 2]``): the labelled face first, the pasted one second.
    """
    b = images_u8.shape[0]
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    face = geometry.face_boxes(points.cpu().numpy())  # [B, 3] cache pixels
    fill = np.where(rng.random(b)[:, None] < 0.5, 0.0, rng.uniform(0, 255, (b, 3)))
    m, frame_rect = _frame_transforms(rng, face, content, size, reframe, flip, scale_jitter)
    src = images_u8.permute(0, 3, 1, 2).float()
    img = _warp_into_frames(src, content, m, frame_rect, fill, size)
    boxes = np.zeros((b, 2, 3))
    present = np.zeros((b, 2), bool)
    boxes[:, 0], present[:, 0] = _main_boxes(m, face)
    m2 = _place_second_faces(rng, face, frame_rect, boxes, present, size, second_face)
    if present[:, 1].any():
        _paste_second_faces(img, src, m2, boxes, present, size)
    return img, torch.from_numpy(boxes).float(), torch.from_numpy(present)


def _frame_transforms(rng: np.random.Generator, face: np.ndarray, content: np.ndarray, size: int, reframe: float,
                      flip: bool, scale_jitter: float):
    """Draw each image's frame (and its mirror flip) and the map from input to cache pixels.

    For each image in order: a new frame around the face (``sample_frame``) with probability ``reframe`` where the
    face box is finite and larger than a pixel, else the content rectangle scaled by ``1 ± scale_jitter``; then a
    horizontal flip with probability 1/2 (when ``flip``). The frame is fitted into the ``S x S`` input, centred.

    Args:
        rng: the draws' generator. face: ``float64 [B, 3]`` face boxes ``cx, cy, extent`` in cache pixels.
        content: ``float64 [B, 4]`` content rectangles ``x0, y0, x1, y1`` in cache pixels. size: the input side ``S``.
    Returns:
        ``(m, frame_rect)``: ``float64 [B, 3, 3]`` affine maps from input pixels to cache pixels
        (``augment.warp_images``' matrices); ``float64 [B, 4]`` each frame's rectangle ``x0, y0, x1, y1`` in input
        pixels.
    """
    b = len(face)
    m = np.zeros((b, 3, 3))
    m[:, 2, 2] = 1
    frame_rect = np.zeros((b, 4))
    for i in range(b):
        cx, cy, e = face[i]
        if rng.random() < reframe and np.isfinite(e) and e > 1:
            x0, y0, w, h = sample_frame(rng, cx, cy, e)
        else:
            x0, y0, x1, y1 = content[i]
            w, h = x1 - x0, y1 - y0
            z = 1 + rng.uniform(-scale_jitter, scale_jitter)
            x0, y0, w, h = x0 + w * (1 - z) / 2, y0 + h * (1 - z) / 2, w * z, h * z
        k = size / max(w, h)
        ox, oy = (size - w * k) / 2, (size - h * k) / 2
        fl = flip and rng.random() < 0.5
        d = -1.0 if fl else 1.0
        m[i, 0, 0], m[i, 0, 2] = d / k, ((size if fl else 0.0) - ox) / k + x0
        m[i, 1, 1], m[i, 1, 2] = 1 / k, -oy / k + y0
        frame_rect[i] = (ox, oy, ox + w * k, oy + h * k)
    return m, frame_rect


def _pixel_centres(size: int) -> torch.Tensor:
    """``float64 [S]``: the input pixels' centres ``0.5, 1.5, ..., S - 0.5``."""
    return torch.arange(size, dtype=torch.float64) + 0.5


def _warp_into_frames(src: torch.Tensor, content: np.ndarray, m: np.ndarray, frame_rect: np.ndarray,
                      fill: np.ndarray, size: int) -> torch.Tensor:
    """Warp the cache images into their frames: inside each frame, the image's own pixels where the frame covers
    them and the flat colour ``fill`` elsewhere (letterbox padding or outside the cache image); zero outside it.

    Args:
        src: ``float32 [B, 3, C, C]`` cache images, 0..255. content: ``float64 [B, 4]`` content rectangles in cache
            pixels. m: ``float64 [B, 3, 3]`` input-to-cache maps. frame_rect: ``float64 [B, 4]`` frames in input
            pixels. fill: ``float64 [B, 3]`` RGB fill colours, 0..255. size: the input side ``S``.
    Returns:
        ``float32 [B, 3, S, S]`` images, 0..255, on ``src``'s device.
    """
    b, c = src.shape[0], src.shape[2]
    ones = torch.zeros(b, 1, c, c)
    for i in range(b):  # the image's own pixels, as opposed to letterbox padding
        x0, y0, x1, y1 = content[i]
        ones[i, 0, max(0, int(math.floor(y0))): int(math.ceil(y1)), max(0, int(math.floor(x0))): int(math.ceil(x1))] = 1
    warped = augment.warp_images(torch.cat([src, ones.to(src.device)], 1), torch.from_numpy(m), size)
    img, inside = warped[:, :3], warped[:, 3:].clamp(0, 1)
    u = _pixel_centres(size)
    fr = torch.from_numpy(frame_rect)
    in_frame = ((u[None, None, :] >= fr[:, 0, None, None]) & (u[None, None, :] < fr[:, 2, None, None])
                & (u[None, :, None] >= fr[:, 1, None, None]) & (u[None, :, None] < fr[:, 3, None, None]))
    in_frame = in_frame[:, None].to(img.dtype).to(img.device)
    fill_t = torch.from_numpy(fill).to(img.dtype).to(img.device)[:, :, None, None]
    return img * inside + fill_t * (in_frame - inside).clamp_min(0)


def _main_boxes(m: np.ndarray, face: np.ndarray):
    """The labelled faces' boxes in input pixels.

    Args:
        m: ``float64 [B, 3, 3]`` input-to-cache maps. face: ``float64 [B, 3]`` face boxes ``cx, cy, extent`` in
            cache pixels (NaN where no point is known).
    Returns:
        ``(boxes, present)``: ``float64 [B, 3]`` ``cx, cy, extent`` in input pixels; ``bool [B]``, finite and over
        a pixel.
    """
    inv = np.linalg.inv(m)
    main = np.stack([inv[:, 0, 0] * face[:, 0] + inv[:, 0, 2], inv[:, 1, 1] * face[:, 1] + inv[:, 1, 2],
                     face[:, 2] * np.abs(inv[:, 0, 0])], 1)
    return main, np.isfinite(main).all(1) & (main[:, 2] > 1)


def _place_second_faces(rng: np.random.Generator, face: np.ndarray, frame_rect: np.ndarray, boxes: np.ndarray,
                        present: np.ndarray, size: int, second_face: float) -> np.ndarray:
    """Choose where a second face goes: image ``i`` (with a labelled face, with probability ``second_face``) gets
    the next image's face (``(i + 1) % B``, finite), smaller (0.35-0.8 of the first's extent), further from the
    centre and not overlapping the first, at the first of 10 drawn spots that qualifies (none: no second face).

    Args:
        rng: the draws' generator. face: ``float64 [B, 3]`` face boxes in cache pixels. frame_rect: ``float64
            [B, 4]`` frames in input pixels. boxes: ``float64 [B, 2, 3]`` input-pixel boxes, ``[:, 0]`` filled; the
            second faces' boxes are written to ``[:, 1]``. present: ``bool [B, 2]``, ``[:, 0]`` filled; ``[:, 1]``
            is set where a second face is placed. size: the input side ``S``.
    Returns:
        ``float64 [B, 3, 3]``: for each placed face, the map from input pixels to the donor's cache pixels.
    """
    b = len(face)
    main = boxes[:, 0]
    m2 = np.zeros((b, 3, 3))
    m2[:, 2, 2] = 1
    for i in range(b):
        j = (i + 1) % b
        if b < 2 or not present[i, 0] or rng.random() >= second_face or not np.isfinite(face[j]).all():
            continue
        e2 = main[i, 2] * rng.uniform(0.35, 0.8)
        spot = _second_face_spot(rng, main[i], e2, frame_rect[i], size)
        if spot is not None:
            px, py = spot
            s = face[j, 2] / e2
            m2[i, 0, 0], m2[i, 0, 2] = s, face[j, 0] - s * px
            m2[i, 1, 1], m2[i, 1, 2] = s, face[j, 1] - s * py
            boxes[i, 1] = (px, py, e2)
            present[i, 1] = True
    return m2


def _second_face_spot(rng: np.random.Generator, main: np.ndarray, e2: float, frame: np.ndarray, size: int):
    """Draw up to 10 centres for a second face of extent ``e2`` inside ``frame`` (``x0, y0, x1, y1``, input pixels)
    and return the first ``(px, py)`` further from the input's centre than the labelled face ``main`` (``cx, cy,
    extent``) and apart from it; ``None`` when none qualifies or the frame is too small (under ``1.2 e2``)."""
    fx0, fy0, fx1, fy1 = frame
    for _ in range(10):
        px, py = rng.uniform(fx0 + 0.6 * e2, fx1 - 0.6 * e2), rng.uniform(fy0 + 0.6 * e2, fy1 - 0.6 * e2)
        if not (np.isfinite(px) and np.isfinite(py)) or fx1 - fx0 < 1.2 * e2 or fy1 - fy0 < 1.2 * e2:
            return None
        far = math.hypot(px - size / 2, py - size / 2) > math.hypot(main[0] - size / 2, main[1] - size / 2)
        apart = max(abs(px - main[0]), abs(py - main[1])) > 0.6 * (main[2] + e2)
        if far and apart:
            return px, py
    return None


def _paste_second_faces(img: torch.Tensor, src: torch.Tensor, m2: np.ndarray, boxes: np.ndarray,
                        present: np.ndarray, size: int) -> None:
    """Blend the placed second faces into ``img`` (``float32 [B, 3, S, S]``, in place): each donor (the next cache
    image in ``src``, ``float32 [B, 3, C, C]``) warped by ``m2`` (``float64 [B, 3, 3]``) and mixed in under a soft
    ellipse (0.6 by 0.7 of the extent, in input pixels) around its box ``boxes[:, 1]`` where ``present[:, 1]``."""
    b = len(present)
    sel = np.nonzero(present[:, 1])[0]
    donor = src[torch.from_numpy((sel + 1) % b)]
    pasted = augment.warp_images(donor, torch.from_numpy(m2[sel]), size)
    u = _pixel_centres(size)
    bx = torch.from_numpy(boxes[sel, 1])
    dx = (u[None, None, :] - bx[:, 0, None, None]) / (0.6 * bx[:, 2, None, None])
    dy = (u[None, :, None] - bx[:, 1, None, None]) / (0.7 * bx[:, 2, None, None])
    alpha = ((1 - dx ** 2 - dy ** 2) * 4).clamp(0, 1)[:, None].to(img.dtype).to(img.device)
    idx = torch.from_numpy(sel).to(img.device)
    img[idx] = img[idx] * (1 - alpha) + pasted * alpha


def content_rects(frames: np.ndarray, pad: int = 0) -> np.ndarray:
    """``float64 [N, 4]`` ``x0, y0, x1, y1``: where each image lies inside its letterbox crop (``frames``:
    ``float64 [N, 4]`` letterbox ``CropFrame`` rows, whose box is the square of side ``max(W, H)`` centred on the
    image, so ``W = side + 2 x0``), shifted by the cache border ``pad``."""
    f = np.asarray(frames, np.float64)
    k = f[:, 3] / f[:, 2]
    return np.stack([-f[:, 0] * k, -f[:, 1] * k, (f[:, 2] + f[:, 0]) * k, (f[:, 2] + f[:, 1]) * k], 1) + pad
