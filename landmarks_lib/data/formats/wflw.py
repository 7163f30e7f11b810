"""WFLW annotation files (``list_98pt_rect_attr_train.txt``, ``list_98pt_rect_attr_test.txt``).

One face per line, 207 whitespace-separated fields::

    x0 y0 x1 y1 ... x97 y97  x_min y_min x_max y_max  pose expression illumination make_up occlusion blur  path

- 196 coordinates (98 points, ``x y``);
- the face box, 4 integers ``x_min y_min x_max y_max``;
- 6 attribute flags, ``0`` or ``1``, in that order (``ATTRIBUTES``);
- the image path relative to the images folder (``51--Dancing/51_Dancing_Dancing_51_1.jpg``), without whitespace.

Pixel convention: coordinates are **pixel indices** (0-based: the centre of the top-left pixel is ``(0, 0)``), the
project's label convention, so a value ``v`` becomes the label ``v`` unchanged (``WFLW_OFFSET`` = 0; continuous pixels
``v + 0.5``). The box is read in the same convention: each of its four values becomes ``value + 0.5`` in the
``Dataset``'s continuous ``boxes``; ``write`` rounds ``box - 0.5`` back to integers.

A photo with several faces is listed once per face: its path then repeats, one row per face (duplicates are kept).
The images folder of a WFLW download is ``WFLW_images`` beside ``WFLW_annotations`` (``images_root``).
"""

from __future__ import annotations

import glob
import os

import numpy as np

from ...core.files import atomic_open
from ..tables import DataFormatError, LandmarksTable, is_number
from .base import Dataset, check_inside, labels_from, read_found, relative_name_problem

#: Points per face.
NUM_POINTS = 98
#: The attribute flags of a line, in file order (``Dataset.attributes`` keys).
ATTRIBUTES = ("pose", "expression", "illumination", "make_up", "occlusion", "blur")
#: Fields per line: coordinates, box, flags, path.
NUM_FIELDS = 2 * NUM_POINTS + 4 + len(ATTRIBUTES) + 1
#: File value = label + WFLW_OFFSET (pixel indices, the label convention).
WFLW_OFFSET = 0.0
#: Where a WFLW download keeps its annotation files, below the data folder.
ANNOTATION_SUBDIR = os.path.join("WFLW_annotations", "list_98pt_rect_attr_train_test")
#: The images folder of a WFLW download, below the data folder.
IMAGES_SUBDIR = "WFLW_images"

_BOX = slice(2 * NUM_POINTS, 2 * NUM_POINTS + 4)
_FLAGS = slice(2 * NUM_POINTS + 4, NUM_FIELDS - 1)


def _first_line(path, max_lines: int = 100) -> str | None:
    """The first non-blank line of a text file (within ``max_lines``), or ``None`` (unreadable, not UTF-8)."""
    try:
        with open(path, encoding="utf-8") as f:
            for _, text in zip(range(max_lines), f):
                if text.strip():
                    return text
    except (OSError, UnicodeDecodeError):
        return None
    return None


def looks_like_annotation(path) -> bool:
    """Whether ``path``'s first non-blank line has ``NUM_FIELDS`` fields: numbers, then a path (not a number)."""
    line = _first_line(path)
    if line is None:
        return False
    parts = line.split()
    return len(parts) == NUM_FIELDS and not is_number(parts[-1]) and all(is_number(p) for p in parts[:-1])


def find_annotation(data_dir) -> str | None:
    """The WFLW annotation file of a data folder, or ``None``.

    Candidates are the ``*.txt`` files directly in ``data_dir``, then those in ``data_dir/WFLW_annotations/
    list_98pt_rect_attr_train_test/`` (``ANNOTATION_SUBDIR``), kept when ``looks_like_annotation``; a name
    containing ``train`` is preferred, then the folder order, then the name.
    """
    d = os.fspath(data_dir)
    found = []
    for rank, folder in enumerate((d, os.path.join(d, ANNOTATION_SUBDIR))):
        for p in sorted(glob.glob(os.path.join(glob.escape(folder), "*.txt"))):
            if os.path.isfile(p) and looks_like_annotation(p):
                found.append(("train" not in os.path.basename(p).lower(), rank, p))
    return min(found)[2] if found else None


