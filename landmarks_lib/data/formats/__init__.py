"""Landmark datasets in the field's file formats, read into the one table the pipeline uses.

Every reader returns a ``Dataset``: a ``tables.LandmarksTable`` whose ``names`` are image paths relative to the
dataset's ``root`` (``/``-separated, never absolute, never ``..``) and whose ``points`` are ``[N, K, 2]`` labels in the
project's convention (``core.coords.LABEL_OFFSET``: continuous pixels = label + 0.5; ``int16`` when every value is an
integer in range, else ``float32``; ``NaN`` = an unlabelled point, left out of the loss and of every metric). Each
reader converts from its file's own pixel convention at the boundary, and each format has a writer that converts back,
so a file read and written back unchanged equals its input (within 1e-3 px).

Formats (``FORMATS``; ``detect_format`` picks one from a folder's files; the ``data_format`` parameter names one):

- ``contest``: ``train/landmarks.csv`` + ``train/images/`` (+ ``test/``), pixel indices (``tables``).
- ``pts``: a folder searched recursively for images with an iBUG ``.pts`` beside them (300-W, 300-VW, menpo),
  1-based (the first pixel's centre is ``(1, 1)``): ``formats.pts``.
- ``wflw``: a WFLW annotation file (196 coordinates, a face box, 6 attribute flags, the image path), pixel indices:
  ``formats.wflw``.
- ``coco``: a COCO-WholeBody JSON (``face_kpts``) or a plain COCO keypoints JSON, pixel indices: ``formats.coco``.
"""

from __future__ import annotations

import os

from ..tables import DataFormatError, read_landmarks
from . import coco, pts, wflw
from .base import FORMATS, Dataset, check_inside, photo_groups, relative_name_problem

__all__ = ["FORMATS", "Dataset", "check_inside", "detect_format", "photo_groups", "read_dataset",
           "relative_name_problem"]


def detect_format(data_dir) -> str:
    """The format of a data folder: ``contest`` when ``train/landmarks.csv`` exists, ``wflw`` for a WFLW annotation
    file (``*.txt`` whose lines hold 207 fields), ``coco`` for a ``*.json`` with ``annotations``, ``pts`` when any
    ``.pts`` file lies below it.

    Raises:
        DataFormatError: none of these.
    """
    d = os.fspath(data_dir)
    if os.path.isfile(os.path.join(d, "train", "landmarks.csv")):
        return "contest"
    if wflw.find_annotation(d) is not None:
        return "wflw"
    if coco.find_annotation(d) is not None:
        return "coco"
    for _, _, files in os.walk(d):
        if any(f.lower().endswith(".pts") for f in files):
            return "pts"
    raise DataFormatError(f"{d}: no landmarks found: expected train/landmarks.csv (contest), a WFLW annotation .txt, "
                          f"a COCO keypoints .json, or images with .pts files beside them")


def read_dataset(data_dir, data_format: str = "auto", allow_links_outside: bool = False, bad_rows: str = "error",
                 cache_dir=None) -> Dataset:
    """Read the labelled faces of ``data_dir`` in ``data_format`` (``auto``: ``detect_format``); ``bad_rows`` and
    ``cache_dir`` are the contest reader's (``tables.read_landmarks``).

    Raises:
        DataFormatError: unknown format, or the reader's error (file and line).
    """
    fmt = detect_format(data_dir) if data_format in ("auto", "", None) else data_format
    if fmt == "pts":
        return pts.read_tree(data_dir, allow_links_outside=allow_links_outside)
    if fmt == "wflw":
        return wflw.read_dataset(data_dir, allow_links_outside=allow_links_outside)
    if fmt == "coco":
        return coco.read_dataset(data_dir, allow_links_outside=allow_links_outside)
    if fmt == "contest":
        root = os.path.join(data_dir, "train", "images")
        path = os.path.join(data_dir, "train", "landmarks.csv")
        table = read_landmarks(path, bad_rows=bad_rows, cache_dir=cache_dir, allow_links_outside=allow_links_outside)
        return Dataset("contest", root, table, path)
    raise DataFormatError(f"data_format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
