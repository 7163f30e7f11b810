"""A deterministic synthetic dataset in the contest's exact format: face drawings with dense landmarks on them.

It needs no download, a small CNN learns it in minutes on a CPU, and plots show at a glance whether it did.

Faces are drawings: a face oval with a contour, two eyes with irises (and pupils), two eyebrows, a nose bridge and
the bottom of the nose, two cheek lines, the outer contour of the lips (upper and lower lip) and the line where they
meet. The ``K`` landmarks lie on the centre lines of these strokes, spread along them in proportion to their length
(any ``K >= MIN_POINTS``; 971 and 68 are typical). The layout is exactly mirror symmetric: a left feature's point ``k``
mirrors the right feature's point ``k``; along an open curve crossing the midline (nose bottom, mouth line; odd
``n``) point ``k`` mirrors ``n - 1 - k`` and the middle one lies on the midline; along a closed one (face oval, outer
lips; even ``n``, starting at the top midline point, going down the image-left side) point ``k`` mirrors
``(n - k) % n`` and points ``0`` and ``n / 2`` lie on the midline; the nose bridge lies on the midline.

Coordinates follow the package convention (see ``landmarks_lib``): continuous pixels, pixel column ``i`` spans
``[i, i + 1)``, so pixel ``(i, j)``'s centre is ``(i + 0.5, j + 0.5)``. Drawing is done on a ``SUPERSAMPLE`` (4x)
canvas and reduced by exact 4x4 box averaging (antialiasing). PIL's ``ImageDraw`` addresses pixel *indices* (integer
``c`` is the pixel whose centre is at continuous ``c + 0.5``), so a continuous point ``x`` of the final image is PIL
coordinate ``x * 4 - 0.5`` on the canvas. PIL truncates float coordinates, so they are rounded to the nearest canvas
pixel first and stroke widths are odd, which keeps strokes centred on the labels to within 1/8 pixel.

Files written under ``out_dir``::

    train/images/NNNNN.jpg      JPEG quality 92, no EXIF; sizes in [min_size, max_size], some 3:4 and 4:3
    train/landmarks.csv         TAB-separated, file_name, Point_0_X, Point_0_Y, ... (integer labels in the contest's
                                convention, ``coords.LABEL_OFFSET``: continuous point minus 0.5, rounded to nearest)
    train/groups.csv            TAB-separated, file_name, group (integer person id)
    test/images/NNNNN.jpg       numbered after the training images (names never collide)
    test/test_points.csv        TAB-separated, file_name, point_index_list like "[431, 770, 428]"
    test_truth.csv              only with write_test_truth=True: test labels, same format as landmarks.csv
    synthetic_dataset.json      marker with the arguments (lets a later call overwrite this folder)

Per image: rotation (uniform in +-15 degrees), face height 35-70% of the image's shorter side, position (the face
stays inside the image up to a few percent of its size), horizontal squash 0.8-1.0 (yaw-like, symmetric),
background (flat, gradient, noise or stripes; luma >= 110 so the dark strokes stay visible). Per person (shared by
2-6 training images, the ``group`` column): face width and jaw, eye/brow/nose/mouth placement and size, colours.

Training images come in **mirror twins**: every person's images are pairs whose geometry is the exact horizontal
mirror of each other (same person, rotation ``-theta``, centre ``W - cx``; the twin's labels are exactly
``W - 1 - x`` of the first's (the mirror in label convention), permuted by ``mirror_permutation``). Backgrounds differ.
So the set of training labels is
exactly mirror symmetric and ``landmarks_lib.geometry.estimate_mirror_permutation`` recovers ``mirror_permutation``
exactly, provided the images are enough for the median shape to keep neighbouring points apart (integer labels of
points a fraction of a pixel apart often coincide): checked for K=68 from 41 images and K=971 from 96-240 images on
several seeds; K=971 from 48 images, or K=2000 from 240, can merge a few neighbours and mispair them. Twins share their
group, so group-wise validation splits keep them together. With an odd ``n_train`` the
last image is self-symmetric (no rotation, centred, odd width, so the midline is a whole label column). Test images are
independent (new persons).

Run ``python -m landmarks_lib.synthetic OUT_DIR [--n-train N] [--n-test N] [--num-points K] [--seed S]``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from ..core.coords import points_to_labels, round_half_up
from ..core.files import atomic_open

SUPERSAMPLE = 4
JPEG_QUALITY = 92
MARKER = "synthetic_dataset.json"
GENERATOR = "landmarks_lib.synthetic"
FORMAT_VERSION = 1
MAX_TEST_INDICES = 30

# Curves in index order: (name, kind, style). Kinds: "sym" = an open curve symmetric about the midline (stored as
# its left half, from its left end to the midline), "csym" = a closed symmetric curve (stored as its left half, from
# the top midline point to the bottom one), "pair" = a left feature (stored) and its mirror image, "mid" = a segment
# on the midline. Point counts: "csym" even (a point on each midline crossing), "sym" odd (one on the midline), so
# no two mirror points straddle the midline at a tiny distance (integer labels would often merge them).
_CURVES = (
    ("face_oval", "csym", "oval"),
    ("eyebrow", "pair", "brow"),
    ("eye", "pair", "eye"),
    ("iris", "pair", "iris"),
    ("nose_bridge", "mid", "line"),
    ("nose_bottom", "sym", "line"),
    ("cheek_line", "pair", "line"),
    ("lips_outer", "csym", "lips"),
    ("mouth_line", "sym", "line"),
)
_MIN_COUNT = {"csym": 2, "sym": 1, "pair": 1, "mid": 1}  # per side for pairs
_STEP = {"csym": 2, "sym": 2, "pair": 1, "mid": 1}
_SIDES = {"csym": 1, "sym": 1, "pair": 2, "mid": 1}
MIN_POINTS = sum(_SIDES[kind] * _MIN_COUNT[kind] for _, kind, _ in _CURVES)

_DEFAULT_PERSON = {
    "face_w": 0.74, "jaw": 0.2,  # oval half-width (unit = half the face height), chin narrowing
    "eye_dx": 0.0, "eye_dy": 0.0, "eye_s": 1.0, "brow_dy": 0.0,
    "nose_len": 1.0, "nose_w": 1.0, "mouth_w": 1.0, "mouth_dy": 0.0,
}


# ----------------------------------------------------------------------------------------------- curve geometry
def _bezier(p, n=33):
    """Cubic Bezier through control points ``p [4, 2]``, ``n`` samples including both ends, float64 ``[n, 2]``."""
    p = np.asarray(p, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return ((1 - t) ** 3) * p[0] + 3 * ((1 - t) ** 2) * t * p[1] + 3 * (1 - t) * (t ** 2) * p[2] + (t ** 3) * p[3]


def _ellipse(cx, cy, rx, ry, n=64):
    """Closed ellipse starting at its leftmost point (first point repeated at the end), ``[n + 1, 2]``."""
    t = np.linspace(0.0, 2.0 * np.pi, n + 1)
    pts = np.stack([cx - rx * np.cos(t), cy - ry * np.sin(t)], axis=1)
    pts[-1] = pts[0]
    return pts


def _scale_about(pts, centre, sx, sy):
    c = np.asarray(centre, dtype=np.float64)
    return (pts - c) * np.array([sx, sy]) + c


@lru_cache(maxsize=64)
def _dense_curves_cached(items):
    return _dense_curves_impl(dict(items))


def _dense_curves(person) -> dict:
    """Dense polylines (face frame, float64) for one person's proportions; see ``_CURVES`` for what is stored."""
    return _dense_curves_cached(tuple(sorted((k, float(person[k])) for k in _DEFAULT_PERSON)))


