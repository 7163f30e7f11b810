"""Codecs: the target units of the two networks, owned by one object each (as mmpose's codecs): ``encode`` turns
labels into training targets, ``decode`` turns a network's output into coordinates.

- ``LandmarkCodec``: crop pixels <-> the landmark regressor's target units (``[-0.5, 0.5]`` of the crop with
  ``normalize_targets``, else crop pixels); the same arithmetic on numpy arrays and torch tensors.
- ``FaceBoxCodec``: face boxes ``(cx, cy, extent)`` <-> the face-box localizer's output grid (a heatmap of face
  centres at stride 16, the offset within the cell and the log extent); ``decode`` is numpy, ``encode`` torch
  (training only, imported when called).
- ``choose``: the face the labels mark among a crop's detections.

Coordinates are continuous input (crop) pixels: pixel ``i`` spans ``[i, i + 1)``. Importing this module imports
neither torch nor onnxruntime.
"""

from __future__ import annotations

import math

import numpy as np

# The face-box localizer's output grid and the contest's face rule (``localizer`` re-exports these).
STRIDE = 16
HEAD = "facebox"
MIN_SCORE = 0.1  # a local maximum below this is not a face (unless it is the image's best)
RELATIVE_SCORE = 0.5  # ``choose`` considers the detections scoring at least this share of the best one
#: ``fit_rule`` keeps a learned rule only when it picks the labelled face on at least this share of the deciding
#: training images more than the fixed rule.
RULE_MARGIN = 0.01


def _max_pool3(a: np.ndarray) -> np.ndarray:
    """3x3 max over each cell's neighbourhood (stride 1, edges padded with -inf) of ``[B, G, G]``."""
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    g1, g2 = a.shape[1:]
    return np.max([p[:, i: i + g1, j: j + g2] for i in range(3) for j in range(3)], axis=0)


def rule_features(boxes: np.ndarray, scores: np.ndarray, size: int) -> np.ndarray:
    """``float64 [B, T, 4]`` features of each detection for a learned face rule: ``log`` of its score, its extent
    over the input side ``size``, its centre's distance from the input's centre over ``size``, and its extent over
    the largest extent among the image's detections of at least ``MIN_SCORE``.

    Args:
        boxes: ``float [B, T, 3]`` ``(cx, cy, extent)`` input pixels; scores: ``float [B, T]``.
    """
    b = np.asarray(boxes, np.float64)
    sc = np.asarray(scores, np.float64)
    ok = sc >= MIN_SCORE
    largest = np.maximum(np.where(ok, b[..., 2], 0).max(axis=1, keepdims=True), 1e-9)
    dist = np.sqrt(((b[..., :2] - size / 2.0) ** 2).sum(-1)) / size
    return np.stack([np.log(sc + 1e-3), b[..., 2] / size, dist, b[..., 2] / largest], -1)