def images_root(data_dir) -> str:
    """The folder a data folder's image paths are relative to (absolute): ``data_dir/WFLW_images`` when it
    exists, else ``data_dir``."""
    d = os.path.abspath(os.fspath(data_dir))
    sub = os.path.join(d, IMAGES_SUBDIR)
    return sub if os.path.isdir(sub) else d


def to_labels(values) -> np.ndarray:
    """File values (pixel indices) -> labels: ``v - WFLW_OFFSET``; ``int16`` when every value is an integer in range,
    else ``float32`` (``NaN`` stays ``NaN``)."""
    return labels_from(values, WFLW_OFFSET)


def _parse_line(parts, where: str):
    """``(coords float64 [196], box float64 [4], flags bool [6])`` of one line's fields.

    Raises:
        DataFormatError: ``where`` (``path:line``) and the bad field.
    """
    if len(parts) != NUM_FIELDS:
        raise DataFormatError(f"{where}: expected {NUM_FIELDS} whitespace-separated fields (196 coordinates, 4 box "
                              f"values, 6 flags, the image path), got {len(parts)}")
    try:
        nums = np.array([float(p) for p in parts[:-1]], dtype=np.float64)
    except ValueError:
        bad = next(j for j, p in enumerate(parts[:-1]) if not is_number(p))
        raise DataFormatError(f"{where}: field {bad + 1} is not a number: {parts[bad]!r}") from None
    if np.isinf(nums[:_BOX.start]).any():
        raise DataFormatError(f"{where}: an infinite coordinate")
    if not np.isfinite(nums[_BOX]).all():
        raise DataFormatError(f"{where}: the face box {parts[_BOX]} is not four finite numbers")
    flags = nums[_FLAGS]
    if not np.isin(flags, (0.0, 1.0)).all():
        j = int(np.flatnonzero(~np.isin(flags, (0.0, 1.0)))[0])
        raise DataFormatError(f"{where}: attribute flag {ATTRIBUTES[j]} must be 0 or 1, got {parts[_FLAGS][j]!r}")
    return nums[:_BOX.start], nums[_BOX], flags.astype(bool)


def read(path, images_root, allow_links_outside: bool = False) -> Dataset:
    """Read a WFLW annotation file.

    Args:
        path: the annotation file (UTF-8 text; blank lines are ignored and still count in line numbers).
        images_root: the folder the image paths are relative to.
        allow_links_outside: accept image paths that resolve outside ``images_root`` through a symbolic link.
    Returns:
        ``Dataset`` (format ``wflw``, ``root`` = ``images_root`` made absolute): ``table.names`` the image paths as
        written (repeated for a photo with several faces); ``table.points`` ``[N, 98, 2]`` labels = the values
        (pixel indices), ``int16`` when every value is an integer, else ``float32`` (``nan`` in the file = an
        unlabelled point); ``table.lines`` ``int64 [N]`` 1-based line numbers; ``boxes`` ``float32 [N, 4]``
        continuous ``x0, y0, x1, y1`` (each file value + 0.5); ``attributes`` ``{name: bool [N]}`` for
        ``ATTRIBUTES``.
    Raises:
        FileNotFoundError: no such file.
        DataFormatError: ``path:line`` and what is wrong: a wrong field count, a field that is not a number, an
            infinite coordinate, a flag that is not 0 or 1, an unsafe image path (``check_inside``); a file without
            faces, or text that is not UTF-8.
    """
    root = os.path.abspath(os.fspath(images_root))
    names, coords, boxes, flags, lines = [], [], [], [], []
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, text in enumerate(f, 1):
                parts = text.split()
                if not parts:
                    continue
                where = f"{path}:{lineno}"
                c, b, fl = _parse_line(parts, where)
                try:
                    check_inside(root, parts[-1], allow_links_outside)
                except DataFormatError as e:
                    raise DataFormatError(f"{where}: {e}") from None
                names.append(parts[-1])
                coords.append(c)
                boxes.append(b)
                flags.append(fl)
                lines.append(lineno)
        except UnicodeDecodeError as e:
            raise DataFormatError(f"{path}: not UTF-8 text ({e})") from None
    if not names:
        raise DataFormatError(f"{path}:1: no faces (every line is blank)")
    points = to_labels(np.stack(coords).reshape(-1, NUM_POINTS, 2))
    table = LandmarksTable(names, points, lines=np.asarray(lines, dtype=np.int64))
    box = (np.stack(boxes) - WFLW_OFFSET + 0.5).astype(np.float32)
    attrs = {a: np.asarray([fl[j] for fl in flags], dtype=bool) for j, a in enumerate(ATTRIBUTES)}
    return Dataset("wflw", root, table, os.fspath(path), box, attrs)