def _dense_curves_impl(p) -> dict:
    out = {}
    # Face oval, left half from the top of the head (0, -1) down to the chin (0, 1).
    t = np.linspace(0.0, np.pi, 121)
    y = -np.cos(t)
    x = -p["face_w"] * np.sin(t) ** 0.85 * (1.0 - p["jaw"] * np.clip(y, 0.0, None) ** 1.5)
    x[0] = x[-1] = 0.0
    out["face_oval"] = np.stack([x, y], axis=1)

    # Eyes, irises and brows: the left one (x < 0); moved and scaled together about the eye centre.
    ec = np.array([-0.34 - p["eye_dx"], -0.12 + p["eye_dy"]])
    s = p["eye_s"]
    out["eye"] = _ellipse(ec[0], ec[1], 0.18 * s, 0.105 * s)
    out["iris"] = _ellipse(ec[0], ec[1], 0.066 * s, 0.066 * s, n=40)
    brow = _bezier([[-0.17, -0.30], [-0.27, -0.38], [-0.43, -0.38], [-0.54, -0.30]])
    brow = _scale_about(brow, (-0.34, -0.12), s, s) + (ec - np.array([-0.34, -0.12])) + np.array([0.0, p["brow_dy"]])
    out["eyebrow"] = brow

    # Nose: bridge on the midline, bottom curve from the left wing to the midline.
    top = -0.10
    out["nose_bridge"] = np.stack([np.zeros(2), np.linspace(top, top + 0.26 * p["nose_len"], 2)], axis=1)
    nb = _bezier([[-0.14, 0.20], [-0.15, 0.26], [-0.07, 0.29], [0.0, 0.29]])
    nb = _scale_about(nb, (0.0, top), p["nose_w"], p["nose_len"])
    nb[-1, 0] = 0.0
    out["nose_bottom"] = nb

    # Mouth: outer lip contour (left half, from the top midline round the corner to the bottom midline) and the
    # line between the lips; cheek lines follow the mouth's width.
    mw, mdy = p["mouth_w"], p["mouth_dy"]
    upper = _bezier([[0.0, 0.465], [-0.04, 0.42], [-0.14, 0.44], [-0.25, 0.53]])
    lower = _bezier([[-0.25, 0.53], [-0.18, 0.62], [-0.08, 0.65], [0.0, 0.65]])
    lips = np.concatenate([upper, lower[1:]])
    lips = _scale_about(lips, (0.0, 0.0), mw, 1.0) + np.array([0.0, mdy])
    lips[0, 0] = lips[-1, 0] = 0.0
    out["lips_outer"] = lips
    ml = _bezier([[-0.22, 0.535], [-0.15, 0.55], [-0.07, 0.55], [0.0, 0.55]])
    ml = _scale_about(ml, (0.0, 0.0), mw, 1.0) + np.array([0.0, mdy])
    ml[-1, 0] = 0.0
    out["mouth_line"] = ml
    cheek = _bezier([[-0.19, 0.27], [-0.25, 0.36], [-0.30, 0.46], [-0.32, 0.58]])
    out["cheek_line"] = _scale_about(cheek, (0.0, 0.0), mw, 1.0) + np.array([0.0, 0.5 * mdy])
    return out


