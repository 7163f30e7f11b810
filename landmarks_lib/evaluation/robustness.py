"""The robustness set: each validation image re-framed the way users' photos differ from the training images.

The validation split is drawn from the training distribution, so it cannot show what happens to a frame that is much
wider or taller than any training image, a face far off-centre or small, or two faces in one frame. The robustness
set makes one re-framed copy of each validation image (at most ``MAX_IMAGES``, chosen and drawn with ``SEED``):

- a frame of aspect ratio (width / height) drawn log-uniformly from ``ASPECT``, around the face, which may sit
  anywhere in it and take from ``FACE_SHARE`` of its long side (down to a fifth); where the frame leaves the image it
  is padded (a flat colour, or the image's edge pixels repeated), where it is smaller the image is cropped;
- in a share ``SECOND_FACE`` of them, the face of another validation image pasted beside it: smaller (0.35-0.8x),
  further from the centre and not overlapping.

The labelled face keeps its pixels one to one (the frame is an integer shift of the image), so errors are in the
original image's pixels, as the plain validation MSE. ``evaluate`` predicts the set and scores it: ``robust_mse``,
``robust_nme`` and ``robust_off_face``, the images whose final face crop holds under 90 % of the labelled points or
whose side is outside 0.7-1.5x the labelled face's (``face_frame`` of the labels).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..core import geometry
from ..core.images import load_image
from ..data.reframing import SECOND_FACE, sample_frame
from . import metrics

MAX_IMAGES = 2000
SEED = 0
SECOND_SCALE = (0.35, 0.8)
OFF_FACE_POINTS = 0.9  # an off-face crop holds fewer of the labelled points than this share
OFF_FACE_SIDE = (0.7, 1.5)  # ... or has a side outside this range of the labelled face's


@dataclass(frozen=True)
class Reframe:
    """How one image is re-framed: the frame ``(x0, y0, width, height)`` in the image's integer pixels, the pad
    (``fill`` RGB, or ``None`` for edge pixels), and the pasted face: ``donor`` (position in the set, -1 = none), its
    centre ``(px, py)`` in frame pixels and extent ``extent`` (the longer side of its landmarks' box)."""

    x0: int
    y0: int
    width: int
    height: int
    fill: tuple | None
    donor: int = -1
    px: float = 0.0
    py: float = 0.0
    extent: float = 0.0


def draw(points: np.ndarray, seed: int = SEED) -> list:
    """The re-framing of each image (one ``Reframe`` per row of ``points``, ``float [N, K, 2]`` original pixels),
    seeded: the same labels give the same set."""
    rng = np.random.default_rng(seed)
    out = []
    n = len(points)
    for i, (cx, cy, e) in enumerate(geometry.face_boxes(points).tolist()):
        e = max(e, 2.0)
        x0, y0, w, h = sample_frame(rng, cx, cy, e, whole_pixels=True)
        fill = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(0, 256, 3))
        r = Reframe(x0, y0, w, h, fill)
        if n > 1 and rng.random() < SECOND_FACE:
            j = int(rng.integers(0, n - 1))
            j += j >= i
            e2 = e * rng.uniform(*SECOND_SCALE)
            mx, my = cx - x0, cy - y0
            for _ in range(20):
                px, py = rng.uniform(0.6 * e2, w - 0.6 * e2), rng.uniform(0.6 * e2, h - 0.6 * e2)
                far = math.hypot(px - w / 2, py - h / 2) > math.hypot(mx - w / 2, my - h / 2)
                apart = max(abs(px - mx), abs(py - my)) > 0.6 * (e + e2)
                if w > 1.2 * e2 and h > 1.2 * e2 and far and apart:
                    r = Reframe(x0, y0, w, h, fill, j, float(px), float(py), float(e2))
                    break
        out.append(r)
    return out


def _frame(image: np.ndarray, r: Reframe) -> np.ndarray:
    h, w = image.shape[:2]
    pl, pt = max(0, -r.x0), max(0, -r.y0)
    pr, pb = max(0, r.x0 + r.width - w), max(0, r.y0 + r.height - h)
    if r.fill is None:
        big = np.pad(image, ((pt, pb), (pl, pr), (0, 0)), mode="edge")
    else:
        big = np.empty((h + pt + pb, w + pl + pr, 3), np.uint8)
        big[:] = np.asarray(r.fill, np.uint8)
        big[pt: pt + h, pl: pl + w] = image
    return np.ascontiguousarray(big[r.y0 + pt: r.y0 + pt + r.height, r.x0 + pl: r.x0 + pl + r.width])


def render(image: np.ndarray, points: np.ndarray, r: Reframe, donor_image=None, donor_points=None):
    """One re-framed image and its labels.

    Args:
        image: ``uint8 [H, W, 3]``; points: ``float [K, 2]`` its landmarks, original pixels.
        r: ``Reframe``; donor_image / donor_points: the pasted face's image and landmarks (``r.donor >= 0``).
    Returns:
        ``(uint8 [height, width, 3], float32 [K, 2])``: the frame and the landmarks in its pixels.
    """
    out = _frame(image, r)
    if r.donor >= 0 and donor_image is not None:
        dcx, dcy, de = geometry.face_boxes(np.asarray(donor_points)[None])[0]
        side = 1.4 * de  # the donor's face with some context, scaled so that its extent becomes r.extent
        patch = geometry.crop_image(donor_image, geometry.CropFrame(dcx - side / 2, dcy - side / 2, side,
                                                                    max(2, int(round(1.4 * r.extent)))))
        n = patch.shape[0]
        x0, y0 = int(round(r.px - n / 2)), int(round(r.py - n / 2))
        u = (np.arange(n) + 0.5 - n / 2) / (n / 2)
        alpha = np.clip((1 - (u[None, :] / 0.86) ** 2 - (u[:, None] / 1.0) ** 2) * 4, 0, 1)[..., None]
        ys, xs = slice(max(0, y0), min(r.height, y0 + n)), slice(max(0, x0), min(r.width, x0 + n))
        py, px = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
        region = out[ys, xs].astype(np.float32)
        out[ys, xs] = np.round(region * (1 - alpha[py, px]) + patch[py, px] * alpha[py, px]).astype(np.uint8)
    pts = (np.asarray(points, np.float64) - [r.x0, r.y0]).astype(np.float32)
    return out, pts