def read_dataset(data_dir, allow_links_outside: bool = False) -> Dataset:
    """The faces of a WFLW data folder: ``read(find_annotation(data_dir), images_root(data_dir))``.

    Raises:
        DataFormatError: no annotation file (``find_annotation``), or ``read``'s errors.
    """
    return read_found(data_dir, find_annotation, read, images_root, f"WFLW annotation file (a .txt whose lines hold "
                      f"{NUM_FIELDS} fields) in the folder or in {ANNOTATION_SUBDIR}", allow_links_outside)


def _box_ints(boxes, points, n: int) -> np.ndarray:
    """``int64 [n, 4]`` file boxes: ``round(box - 0.5)`` (halves up) of continuous boxes, or when ``boxes`` is
    ``None`` the bounds of each face's labelled points (floor of the minimum, ceiling of the maximum label; zeros
    for a face without labelled points)."""
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(n, 4) - 0.5 + WFLW_OFFSET
        if not np.isfinite(b).all():
            raise ValueError("boxes must be finite")
        return np.floor(b + 0.5).astype(np.int64)
    lab = np.asarray(points, dtype=np.float64) - 0.5 + WFLW_OFFSET
    out = np.zeros((n, 4), dtype=np.int64)
    for i, p in enumerate(lab):
        p = p[np.isfinite(p).all(axis=1)]
        if len(p):
            out[i] = [*np.floor(p.min(axis=0)), *np.ceil(p.max(axis=0))]
    return out


def _flag_matrix(attributes, n: int) -> np.ndarray:
    """``int [n, 6]`` flags in ``ATTRIBUTES`` order from ``{name: bool [n]}`` (absent names: 0)."""
    attributes = attributes or {}
    unknown = sorted(set(attributes) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown WFLW attributes {unknown}; expected some of {list(ATTRIBUTES)}")
    out = np.zeros((n, len(ATTRIBUTES)), dtype=np.int64)
    for j, a in enumerate(ATTRIBUTES):
        if a in attributes:
            out[:, j] = np.asarray(attributes[a], dtype=bool).reshape(n)
    return out


def write(path, names, points, boxes=None, attributes=None) -> None:
    """Write a WFLW annotation file atomically (``atomic_open``), one line per face.

    Args:
        path: the file to write.
        names: ``N`` image paths relative to the images folder (``/``-separated, no whitespace).
        points: ``[N, 98, 2]`` continuous pixels; written as pixel indices ``p - 0.5`` with 6 decimals (``NaN`` is
            written as ``nan``).
        boxes: optional ``[N, 4]`` continuous ``x0, y0, x1, y1``; written as integers ``round(b - 0.5)``. Default:
            the bounds of each face's points (see ``_box_ints``).
        attributes: optional ``{name: bool [N]}`` with names from ``ATTRIBUTES``; absent flags are written as 0.
    Raises:
        ValueError: a shape other than ``[N, 98, 2]``, an unsafe name or one with whitespace, non-finite boxes,
            unknown attribute names.
    """
    pts = np.asarray(points, dtype=np.float64)
    n = len(names)
    if pts.shape != (n, NUM_POINTS, 2):
        raise ValueError(f"{path}: expected points [{n}, {NUM_POINTS}, 2], got shape {pts.shape}")
    for name in names:
        why = relative_name_problem(name) or ("contains whitespace" if len(name.split()) != 1 else None)
        if why:
            raise ValueError(f"{path}: image path {name!r}: {why}")
    values = pts - 0.5 + WFLW_OFFSET
    box = _box_ints(boxes, pts, n)
    flags = _flag_matrix(attributes, n)
    with atomic_open(path, "w", encoding="utf-8") as f:
        for name, v, b, fl in zip(names, values, box, flags):
            coords = " ".join(f"{x:.6f}" for x in v.reshape(-1))
            f.write(f"{coords} {' '.join(map(str, b))} {' '.join(map(str, fl))} {name}\n")