def _mirror(pts):
    return pts * np.array([-1.0, 1.0])


def _full_polyline(kind, dense):
    """The drawn polylines of one curve entry: a list of ``[M, 2]`` arrays (two for a pair: left, right)."""
    if kind in ("sym", "csym"):
        return [np.concatenate([dense, _mirror(dense[::-1])[1:]])]
    if kind == "pair":
        return [dense, _mirror(dense)]
    return [dense]


def _length(pts):
    return float(np.sqrt((np.diff(pts, axis=0) ** 2).sum(1)).sum())


def _at_arclength(pts, s):
    """Points at arc lengths ``s`` along the polyline ``pts`` (linear interpolation: exactly on the polyline)."""
    seg = np.sqrt((np.diff(pts, axis=0) ** 2).sum(1))
    c = np.concatenate([[0.0], np.cumsum(seg)])
    return np.stack([np.interp(s, c, pts[:, 0]), np.interp(s, c, pts[:, 1])], axis=1)


def _curve_points(kind, dense, n):
    """``n`` landmarks on one curve (``2 n`` for a pair: left block then right block), float64 face frame."""
    if kind == "csym":  # n even: point 0 on the top midline crossing, point n / 2 on the bottom one
        half = _length(dense)
        k = np.arange(n // 2 + 1)
        pts = np.empty((n, 2))
        pts[: n // 2 + 1] = _at_arclength(dense, k * (2.0 * half) / n)
        pts[0, 0] = pts[n // 2, 0] = 0.0
        k = np.arange(n // 2 + 1, n)
        pts[k] = _mirror(pts[n - k])
        return pts
    if kind == "sym":  # n odd: the middle point on the midline
        half = _length(dense)
        k = np.arange(n)
        s = (k + 0.5) * (2.0 * half) / n
        pts = np.empty((n, 2))
        left = k < (n - 1) / 2.0
        pts[left] = _at_arclength(dense, s[left])
        if n % 2:
            pts[(n - 1) // 2] = [0.0, dense[-1, 1]]
        right = k > (n - 1) / 2.0
        pts[right] = _mirror(pts[n - 1 - k[right]])
        return pts
    s = (np.arange(n) + 0.5) * _length(dense) / n
    pts = _at_arclength(dense, s)
    if kind == "mid":
        pts[:, 0] = 0.0
        return pts
    return np.concatenate([pts, _mirror(pts)])


# --------------------------------------------------------------------------------------------------- the layout
@dataclass(frozen=True)
class _Layout:
    num_points: int
    counts: tuple  # points per curve entry (per side for pairs), in _CURVES order
    perm: np.ndarray


def _allocate(num_points, lengths, kinds):
    """Points per curve entry (per side for pairs), in proportion to length, respecting each kind's minimum and
    parity (``_MIN_COUNT``, ``_STEP``); the midline segment (step 1) absorbs the total's parity."""
    sides = np.array([_SIDES[k] for k in kinds])
    step = np.array([_STEP[k] for k in kinds])
    low = np.array([_MIN_COUNT[k] for k in kinds])
    ideal = num_points * np.asarray(lengths, float) / float((sides * np.asarray(lengths, float)).sum())
    n = low + step * np.maximum(0, np.floor((ideal - low) / step)).astype(int)
    cost = sides * step
    for _ in range(4 * num_points + 100):
        used = int((sides * n).sum())
        if used == num_points:
            return tuple(int(v) for v in n)
        if used < num_points:  # grow the entry furthest below its ideal (after its next step)
            gap = np.where(cost <= num_points - used, ideal - (n + step / 2.0), -np.inf)
            n[int(np.argmax(gap))] += step[int(np.argmax(gap))]
        else:  # shrink the entry furthest above its ideal
            gap = np.where(n - step >= low, n - step / 2.0 - ideal, -np.inf)
            n[int(np.argmax(gap))] -= step[int(np.argmax(gap))]
    raise RuntimeError(f"could not allocate {num_points} points")  # pragma: no cover


@lru_cache(maxsize=16)
def _layout(num_points: int) -> _Layout:
    num_points = int(num_points)
    if num_points < MIN_POINTS:
        raise ValueError(f"num_points must be at least {MIN_POINTS} (the minimum for the drawn curves), "
                         f"got {num_points}")
    dense = _dense_curves(_DEFAULT_PERSON)
    kinds = [kind for _, kind, _ in _CURVES]
    lengths = [_length(_full_polyline(kind, dense[name])[0]) for name, kind, _ in _CURVES]
    counts = _allocate(num_points, lengths, kinds)
    perm = np.empty(num_points, dtype=np.int64)
    o = 0
    for n, kind in zip(counts, kinds):
        k = np.arange(n)
        if kind == "csym":
            perm[o + k] = o + (n - k) % n
            o += n
        elif kind == "sym":
            perm[o + k] = o + n - 1 - k
            o += n
        elif kind == "mid":
            perm[o + k] = o + k
            o += n
        else:
            perm[o + k] = o + n + k
            perm[o + n + k] = o + k
            o += 2 * n
    assert o == num_points
    perm.setflags(write=False)
    return _Layout(num_points, counts, perm)


def _face_points(person, layout: _Layout) -> np.ndarray:
    dense = _dense_curves(person)
    parts = [_curve_points(kind, dense[name], n) for (name, kind, _), n in zip(_CURVES, layout.counts)]
    return np.concatenate(parts)


def template(num_points: int = 971) -> np.ndarray:
    """The canonical face layout (average proportions, no pose) in the unit face frame.

    The frame: origin at the face centre, ``x`` to the right and ``y`` downward (like image pixels), unit = half the
    face height (the oval spans ``y`` in ``[-1, 1]`` and ``x`` in about ``[-0.74, 0.74]``). Exactly mirror symmetric
    about ``x = 0``: ``template(K)[mirror_permutation(K)] == template(K) * [-1, 1]``.

    Args:
        num_points: ``K >= MIN_POINTS`` (15).
    Returns:
        ``float64 [K, 2]`` (x, y) face-frame units; point order as in the generated ``landmarks.csv``.
    Raises:
        ValueError: ``num_points < MIN_POINTS``.
    """
    return _face_points(_DEFAULT_PERSON, _layout(num_points))


def mirror_permutation(num_points: int = 971) -> np.ndarray:
    """The exact mirror pairing of the synthetic layout, with the semantics of
    ``landmarks_lib.geometry.estimate_mirror_permutation``.

    Point ``i`` mirrors point ``perm[i]``: after flipping an image horizontally (``x -> W - x``), point ``i`` of the
    flipped face is point ``perm[i]`` of the original, flipped. An involution (``perm[perm] == arange(K)``); midline
    points map to themselves.

    Args:
        num_points: ``K >= MIN_POINTS`` (15).
    Returns:
        ``int64 [K]`` (a fresh, writable copy).
    """
    return _layout(num_points).perm.copy()


# ------------------------------------------------------------------------------------------------------ colours
_SKIN = ((241, 194, 167), (224, 172, 105), (198, 150, 110), (255, 219, 172), (232, 190, 172), (205, 180, 150),
         (190, 210, 235), (200, 230, 190))
_IRIS = ((90, 130, 200), (80, 160, 110), (150, 110, 70), (120, 150, 160), (170, 140, 80))


def _luma(c):
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colour(rng, lo, hi, base=None, jitter=30.0):
    """A random RGB colour (tuple of 3 ints) whose luma lies in ``[lo, hi]``; near ``base`` when given."""
    c = None
    for _ in range(200):
        if base is None:
            c = rng.uniform(0.0, 255.0, 3)
        else:
            c = np.clip(np.asarray(base, float) + rng.uniform(-jitter, jitter, 3), 0.0, 255.0)
        if lo <= _luma(c) <= hi:
            break
    else:  # pragma: no cover - practically unreachable; scale into range
        target = (lo + hi) / 2.0
        c = np.clip(c * target / max(_luma(c), 1.0), 0.0, 255.0)
    return tuple(int(v) for v in np.round(c))


def _sample_person(rng) -> dict:
    p = {
        "face_w": 0.74 * rng.uniform(0.9, 1.08), "jaw": rng.uniform(0.08, 0.32),
        "eye_dx": rng.uniform(-0.025, 0.025), "eye_dy": rng.uniform(-0.04, 0.04), "eye_s": rng.uniform(0.9, 1.1),
        "brow_dy": rng.uniform(-0.03, 0.02), "nose_len": rng.uniform(0.9, 1.1), "nose_w": rng.uniform(0.9, 1.15),
        "mouth_w": rng.uniform(0.88, 1.1), "mouth_dy": rng.uniform(-0.03, 0.03),
    }
    p["skin"] = _colour(rng, 150, 235, base=_SKIN[rng.integers(len(_SKIN))])
    p["stroke"] = _colour(rng, 0, 50)
    p["brow"] = _colour(rng, 0, 45)
    p["sclera"] = _colour(rng, 225, 255, base=(245, 245, 240), jitter=12)
    p["iris"] = _colour(rng, 90, 170, base=_IRIS[rng.integers(len(_IRIS))], jitter=35)
    p["pupil"] = _colour(rng, 0, 30)
    p["lips"] = _colour(rng, 90, 150, base=(190, 90, 100), jitter=40)
    return p


# ------------------------------------------------------------------------------------------------- the plan
def _sample_size(rng, min_size, max_size):
    aspect = rng.choice(4)  # 0, 1: square; 2: 4:3 (landscape); 3: 3:4 (portrait)
    long_lo = max(min_size, int(math.ceil(min_size * 4 / 3)))
    if aspect >= 2 and long_lo <= max_size:
        long_side = int(rng.integers(long_lo, max_size + 1))
        short_side = int(round(long_side * 3 / 4))
        return (long_side, short_side) if aspect == 2 else (short_side, long_side)
    side = int(rng.integers(min_size, max_size + 1))
    return side, side


def _pose_extent(person, theta, squash, unit):
    """Half extents in pixels of the posed face oval about the face centre."""
    oval = _full_polyline("csym", _dense_curves(person)["face_oval"])[0]
    c, s = math.cos(theta), math.sin(theta)
    u, v = oval[:, 0] * squash, oval[:, 1]
    return float(np.abs(c * u + s * v).max() * unit), float(np.abs(-s * u + c * v).max() * unit)


def _sample_geometry(rng, person, min_size, max_size, symmetric=False):
    w, h = _sample_size(rng, min_size, max_size)
    frac = rng.uniform(0.35, 0.70)
    theta = math.radians(rng.uniform(-15.0, 15.0))
    squash = rng.uniform(0.8, 1.0)
    if symmetric:  # self-mirror image: no rotation, centred, odd width (midline label (w - 1) / 2 is an integer)
        theta = 0.0
        if w % 2 == 0:
            w = w - 1 if w - 1 >= min_size else w + 1
    unit = frac * min(w, h) / 2.0
    ex, ey = _pose_extent(person, theta, squash, unit)
    slack = 0.96  # points may leave the image by up to 4% of the face's half extent

    def place(size, ext):
        lo, hi = ext * slack, size - ext * slack
        return size / 2.0 if lo >= hi else float(rng.uniform(lo, hi))

    cx, cy = place(w, ex), place(h, ey)
    if symmetric:
        cx = w / 2.0
    return {"width": w, "height": h, "theta": theta, "squash": squash, "unit": unit, "cx": cx, "cy": cy}


def _sample_background(rng):
    kind = ["flat", "gradient", "noise", "stripes"][int(rng.integers(4))]
    bg = {"kind": kind, "c0": _colour(rng, 110, 250), "c1": _colour(rng, 110, 250),
          "angle": float(rng.uniform(0.0, np.pi)), "period": float(rng.uniform(5.0, 24.0)),
          "sigma": float(rng.uniform(4.0, 14.0)), "seed": int(rng.integers(2 ** 31))}
    return bg


def _plan(n_train, n_test, num_points, seed, min_size, max_size) -> list:
    """Every image's parameters, in file order (training images first). Deterministic in the arguments."""
    specs = []
    pid = 0
    while len(specs) < n_train:
        prng = np.random.default_rng([seed, 1, pid])
        person = _sample_person(prng)
        n_img = min(2 * int(prng.integers(1, 4)), n_train - len(specs))
        for _ in range(n_img // 2):
            i = len(specs)
            irng = np.random.default_rng([seed, 2, i])
            geo = _sample_geometry(irng, person, min_size, max_size)
            specs.append({"index": i, "split": "train", "group": pid, "person": person, "geometry": geo,
                          "background": _sample_background(irng), "twin_of": None})
            twin = dict(geo, theta=-geo["theta"], cx=geo["width"] - geo["cx"])
            trng = np.random.default_rng([seed, 2, i + 1])
            specs.append({"index": i + 1, "split": "train", "group": pid, "person": person, "geometry": twin,
                          "background": _sample_background(trng), "twin_of": i})
        if n_img % 2:
            i = len(specs)
            irng = np.random.default_rng([seed, 2, i])
            geo = _sample_geometry(irng, person, min_size, max_size, symmetric=True)
            specs.append({"index": i, "split": "train", "group": pid, "person": person, "geometry": geo,
                          "background": _sample_background(irng), "twin_of": "self"})
        pid += 1
    n_all = n_train + n_test
    while len(specs) < n_all:
        prng = np.random.default_rng([seed, 3, pid])
        person = _sample_person(prng)
        n_img = min(int(prng.integers(1, 4)), n_all - len(specs))
        for _ in range(n_img):
            i = len(specs)
            irng = np.random.default_rng([seed, 2, i])
            geo = _sample_geometry(irng, person, min_size, max_size)
            k = min(MAX_TEST_INDICES, num_points)
            idx = np.random.default_rng([seed, 4, i]).choice(num_points, size=k, replace=False)
            specs.append({"index": i, "split": "test", "group": pid, "person": person, "geometry": geo,
                          "background": _sample_background(irng), "twin_of": None,
                          "test_indices": [int(v) for v in idx]})
        pid += 1
    for s in specs:
        s["file_name"] = f"{s['index']:05d}.jpg"
    return specs


# --------------------------------------------------------------------------------------------------- rendering
def _pose(points, geo):
    """Face frame ``[..., 2]`` -> continuous image pixels ``float64``."""
    c, s = math.cos(geo["theta"]), math.sin(geo["theta"])
    u = points[..., 0] * geo["squash"]
    v = points[..., 1]
    x = geo["cx"] + geo["unit"] * (c * u + s * v)
    y = geo["cy"] + geo["unit"] * (-s * u + c * v)
    return np.stack([x, y], axis=-1)


def _canvas_xy(points):
    """Continuous final-image pixels ``[M, 2]`` -> PIL index coordinates on the ``SUPERSAMPLE`` canvas, as a list
    of integer tuples (rounded to nearest; PIL would truncate floats)."""
    pil = np.asarray(points, dtype=np.float64) * SUPERSAMPLE - 0.5
    c = np.floor(pil + 0.5).astype(np.int64)  # nearest canvas pixel index, halves up
    return [tuple(p) for p in c.tolist()]


def _odd_width(width_px):
    """Stroke width in final pixels -> an odd canvas width (odd widths are centred on the coordinate)."""
    w = max(1, int(round(width_px * SUPERSAMPLE)))
    return w if w % 2 else w + 1


def _background(bg, w, h) -> np.ndarray:
    """``float32 [h, w, 3]`` in [0, 255]."""
    c0 = np.asarray(bg["c0"], np.float32)
    c1 = np.asarray(bg["c1"], np.float32)
    kind = bg["kind"]
    if kind == "flat":
        return np.broadcast_to(c0, (h, w, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    proj = xx * math.cos(bg["angle"]) + yy * math.sin(bg["angle"])
    if kind == "gradient":
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        return c0 + (c1 - c0) * t[..., None]
    if kind == "stripes":
        t = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * proj / bg["period"]), 0.0, 1.0)
        return c0 + (c1 - c0) * t[..., None]
    rng = np.random.default_rng(bg["seed"])
    low = Image.fromarray(rng.uniform(0, 255, (4, 4)).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    t = np.asarray(low, np.float32)[..., None] / 255.0
    img = c0 + (c1 - c0) * t + rng.normal(0.0, bg["sigma"], (h, w, 3)).astype(np.float32)
    return np.clip(img, 0.0, 255.0)


def _downscale(canvas: Image.Image) -> np.ndarray:
    """Exact ``SUPERSAMPLE x SUPERSAMPLE`` box average (canvas pixels ``[4i, 4i + 4)`` -> final pixel ``i``),
    ``float32``. An RGBA canvas drawn on black is premultiplied: its RGB and alpha are averaged separately (PIL's
    RGBA ``reduce`` would un-premultiply)."""
    if canvas.mode == "RGBA":
        rgb = np.asarray(canvas.convert("RGB").reduce(SUPERSAMPLE), dtype=np.float32)
        alpha = np.asarray(canvas.getchannel("A").reduce(SUPERSAMPLE), dtype=np.float32)
        return np.concatenate([rgb, alpha[..., None]], axis=2)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32)


def _render(spec, layout: _Layout, extras: bool = False) -> dict:
    """Draw one image.

    Returns a dict with ``image`` (``uint8 [H, W, 3]``), ``points`` (``float64 [K, 2]`` continuous pixels) and, with
    ``extras``, ``background`` (``uint8 [H, W, 3]``, the image without the face), ``no_strokes`` (``uint8``, the
    face's filled areas without any stroke) and ``stroke_cover`` (``float32 [H, W]`` in [0, 1], stroke coverage).
    """
    person, geo = spec["person"], spec["geometry"]
    w, h = geo["width"], geo["height"]
    dense = _dense_curves(person)
    points = _pose(_face_points(person, layout), geo)
    stroke_px = min(max(1.25, 0.035 * geo["unit"]), 2.0)
    brow_px = min(max(2.0, 0.08 * geo["unit"]), 4.0)

    # The face is drawn on a supersampled canvas covering only its bounding box (whole final pixels), then
    # composited over the background: premultiplied RGB drawn on black, with alpha.
    posed = {name: [_pose(p, geo) for p in _full_polyline(kind, dense[name])] for name, kind, _ in _CURVES}
    allp = np.concatenate([p for ps in posed.values() for p in ps])
    x0 = int(np.clip(np.floor(allp[:, 0].min() - brow_px), 0, w - 1))
    y0 = int(np.clip(np.floor(allp[:, 1].min() - brow_px), 0, h - 1))
    x1 = int(np.clip(np.ceil(allp[:, 0].max() + brow_px), x0 + 1, w))
    y1 = int(np.clip(np.ceil(allp[:, 1].max() + brow_px), y0 + 1, h))
    ss, off = SUPERSAMPLE, np.array([x0, y0], dtype=np.float64)
    canvas = Image.new("RGBA", ((x1 - x0) * ss, (y1 - y0) * ss), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)  # an RGBA image: ink is written, not blended
    mask_img = Image.new("L", canvas.size, 0) if extras else None
    mask = ImageDraw.Draw(mask_img) if extras else None
    by_name = {name: [_canvas_xy(p - off) for p in ps] for name, ps in posed.items()}

    def fill(xy, colour):
        draw.polygon(xy, fill=tuple(colour) + (255,))

    # Filled areas: skin, eye whites, irises with pupils, lips.
    fill(by_name["face_oval"][0], person["skin"])
    for eye, iris in zip(by_name["eye"], by_name["iris"]):
        fill(eye, person["sclera"])
        fill(iris, person["iris"])
    for side in (1.0, -1.0):
        iris = dense["iris"] * np.array([side, 1.0])
        centre = iris[:-1].mean(axis=0)
        pupil = centre + (iris - centre) * 0.42
        fill(_canvas_xy(_pose(pupil, geo) - off), person["pupil"])
    fill(by_name["lips_outer"][0], person["lips"])
    no_strokes = _downscale(canvas) if extras else None
    # Strokes, centred on the landmark curves (odd canvas widths are centred on the coordinate).
    for name, _, style in _CURVES:
        colour = tuple(person["brow"] if style == "brow" else person["stroke"]) + (255,)
        width = _odd_width(brow_px if style == "brow" else stroke_px)
        for xy in by_name[name]:
            draw.line(xy, fill=colour, width=width, joint="curve")
            if mask is not None:
                mask.line(xy, fill=255, width=width, joint="curve")

    bg = _background(spec["background"], w, h)

    def compose(layer):
        img = bg.copy()
        region = img[y0:y1, x0:x1]
        region *= 1.0 - layer[..., 3:4] / 255.0
        region += layer[..., :3]
        return np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)

    out = {"image": compose(_downscale(canvas)), "points": points}
    if extras:
        out["background"] = np.clip(np.floor(bg + 0.5), 0, 255).astype(np.uint8)
        out["no_strokes"] = compose(no_strokes)
        cover = np.zeros((h, w), np.float32)
        cover[y0:y1, x0:x1] = _downscale(mask_img) / 255.0
        out["stroke_cover"] = cover
    return out


def _round_labels(points) -> np.ndarray:
    """Continuous points -> integer labels (``coords.points_to_labels``, rounded to the nearest integer, halves up),
    ``int64``."""
    return round_half_up(points_to_labels(points))


def _labels(spec, points, labels_by_index, perm) -> np.ndarray:
    """Integer labels; a mirror twin's are derived from its first image's so the set stays exactly symmetric."""
    w = spec["geometry"]["width"]
    if spec["twin_of"] is None:
        return _round_labels(points)
    if spec["twin_of"] == "self":
        lab = _round_labels(points)
        first = np.flatnonzero(perm >= np.arange(len(perm)))  # one of each pair, and midline points
        lab[perm[first]] = np.stack([w - 1 - lab[first, 0], lab[first, 1]], axis=1)
        return lab
    src = labels_by_index[spec["twin_of"]]
    return np.stack([w - 1 - src[perm, 0], src[perm, 1]], axis=1)


# ------------------------------------------------------------------------------------------------------ writing
def _looks_synthetic(out_dir) -> bool:
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == GENERATOR


def _prepare_dir(out_dir):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not _looks_synthetic(out_dir):
            raise FileExistsError(f"{out_dir}: folder is not empty and holds no {MARKER} from a previous synthetic "
                                  f"dataset; refusing to write into it (choose an empty or new folder)")
        # Our own earlier output: remove exactly what we write, so no stale image survives a smaller rerun.
        old = glob.glob(os.path.join(out_dir, "train", "images", "*.jpg"))
        old += glob.glob(os.path.join(out_dir, "test", "images", "*.jpg"))
        old += [os.path.join(out_dir, p) for p in ("train/landmarks.csv", "train/groups.csv",
                                                    "test/test_points.csv", "test_truth.csv")]
        for p in old:
            if os.path.isfile(p):
                os.remove(p)
    for sub in ("train/images", "test/images"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)


def _landmarks_text(names, labels, k) -> str:
    cols = ["file_name"] + [f"Point_{i}_{a}" for i in range(k) for a in "XY"]
    lines = ["\t".join(cols)]
    for name, lab in zip(names, labels):
        lines.append(name + "\t" + "\t".join(map(str, np.asarray(lab).reshape(-1).tolist())))
    return "\n".join(lines) + "\n"


def write_dataset(out_dir, n_train: int = 240, n_test: int = 40, num_points: int = 971, seed: int = 0,
                  min_size: int = 96, max_size: int = 160, write_test_truth: bool = False) -> dict:
    """Write a synthetic dataset in the contest's format (see the module docstring for the files).

    Deterministic: the same arguments give byte-identical files (on one Pillow/libjpeg build). Labels are integer
    continuous-convention pixels of the original image (rounded to nearest, halves up); a few may lie slightly
    outside the image.

    Args:
        out_dir: target folder; created if missing. A non-empty folder is accepted only if it holds the marker of a
            previous synthetic dataset, whose files are then replaced.
        n_train, n_test: image counts (``n_train >= 1``, ``n_test >= 0``).
        num_points: ``K >= MIN_POINTS`` (15) landmarks per face; tested up to 2000.
            (Exact mirror recovery by ``estimate_mirror_permutation`` needs enough images; see the module docstring.)
        seed: integer seed.
        min_size, max_size: image sides in pixels (both sides of every image lie in ``[min_size, max_size]``).
        write_test_truth: also write ``out_dir/test_truth.csv`` (test labels, for tests only).
    Returns:
        dict: ``out_dir``, ``train_images``, ``train_landmarks``, ``train_groups``, ``test_images``,
        ``test_points``, ``test_truth`` (paths; ``test_truth`` is None unless written), ``n_train``, ``n_test``,
        ``num_points``, ``n_groups`` (training persons), ``seed``.
    Raises:
        ValueError: bad counts or sizes; FileExistsError: non-empty foreign folder; NotADirectoryError.
    """
    n_train, n_test, num_points, seed = int(n_train), int(n_test), int(num_points), int(seed)
    min_size, max_size = int(min_size), int(max_size)
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    layout = _layout(num_points)  # validates num_points
    out_dir = os.fspath(out_dir)
    _prepare_dir(out_dir)
    meta = {"generator": GENERATOR, "version": FORMAT_VERSION, "n_train": n_train, "n_test": n_test,
            "num_points": num_points, "seed": seed, "min_size": min_size, "max_size": max_size,
            "write_test_truth": bool(write_test_truth)}
    with atomic_open(os.path.join(out_dir, MARKER), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")

    specs = _plan(n_train, n_test, num_points, seed, min_size, max_size)
    labels = {}
    for spec in specs:
        r = _render(spec, layout)
        labels[spec["index"]] = _labels(spec, r["points"], labels, layout.perm)
        path = os.path.join(out_dir, spec["split"], "images", spec["file_name"])
        Image.fromarray(r["image"], "RGB").save(path, "JPEG", quality=JPEG_QUALITY)

    train = [s for s in specs if s["split"] == "train"]
    test = [s for s in specs if s["split"] == "test"]
    paths = {
        "train_images": os.path.join(out_dir, "train", "images"),
        "train_landmarks": os.path.join(out_dir, "train", "landmarks.csv"),
        "train_groups": os.path.join(out_dir, "train", "groups.csv"),
        "test_images": os.path.join(out_dir, "test", "images"),
        "test_points": os.path.join(out_dir, "test", "test_points.csv"),
        "test_truth": os.path.join(out_dir, "test_truth.csv") if write_test_truth else None,
    }
    with atomic_open(paths["train_landmarks"], "w", newline="") as f:
        f.write(_landmarks_text([s["file_name"] for s in train], [labels[s["index"]] for s in train], num_points))
    with atomic_open(paths["train_groups"], "w", newline="") as f:
        f.write("file_name\tgroup\n" + "".join(f"{s['file_name']}\t{s['group']}\n" for s in train))
    with atomic_open(paths["test_points"], "w", newline="") as f:
        f.write("file_name\tpoint_index_list\n")
        f.write("".join(f"{s['file_name']}\t[{', '.join(map(str, s['test_indices']))}]\n" for s in test))
    if write_test_truth:
        with atomic_open(paths["test_truth"], "w", newline="") as f:
            f.write(_landmarks_text([s["file_name"] for s in test], [labels[s["index"]] for s in test], num_points))
    return dict(paths, out_dir=out_dir, n_train=n_train, n_test=n_test, num_points=num_points,
                n_groups=len({s["group"] for s in train}), seed=seed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="landmarks synthetic",
                                 description="Write a synthetic face-landmark dataset in the contest's format.")
    ap.add_argument("out_dir")
    ap.add_argument("--n-train", type=int, default=240)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--num-points", type=int, default=971)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-size", type=int, default=96)
    ap.add_argument("--max-size", type=int, default=160)
    ap.add_argument("--test-truth", action="store_true", help="also write test_truth.csv (for tests only)")
    a = ap.parse_args(argv)
    try:
        summary = write_dataset(a.out_dir, a.n_train, a.n_test, a.num_points, a.seed, a.min_size, a.max_size,
                                a.test_truth)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