class RobustnessSet:
    """The robustness set of a list of labelled images, rendered one at a time (bounded memory).

    Args:
        image_dir: the images' folder. names: their file names. points: ``float [N, K, 2]`` original pixels.
        max_images: at most this many (a seeded choice, kept in the given order). seed: the draws' seed.
    """

    def __init__(self, image_dir, names, points, max_images: int = MAX_IMAGES, seed: int = SEED):
        keep = np.arange(len(names))
        if len(keep) > max_images:
            keep = np.sort(np.random.default_rng(seed).choice(keep, max_images, replace=False))
        self.image_dir = os.fspath(image_dir)
        self.names = [names[i] for i in keep]
        self.source_points = np.asarray(points, np.float32)[keep]
        self.reframes = draw(self.source_points, seed)

    def __len__(self) -> int:
        return len(self.names)

    def item(self, i: int):
        """``(uint8 [h, w, 3] image, float32 [K, 2] landmarks)`` of the ``i``-th re-framed image."""
        r = self.reframes[i]
        img = load_image(os.path.join(self.image_dir, self.names[i]))
        donor = donor_pts = None
        if r.donor >= 0:
            donor = load_image(os.path.join(self.image_dir, self.names[r.donor]))
            donor_pts = self.source_points[r.donor]
        return render(img, self.source_points[i], r, donor, donor_pts)

    def points(self) -> np.ndarray:
        """``float32 [N, K, 2]`` every re-framed image's landmarks (frame pixels)."""
        return np.stack([(self.source_points[i] - [r.x0, r.y0]).astype(np.float32)
                         for i, r in enumerate(self.reframes)]) if len(self) else self.source_points

    def images(self):
        """The re-framed images, one ``uint8 [h, w, 3]`` at a time."""
        for i in range(len(self)):
            yield self.item(i)[0]


def off_face(boxes: np.ndarray, truth: np.ndarray, face_scale: float) -> np.ndarray:
    """``bool [N]``: the final crops (``float [N, 4]`` ``x0, y0, x1, y1``) that hold under ``OFF_FACE_POINTS`` of the
    labelled points (``float [N, K, 2]``) or whose side is outside ``OFF_FACE_SIDE`` times the labelled face's
    (``geometry.face_frame`` of the labels at ``face_scale``)."""
    b = np.asarray(boxes, np.float64)[:, None, :]
    t = np.asarray(truth, np.float64)
    inside = ((t[..., 0] >= b[..., 0]) & (t[..., 0] <= b[..., 2]) & (t[..., 1] >= b[..., 1])
              & (t[..., 1] <= b[..., 3])).mean(axis=1)
    side = np.array([geometry.face_frame(p, 1, face_scale).side for p in t])
    ratio = (b[:, 0, 2] - b[:, 0, 0]) / side
    return (inside < OFF_FACE_POINTS) | (ratio < OFF_FACE_SIDE[0]) | (ratio > OFF_FACE_SIDE[1])


def evaluate(predictor, rset: RobustnessSet, face_scale: float, chunk: int = 64) -> tuple[dict, dict]:
    """Predict the robustness set and score it.

    Args:
        predictor: a ``predictor.Predictor``. rset: ``RobustnessSet``. face_scale: the face model's.
    Returns:
        ``(metrics, per_image)``: ``{"robust_mse", "robust_nme", "robust_off_face", "n_robust"}`` (px²; NME in
        percent of the landmarks' box size, ``metrics.per_image_nme``; a count) and ``{"mse": float64 [N],
        "off_face": bool [N], "confidence": float32 [N], "faces": int32 [N], "points": float32 [N, K, 2]}``.
    """
    truth = rset.points()
    preds, boxes, conf, faces = [], [], [], []
    for res in predictor.predict_iter(rset.images(), chunk):
        preds.append(res.points), boxes.append(res.boxes), conf.append(res.confidence), faces.append(res.faces)
    if not preds:
        return {"robust_mse": float("nan"), "robust_nme": float("nan"), "robust_off_face": 0, "n_robust": 0}, {}
    pred = np.concatenate(preds)
    box = np.concatenate(boxes)
    err = ((pred.astype(np.float64) - truth) ** 2).reshape(len(pred), -1).mean(axis=1)
    off = off_face(box, truth, face_scale)
    m = {"robust_mse": metrics.mse(pred, truth), "robust_nme": float(metrics.per_image_nme(pred, truth).mean()),
         "robust_off_face": int(off.sum()), "n_robust": len(pred)}
    return m, {"mse": err, "off_face": off, "confidence": np.concatenate(conf), "faces": np.concatenate(faces),
               "points": pred}
