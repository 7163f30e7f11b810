"""What every format reader shares: the ``Dataset`` it returns, safe relative image paths, photo groups."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..tables import DataFormatError, LandmarksTable

FORMATS = ("contest", "pts", "wflw", "coco")

#: A final ``_k`` (k = 1, 2, ... without a leading zero) on an image's stem: faces of one photo (300-W's naming).
_FACE_SUFFIX = re.compile(r"^(.+)_([1-9][0-9]*)$")


@dataclass
class Dataset:
    """A labelled set of face images in one of ``FORMATS``.

    Attributes:
        format: one of ``FORMATS``.
        root: the folder ``table.names`` are relative to (absolute).
        table: ``LandmarksTable``; names relative to ``root`` (``/``-separated); points in label convention.
        source: the file(s) the labels came from (for messages).
        boxes: ``float32 [N, 4]`` face boxes given by the file (``x0, y0, x1, y1``, continuous original pixels), or
            ``None`` when the format has none.
        attributes: ``{name: bool [N]}`` per-image subsets given by the file (WFLW's six), possibly empty; COCO
            adds ``"image_id"`` (``int64 [N]``, not a subset: the results writer's ids).
    """

    format: str
    root: str
    table: LandmarksTable
    source: str
    boxes: np.ndarray | None = None
    attributes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)


def photo_groups(names) -> list:
    """The photo of each face: names in one folder whose stems differ only in a final ``_k`` (k = 1, 2, ... without
    a leading zero) are one photo, as 300-W names them (``helen/100032540_1.jpg`` and ``helen/100032540_2.jpg``).

    Args:
        names: relative image paths (``/``-separated).
    Returns:
        one group label (a string) per name: the folder and the stem without its ``_k``.
    """
    out = []
    for n in names:
        folder, base = os.path.split(n)
        stem = os.path.splitext(base)[0]
        m = _FACE_SUFFIX.match(stem)
        out.append(f"{folder}/{m.group(1) if m else stem}" if folder else (m.group(1) if m else stem))
    return out


def relative_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an image below a dataset's root, or ``None``: it must be a relative, ``/``-separated
    path without ``.`` or ``..`` parts, a drive or a backslash."""
    if not name:
        return "empty image path"
    if name.startswith("/") or "\\" in name or name[1:2] == ":":
        return f"image path {name!r} must be relative to the data folder, '/'-separated"
    if any(p in ("", ".", "..") for p in name.split("/")):
        return f"image path {name!r} has an empty, '.' or '..' part"
    return None


def check_inside(root, name: str, allow_links_outside: bool = False) -> str:
    """The absolute path of image ``name`` below ``root``.

    Raises:
        DataFormatError: an unsafe name (``relative_name_problem``), or a path that resolves outside ``root``
            (through a symbolic link) while ``allow_links_outside`` is false.
    """
    why = relative_name_problem(name)
    if why:
        raise DataFormatError(f"{root}: {why}")
    path = os.path.join(root, *name.split("/"))
    if not allow_links_outside:
        real, base = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            raise DataFormatError(f"{path}: resolves to {real}, outside the data folder {base}; set the parameter "
                                  f"allow_links_outside to true to read it")
    return path


def labels_from(values, offset: float) -> np.ndarray:
    """File values -> labels (``core.coords.LABEL_OFFSET`` convention): ``v - offset``; ``int16`` when every value
    is an integer in range, else ``float32`` (``NaN``, an unlabelled point, stays ``NaN``)."""
    lab = np.asarray(values, dtype=np.float64) - offset
    if np.all(lab == np.round(lab)) and np.all(np.abs(lab) < 32767):
        return lab.astype(np.int16)
    return lab.astype(np.float32)


def read_found(data_dir, find, read, images_root, what: str, allow_links_outside: bool = False) -> Dataset:
    """``read(find(data_dir), images_root(data_dir), allow_links_outside)``: a format whose labels are one file found
    in the data folder.

    Raises:
        DataFormatError: ``find`` finds nothing (the message says ``what`` was looked for), or ``read``'s errors.
    """
    path = find(data_dir)
    if path is None:
        raise DataFormatError(f"{data_dir}: no {what}")
    return read(path, images_root(data_dir), allow_links_outside)
