"""iBUG ``.pts`` landmark files (300-W, 300-VW, menpo): one file per image, beside it.

A ``.pts`` file, with or without its header::

    version: 1
    n_points:  68
    {
    x y          (n_points lines)
    }

A point written ``nan nan`` is unlabelled (NaN: left out of the loss and of every metric).
Coordinates are **1-based** (MATLAB's convention: the centre of the top-left pixel is ``(1, 1)``). At the boundary a
value ``v`` becomes the label ``v - 1`` (``core.coords.LABEL_OFFSET``: continuous pixels ``v - 0.5``); ``write``
adds the 1 back. The image of ``NAME.pts`` is ``NAME.<ext>`` or, when the ``.pts`` keeps the image's extension,
``NAME.<ext>.pts``, with ``<ext>`` one of ``IMAGE_EXTENSIONS``.
"""

from __future__ import annotations

import os

import numpy as np

from ...core.files import atomic_open
from ..tables import DataFormatError, LandmarksTable
from .base import Dataset, check_inside, labels_from

#: Image file extensions searched for beside a ``.pts`` file (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

#: ``.pts`` value = label + PTS_OFFSET (1-based files, label convention = pixel indices).
PTS_OFFSET = 1.0


def _numbers(line: str, path, lineno: int):
    parts = line.split()
    if len(parts) != 2:
        raise DataFormatError(f"{path}:{lineno}: expected two numbers 'x y', got {line.strip()!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise DataFormatError(f"{path}:{lineno}: not a number in {line.strip()!r}") from None
    if np.isinf(x) or np.isinf(y):
        raise DataFormatError(f"{path}:{lineno}: infinite coordinate in {line.strip()!r}")
    return x, y


def read(path) -> np.ndarray:
    """One ``.pts`` file, as written: ``float64 [K, 2]`` 1-based values (no conversion).

    Raises:
        DataFormatError: ``path:line`` and what is wrong (a line that is not two numbers, a header whose ``n_points``
            disagrees with the points, a missing ``}``, no points).
    """
    with open(path, encoding="utf-8", errors="strict") as f:
        lines = f.read().splitlines()
    declared, body, start, closed = None, [], 0, True
    for i, text in enumerate(lines[:3]):
        key = text.split(":", 1)[0].strip().lower()
        if key == "version":
            start = i + 1
        elif key == "n_points":
            try:
                declared = int(text.split(":", 1)[1])
            except ValueError:
                raise DataFormatError(f"{path}:{i + 1}: n_points is not an integer: {text.strip()!r}") from None
            start = i + 1
        elif text.strip() == "{":
            start, closed = i + 1, False
            break
    for i in range(start, len(lines)):
        text = lines[i].strip()
        if not text:
            continue
        if text == "}":
            closed = True
            break
        body.append(_numbers(text, path, i + 1))
    if not closed:
        raise DataFormatError(f"{path}:{len(lines)}: the points block opened with '{{' has no closing '}}'")
    if not body:
        raise DataFormatError(f"{path}:1: no points")
    if declared is not None and declared != len(body):
        raise DataFormatError(f"{path}:2: n_points is {declared}, the file holds {len(body)} points")
    return np.asarray(body, dtype=np.float64)


def write(path, values, header: bool = True) -> None:
    """Write one ``.pts`` file atomically: ``values`` ``[K, 2]`` 1-based (as ``read`` returns them), 6 decimals
    (``%.6g`` would lose precision on large images)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 2:
        raise ValueError(f"{path}: expected [K, 2] points, got shape {v.shape}")
    rows = [f"{x:.6f} {y:.6f}" for x, y in v]
    text = ("version: 1\n" f"n_points:  {len(v)}\n" "{\n" if header else "") + "\n".join(rows) + ("\n}\n" if header
                                                                                               else "\n")
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def image_for(pts_path) -> str | None:
    """The image a ``.pts`` file labels (``NAME.<ext>`` or ``NAME.<ext>.pts``), or ``None`` when there is none."""
    base = pts_path[:-4]
    if os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(base):
        return base
    folder, stem = os.path.split(base)
    try:
        near = sorted(f for f in os.listdir(folder or ".") if f.startswith(stem))
    except OSError:
        return None
    for f in near:  # NAME.<ext> in any letter case
        if f[len(stem):].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, f)):
            return os.path.join(folder, f)
    return None


def find(root) -> list:
    """``(image_rel, pts_rel)`` pairs below ``root``, searched recursively (sorted by image path, ``/``-separated);
    ``.pts`` files without an image are left out."""
    root = os.path.abspath(root)
    pairs = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if not f.lower().endswith(".pts"):
                continue
            img = image_for(os.path.join(folder, f))
            if img is not None:
                rel = os.path.relpath(img, root).replace(os.sep, "/")
                pairs.append((rel, os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")))
    pairs.sort()
    return pairs


def to_labels(values) -> np.ndarray:
    """1-based ``.pts`` values -> labels (``float32``, ``int16`` when all integers): ``v - 1``."""
    return labels_from(values, PTS_OFFSET)


def from_points(points) -> np.ndarray:
    """Continuous pixels ``[..., 2]`` -> 1-based ``.pts`` values (``float64``): ``p + 0.5``."""
    return np.asarray(points, dtype=np.float64) + (PTS_OFFSET - 0.5)


def read_tree(root, allow_links_outside: bool = False) -> Dataset:
    """Every image with a ``.pts`` beside it below ``root``, as a ``Dataset`` (format ``pts``).

    Returns:
        ``Dataset``: names relative to ``root``; points ``[N, K, 2]`` labels (``v - 1``), ``float32`` unless every
        value is an integer (``int16``); ``table.lines`` all 1 (one file per row: messages name the file).
    Raises:
        DataFormatError: no ``.pts`` with an image below ``root``; a file's own error (``read``); files with
            different point counts (both named); an image path outside ``root`` (``check_inside``).
    """
    root = os.path.abspath(os.fspath(root))
    pairs = find(root)
    if not pairs:
        raise DataFormatError(f"{root}: no image with a .pts file beside it (searched recursively)")
    values, k0 = [], None
    for img, p in pairs:
        check_inside(root, img, allow_links_outside)
        v = read(os.path.join(root, p))
        if k0 is None:
            k0 = (p, len(v))
        elif len(v) != k0[1]:
            raise DataFormatError(f"{os.path.join(root, p)}:2: {len(v)} points, {k0[0]} has {k0[1]}: one layout "
                                  f"per dataset")
        values.append(v)
    labels = to_labels(np.stack(values))
    table = LandmarksTable([img for img, _ in pairs], labels, lines=np.ones(len(pairs), np.int64))
    return Dataset("pts", root, table, root)


def write_tree(out_dir, names, points, header: bool = True) -> list:
    """Write one ``.pts`` per image below ``out_dir``: ``names`` relative image paths (sub-folders kept, extension
    replaced by ``.pts``), ``points`` ``[N, K, 2]`` continuous pixels (NaN rows are written as NaN).

    Returns:
        the written paths.
    Raises:
        ValueError: two names with one stem in a folder (their ``.pts`` would collide), named before writing.
    """
    targets = [os.path.splitext(n)[0] + ".pts" for n in names]
    seen = {}
    for n, t in zip(names, targets):
        if t in seen:
            raise ValueError(f"{seen[t]!r} and {n!r} would both be written to {t!r}: rename one of the images")
        seen[t] = n
    out = []
    for t, p in zip(targets, points):
        path = os.path.join(out_dir, *t.split("/"))
        write(path, from_points(p), header)
        out.append(path)
    return out