def choose(boxes: np.ndarray, scores: np.ndarray, rule: dict | None = None, size: int | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The face the labels mark in each image; one detection is chosen, two faces are never averaged.

    Without ``rule`` (the contest's fixed rule): the largest among the detections scoring at least
    ``RELATIVE_SCORE`` of the best (and ``MIN_SCORE``); the best one when none passes. (The contest's labelled face
    is the dominant one; a pasted or background face often scores as high or higher, so the score alone is not the
    rule: docs/evidence.md.) With ``rule`` (``{"weights": [4 floats], ...}`` learned from the training data by
    ``fit_rule``): the detection of at least ``MIN_SCORE`` with the highest ``weights . rule_features`` (the best
    scoring one when none has ``MIN_SCORE``).

    Args:
        boxes: ``float [B, T, 3]``; scores: ``float [B, T]`` (``FaceBoxCodec.decode``); ``size``: the input side,
            needed with ``rule``.
    Returns:
        ``(box float64 [B, 3], score float64 [B], faces int64 [B]`` the number of detections that passed the fixed
        rule's score test).
    """
    best = scores.max(axis=1, keepdims=True)
    ok = (scores >= np.maximum(RELATIVE_SCORE * best, MIN_SCORE))
    if rule is None:
        size_ = np.where(ok, boxes[..., 2], -np.inf)
        pick = np.where(ok.any(axis=1), size_.argmax(axis=1), scores.argmax(axis=1))
    else:
        value = rule_features(boxes, scores, int(size)) @ np.asarray(rule["weights"], np.float64)
        value = np.where(scores >= MIN_SCORE, value, -np.inf)
        pick = np.where((scores >= MIN_SCORE).any(axis=1), value.argmax(axis=1), scores.argmax(axis=1))
    r = np.arange(len(boxes))
    return boxes[r, pick].astype(np.float64), scores[r, pick].astype(np.float64), ok.sum(1)


def matches(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``bool [B, T]``: detections that are the labelled face: centre within 0.3 of its extent and extent within a
    factor 1.5 of the labelled face box ``truth`` (``float [B, 3]``, same units)."""
    t = np.asarray(truth, np.float64)[:, None]
    d = np.sqrt(((boxes[..., :2] - t[..., :2]) ** 2).sum(-1))
    ratio = boxes[..., 2] / np.maximum(t[..., 2], 1e-9)
    return (d <= 0.3 * t[..., 2]) & (ratio <= 1.5) & (ratio >= 1 / 1.5)


def fit_rule(boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, size: int, steps: int = 500) -> dict | None:
    """A face rule learned from training images: a conditional logit over each image's detections of at least
    ``MIN_SCORE`` (``rule_features``), fitted by gradient ascent on the images with two or more of them and one
    matching the labelled face (``matches``), L2-regularised. It is kept only when it picks the labelled face on at
    least ``RULE_MARGIN`` of those training images more than the fixed rule (``choose`` without ``rule``) and on at
    least two more: a rule that wins a handful of images among hundreds is noise, and the fixed rule stays.

    Args:
        boxes: ``float [B, T, 3]``, scores ``float [B, T]`` (the localizer's detections on training images, input
            pixels); truth: ``float [B, 3]`` the labelled faces' boxes, same units; size: the input side.
    Returns:
        ``{"weights": [4 floats], "hits": int, "fixed_hits": int, "images": int}`` (``images``: those that
        decide, ``hits``: picked right by the rule, ``fixed_hits``: by the fixed rule), or ``None`` when fewer than
        10 images decide or the rule does not beat the fixed one by the margin.
    """
    eligible = scores >= MIN_SCORE
    good = matches(boxes, truth) & eligible
    use = (eligible.sum(1) >= 2) & good.any(1)
    if use.sum() < 10:
        return None
    f = rule_features(boxes[use], scores[use], size)
    mask, pos = eligible[use], good[use]
    w = np.array([1.0, 0.0, 0.0, 1.0])
    for _ in range(steps):
        z = np.where(mask, f @ w, -np.inf)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = pos / pos.sum(1, keepdims=True)
        grad = ((q - p)[..., None] * f).sum((0, 1)) / len(f) - 1e-3 * w
        w = w + 0.5 * grad
    rule = {"weights": [float(v) for v in w]}

    def hits(r):
        b, _, _ = choose(boxes[use], scores[use], r, size)
        return int(matches(b[:, None], truth[use])[:, 0].sum())

    rule.update(hits=hits(rule), fixed_hits=hits(None), images=int(use.sum()))
    margin = max(2, math.ceil(RULE_MARGIN * rule["images"]))
    return rule if rule["hits"] - rule["fixed_hits"] >= margin else None


class FaceBoxCodec:
    """Face boxes <-> the localizer's output grid, for an ``S x S`` input (``S`` divisible by 16).

    Boxes are ``float [n, 3]`` ``(cx, cy, extent)`` in input pixels (continuous convention).
    """

    def __init__(self, size: int, stride: int = STRIDE):
        if size % stride:
            raise ValueError(f"localizer_crop_size must be a multiple of {stride}, got {size}")
        self.size, self.stride, self.grid = int(size), int(stride), int(size) // int(stride)

    def encode(self, boxes, present) -> dict:
        """Training targets.

        Args:
            boxes: ``float32 [B, F, 3]`` torch tensor, up to ``F`` faces per image; present: ``bool [B, F]``.
        Returns:
            ``{"heat": float32 [B, G, G]`` (Gaussian peaks, 1 at each face's cell), ``"cell": int64 [B, F]`` (flat
            cell index), ``"offset": float32 [B, F, 2]`` (centre within the cell, cell units from its centre),
            ``"log_size": float32 [B, F]``, ``"present"}``.
        """
        import torch

        g, st = self.grid, self.stride
        c = boxes[..., :2] / st  # cell units
        ij = c.floor().clamp(0, g - 1)
        offset = c - ij - 0.5
        log_size = torch.log(boxes[..., 2].clamp_min(1.0) / self.size)
        sigma = (boxes[..., 2] / st / 5).clamp_min(0.6)  # [B, F]
        u = torch.arange(g, dtype=boxes.dtype, device=boxes.device) + 0.5
        dx = (u[None, None, None, :] - (ij[..., 0] + 0.5)[..., None, None]) ** 2
        dy = (u[None, None, :, None] - (ij[..., 1] + 0.5)[..., None, None]) ** 2
        heat = torch.exp(-(dx + dy) / (2 * sigma[..., None, None] ** 2)) * present[..., None, None]
        cell = (ij[..., 1] * g + ij[..., 0]).long()
        return {"heat": heat.amax(1), "cell": cell, "offset": offset, "log_size": log_size, "present": present}

    def decode(self, out: np.ndarray, top: int = 8):
        """Detections of each image: the heatmap's local maxima (3x3), best first.

        Args:
            out: ``float32 [B, 4, G, G]`` network output (heatmap logit, x and y offset, log(extent / S)), numpy.
        Returns:
            ``(boxes float64 [B, top, 3]`` ``(cx, cy, extent)`` input pixels, ``scores float64 [B, top]`` in
            ``[0, 1]``); rows past an image's maxima have score 0.
        """
        out = np.asarray(out, np.float32)
        b, _, g, _ = out.shape
        heat = np.float32(1) / (np.float32(1) + np.exp(-out[:, 0]))
        peak = heat * (_max_pool3(heat) == heat)
        k = min(top, g * g)
        flat = peak.reshape(b, -1)
        cell = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        score = np.take_along_axis(flat, cell, 1)
        at = np.take_along_axis(out[:, 1:].reshape(b, 3, -1), np.broadcast_to(cell[:, None, :], (b, 3, k)), 2)
        cx = ((cell % g).astype(np.float32) + np.float32(0.5) + at[:, 0]) * np.float32(self.stride)
        cy = ((cell // g).astype(np.float32) + np.float32(0.5) + at[:, 1]) * np.float32(self.stride)
        ext = np.exp(at[:, 2]) * np.float32(self.size)
        return np.stack([cx, cy, ext], -1).astype(np.float64), score.astype(np.float64)


class LandmarkCodec:
    """Crop pixels <-> the landmark regressor's target units for ``S x S`` crops.

    With ``normalize_targets`` the units are ``p / S - 0.5`` (the crop spans ``[-0.5, 0.5]``), else crop pixels.
    ``encode`` and ``decode`` take numpy arrays or torch tensors of points ``[..., K, 2]`` and keep their dtype
    (``float32`` in, ``float32`` out).
    """

    def __init__(self, size: int, normalize_targets: bool):
        self.size, self.normalize = int(size), bool(normalize_targets)

    @classmethod
    def from_meta(cls, meta: dict) -> LandmarkCodec:
        """From a checkpoint's ``meta`` (``crop_size``, ``normalize_targets``)."""
        return cls(meta["crop_size"], meta["normalize_targets"])

    def encode(self, points):
        """Crop pixels -> target units."""
        return points / self.size - 0.5 if self.normalize else points

    def decode(self, out):
        """Target units (the network's output) -> crop pixels."""
        return (out + 0.5) * self.size if self.normalize else out
