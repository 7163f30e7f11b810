"""COCO keypoint annotations: COCO-WholeBody (the 68 face points of ``face_kpts``) and plain COCO keypoints.

An annotation JSON holds ``images`` (``{"id", "file_name", ...}``) and ``annotations``, one per person or face:

- COCO-WholeBody (``kind="wholebody"``): ``face_kpts`` (68 x ``x, y, v``), ``face_box`` ``[x, y, w, h]`` and
  ``face_valid``. Only annotations whose ``face_valid`` is true are faces; the others (a body without a visible
  face, or without ``face_valid``) are skipped, and listed in ``table.skipped`` as ``(index + 1, file_name,
  reason)``.
- plain COCO keypoints (``kind="keypoints"``): ``keypoints`` (``K`` x ``x, y, v``, one ``K`` per file) and ``bbox``
  ``[x, y, w, h]``. Annotations whose ``num_keypoints`` is 0 are skipped (listed the same way); without
  ``num_keypoints`` the points with ``v > 0`` are counted.

Pixel convention: keypoint coordinates are **pixel indices** (the centre of the top-left pixel is ``(0, 0)``, as
detectron2 reads COCO keypoints), the project's label convention: a value becomes the label unchanged
(``COCO_OFFSET`` = 0; continuous pixels ``v + 0.5``). A point with ``v == 0`` is unlabelled: ``NaN`` (COCO writes
it as ``0, 0, 0``); ``v`` 1 (labelled, hidden) and 2 (visible) are both labelled points. Boxes are continuous
already (``x0 = x``, ``x1 = x + w``, no offset).

The ``Dataset``: ``table.names`` the ``file_name`` of each face's image (repeated for a photo with several faces);
``table.lines`` the 1-based position of each face in ``annotations`` (a JSON file has no lines to name);
``attributes["image_id"]`` the ``int64 [N]`` image id of each face (not a bool subset: it lets ``write_results``
name the images); ``boxes`` ``float32 [N, 4]`` (``NaN`` rows for annotations without a box).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from ...core.files import atomic_open
from ..tables import DataFormatError, LandmarksTable
from .base import Dataset, check_inside, labels_from, read_found, relative_name_problem

#: Points of ``face_kpts`` in COCO-WholeBody.
WHOLEBODY_FACE_POINTS = 68
#: File value = label + COCO_OFFSET (pixel indices, the label convention).
COCO_OFFSET = 0.0
#: ``kind`` -> (keypoints key, box key).
KEYS = {"wholebody": ("face_kpts", "face_box"), "keypoints": ("keypoints", "bbox")}
#: The images folder below a data folder, when it exists.
IMAGES_SUBDIR = "images"
#: Where COCO keeps its annotation files, below the data folder.
ANNOTATION_SUBDIR = "annotations"

_SCAN_BLOCK = 1 << 20


def looks_like_annotation(path) -> bool:
    """Whether ``path`` looks like a COCO annotation JSON: a JSON object (first non-blank byte ``{``) whose text
    holds the keys ``"annotations"`` and ``"images"``. A cheap scan in 1 MiB blocks (the file may be large), not a
    parse: ``read`` checks the structure."""
    want = {b'"annotations"', b'"images"'}
    try:
        with open(path, "rb") as f:
            head = f.read(_SCAN_BLOCK)
            if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
                return False
            tail = b""
            while head and want:
                block = tail + head
                want = {k for k in want if k not in block}
                tail, head = block[-16:], f.read(_SCAN_BLOCK)
    except OSError:
        return False
    return not want


def find_annotation(data_dir) -> str | None:
    """The COCO annotation JSON of a data folder, or ``None``.

    Candidates are the ``*.json`` files directly in ``data_dir``, then those in ``data_dir/annotations/``, kept when
    ``looks_like_annotation``; preferred: a name containing ``train``, then one containing ``wholebody``, then the
    folder order, then the name.
    """
    d = os.fspath(data_dir)
    found = []
    for rank, folder in enumerate((d, os.path.join(d, ANNOTATION_SUBDIR))):
        for p in sorted(glob.glob(os.path.join(glob.escape(folder), "*.json"))):
            base = os.path.basename(p).lower()
            if os.path.isfile(p) and looks_like_annotation(p):
                found.append(("train" not in base, "wholebody" not in base, rank, p))
    return min(found)[-1] if found else None


def images_root(data_dir) -> str:
    """The folder a data folder's ``file_name`` values are relative to (absolute): ``data_dir/images`` when it
    exists, else ``data_dir`` (the folder of a JSON lying directly in it; a JSON in ``annotations/`` names images
    relative to the data folder, not to ``annotations/``)."""
    d = os.path.abspath(os.fspath(data_dir))
    sub = os.path.join(d, IMAGES_SUBDIR)
    return sub if os.path.isdir(sub) else d


def to_labels(values) -> np.ndarray:
    """File values (pixel indices) -> labels: ``v - COCO_OFFSET``; ``int16`` when every value is an integer in
    range, else ``float32`` (``NaN`` stays ``NaN``)."""
    return labels_from(values, COCO_OFFSET)


def _load(path) -> tuple:
    """``(images, annotations)`` lists of an annotation JSON.

    Raises:
        DataFormatError: not JSON, or not an object with ``images`` and ``annotations`` lists.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(doc, dict):
        raise DataFormatError(f"{path}: expected a JSON object with 'images' and 'annotations', got a "
                              f"{type(doc).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise DataFormatError(f"{path}: '{key}' must be a list")
    return doc["images"], doc["annotations"]


def _image_names(path, images, root, allow_links_outside) -> dict:
    """``{image id: file_name}``, every name checked (``check_inside``).

    Raises:
        DataFormatError: ``path: images[j]: ...``: an entry without an integer ``id`` or a string ``file_name``,
            a repeated id, an unsafe ``file_name``.
    """
    out = {}
    for j, im in enumerate(images):
        where = f"{path}: images[{j}]"
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise DataFormatError(f"{where}: expected an object with an integer 'id' and a string 'file_name'")
        if im["id"] in out:
            raise DataFormatError(f"{where}: image id {im['id']} is repeated")
        try:
            check_inside(root, im["file_name"], allow_links_outside)
        except DataFormatError as e:
            raise DataFormatError(f"{where}: {e}") from None
        out[im["id"]] = im["file_name"]
    return out


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _numbers(value, where: str, what: str) -> np.ndarray:
    """A flat list of JSON numbers as ``float64``.

    Raises:
        DataFormatError: ``where`` and ``what``: not a flat list of numbers (strings, ``null``, booleans, lists).
    """
    arr = np.asarray(value) if isinstance(value, list) else None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iuf" or any(isinstance(v, bool) for v in value):
        raise DataFormatError(f"{where}: '{what}' must be a list of numbers")
    return arr.astype(np.float64)


def _keypoints(ann, key: str, num_points, where: str) -> np.ndarray:
    """``float64 [K, 2]`` file values of one annotation, ``NaN`` where ``v == 0``.

    Raises:
        DataFormatError: ``where``: a missing or non-numeric list, a length that is not ``3 * num_points`` (or not a
            multiple of 3 when ``num_points`` is ``None``), a labelled point that is not finite.
    """
    kp = _numbers(ann.get(key), where, key)
    if len(kp) % 3 or not len(kp) or (num_points is not None and len(kp) != 3 * num_points):
        want = f"{3 * num_points}" if num_points is not None else "a positive multiple of 3"
        raise DataFormatError(f"{where}: '{key}' holds {len(kp)} values, expected {want} (x, y, v per point)")
    kp = kp.reshape(-1, 3)
    xy = kp[:, :2].copy()
    labelled = kp[:, 2] > 0
    if not np.isfinite(xy[labelled]).all():
        raise DataFormatError(f"{where}: '{key}' has a labelled point that is not finite")
    xy[~labelled] = np.nan
    return xy


def _box(ann, key: str, where: str) -> np.ndarray:
    """``float64 [4]`` continuous ``x0, y0, x1, y1`` from ``[x, y, w, h]``; ``NaN`` when the annotation has none.

    Raises:
        DataFormatError: ``where``: a box that is not four finite numbers.
    """
    if ann.get(key) is None:
        return np.full(4, np.nan)
    b = _numbers(ann[key], where, key)
    if len(b) != 4 or not np.isfinite(b).all():
        raise DataFormatError(f"{where}: '{key}' must be four finite numbers [x, y, w, h]")
    return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]])


def _skip_reason(ann, kind: str, key: str) -> str | None:
    """Why an annotation is not a face of the dataset (``None``: it is one)."""
    if kind == "wholebody":
        return None if ann.get("face_valid") in (True, 1) else "face_valid is not true"
    n = ann.get("num_keypoints")
    if n is None:
        kp = ann.get(key)
        n = sum(1 for v in kp[2::3] if v) if isinstance(kp, list) else 1  # a bad list is reported by _keypoints
    return None if n else "num_keypoints is 0"


def _kind(annotations, kind: str) -> str:
    if kind == "auto":
        return "wholebody" if any(isinstance(a, dict) and "face_kpts" in a for a in annotations) else "keypoints"
    if kind not in KEYS:
        raise ValueError(f"kind must be auto, wholebody or keypoints, got {kind!r}")
    return kind


def read(path, images_root, allow_links_outside: bool = False, kind: str = "auto") -> Dataset:
    """Read a COCO-WholeBody or plain COCO keypoints annotation JSON (see the module docstring).

    Args:
        path: the JSON file.
        images_root: the folder ``file_name`` values are relative to.
        allow_links_outside: accept images that resolve outside ``images_root`` through a symbolic link.
        kind: ``wholebody`` (``face_kpts``), ``keypoints`` (``keypoints``) or ``auto`` (``wholebody`` when any
            annotation has ``face_kpts``).
    Returns:
        ``Dataset`` (format ``coco``, ``root`` = ``images_root`` made absolute): ``table.points`` ``[N, K, 2]`` labels
        = the file's values (pixel indices), ``NaN`` for ``v == 0``; ``int16`` when every value is an integer, else
        ``float32``; ``table.lines`` ``int64 [N]`` 1-based positions in ``annotations``; ``table.skipped`` the
        skipped annotations; ``boxes`` ``float32 [N, 4]`` continuous; ``attributes`` ``{"image_id": int64 [N]}``.
    Raises:
        FileNotFoundError: no such file.
        ValueError: a bad ``kind``.
        DataFormatError: ``path: annotations[i]: ...`` (or ``images[j]``): a keypoint list of the wrong length (68
            points for WholeBody; one ``K`` per file), a non-numeric value, an unknown ``image_id``, a bad box, an
            unsafe ``file_name``; not JSON; no face at all.
    """
    images, annotations = _load(path)
    kind = _kind(annotations, kind)
    key, box_key = KEYS[kind]
    root = os.path.abspath(os.fspath(images_root))
    names_by_id = _image_names(path, images, root, allow_links_outside)
    num_points = WHOLEBODY_FACE_POINTS if kind == "wholebody" else None
    names, ids, xy, boxes, lines, skipped = [], [], [], [], [], []
    for i, ann in enumerate(annotations):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataFormatError(f"{where}: expected an object")
        image_id = ann.get("image_id")
        if not _is_int(image_id) or image_id not in names_by_id:
            raise DataFormatError(f"{where}: image_id {image_id!r} is not the id of an entry of 'images'")
        reason = _skip_reason(ann, kind, key)
        if reason is not None:
            skipped.append((i + 1, names_by_id[image_id], reason))
            continue
        xy.append(_keypoints(ann, key, num_points, where))
        num_points = len(xy[-1])
        boxes.append(_box(ann, box_key, where))
        names.append(names_by_id[image_id])
        ids.append(image_id)
        lines.append(i + 1)
    if not names:
        raise DataFormatError(f"{path}: no face annotation ({len(skipped)} skipped: {kind} annotations need "
                              f"{'face_valid true' if kind == 'wholebody' else 'num_keypoints > 0'})")
    table = LandmarksTable(names, to_labels(np.stack(xy)), skipped, np.asarray(lines, dtype=np.int64))
    box = (np.stack(boxes)).astype(np.float32)
    return Dataset("coco", root, table, os.fspath(path), box, {"image_id": np.asarray(ids, dtype=np.int64)})


def read_dataset(data_dir, allow_links_outside: bool = False) -> Dataset:
    """The faces of a COCO data folder: ``read(find_annotation(data_dir), images_root(data_dir))``.

    Raises:
        DataFormatError: no annotation JSON (``find_annotation``), or ``read``'s errors.
    """
    return read_found(data_dir, find_annotation, read, images_root, f"COCO annotation .json (with 'images' and "
                      f"'annotations') in the folder or in {ANNOTATION_SUBDIR}/", allow_links_outside)


def _triples(points) -> list:
    """``[K, 2]`` continuous pixels -> the flat ``x, y, v`` list of a file: pixel indices ``p - 0.5`` (6 decimals)
    with ``v = 2`` (labelled), ``0, 0, 0`` for a ``NaN`` point."""
    out = []
    for x, y in np.asarray(points, dtype=np.float64) - 0.5 + COCO_OFFSET:
        out += [round(float(x), 6), round(float(y), 6), 2] if np.isfinite(x) and np.isfinite(y) else [0, 0, 0]
    return out


def _check_kind(kind: str, points) -> np.ndarray:
    """``points`` as ``float64 [N, K, 2]``, checked against ``kind``.

    Raises:
        ValueError: an unknown ``kind``, a shape other than ``[N, K, 2]``, ``K`` other than 68 for ``wholebody``.
    """
    if kind not in KEYS:
        raise ValueError(f"kind must be wholebody or keypoints, got {kind!r}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[2] != 2:
        raise ValueError(f"expected points [N, K, 2], got shape {pts.shape}")
    if kind == "wholebody" and pts.shape[1] != WHOLEBODY_FACE_POINTS:
        raise ValueError(f"wholebody face_kpts hold {WHOLEBODY_FACE_POINTS} points, got {pts.shape[1]}")
    return pts


def write_results(path, image_ids, points, scores=None, kind: str = "wholebody") -> None:
    """Write COCO results (a JSON list, as the COCO evaluation reads them) atomically.

    Args:
        path: the file to write.
        image_ids: ``N`` image ids (``Dataset.attributes["image_id"]``).
        points: ``[N, K, 2]`` continuous pixels (``K`` = 68 for ``wholebody``); written as pixel indices
            ``p - 0.5`` with ``v = 1``, ``0, 0, 0`` for a ``NaN`` point.
        scores: optional ``[N]`` confidences (default 1.0).
        kind: ``wholebody`` (``face_kpts``) or ``keypoints`` (``keypoints``).
    Raises:
        ValueError: a bad ``kind`` or shape, ``image_ids`` or ``scores`` of another length.
    """
    pts = _check_kind(kind, points)
    ids = np.asarray(image_ids).reshape(-1)
    sc = np.ones(len(pts)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(ids) != len(pts) or len(sc) != len(pts):
        raise ValueError(f"{len(pts)} faces, {len(ids)} image ids and {len(sc)} scores: expected one of each per face")
    out = []
    for image_id, p, s in zip(ids, pts, sc):
        kp = [1 if j % 3 == 2 and v else v for j, v in enumerate(_triples(p))]
        out.append({"image_id": int(image_id), "category_id": 1, KEYS[kind][0]: kp, "score": float(s)})
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, allow_nan=False)
        f.write("\n")


def _image_table(names, image_ids) -> tuple:
    """``(int ids [N], images list)``: the given ids (one name per id), or ids 1, 2, ... per distinct name.

    Raises:
        ValueError: an unsafe name, ``image_ids`` of another length, one id given two names.
    """
    for n in names:
        why = relative_name_problem(n)
        if why:
            raise ValueError(why)
    if image_ids is None:
        first = {}
        ids = [first.setdefault(n, len(first) + 1) for n in names]
    else:
        ids = [int(i) for i in np.asarray(image_ids).reshape(-1)]
        if len(ids) != len(names):
            raise ValueError(f"{len(names)} names but {len(ids)} image ids")
    by_id = {}
    for i, n in zip(ids, names):
        if by_id.setdefault(i, n) != n:
            raise ValueError(f"image id {i} is given to both {by_id[i]!r} and {n!r}")
    return ids, [{"id": i, "file_name": n} for i, n in by_id.items()]


def write(path, names, points, boxes=None, image_ids=None, kind: str = "wholebody") -> None:
    """Write a COCO annotation JSON atomically, one annotation per face, that ``read`` reads back (equal within
    1e-6 px; ``NaN`` points stay ``NaN``).

    Args:
        path: the file to write.
        names: ``N`` image paths (``file_name``), relative, ``/``-separated; repeated for several faces of a photo.
        points: ``[N, K, 2]`` continuous pixels (``K`` = 68 for ``wholebody``); written as pixel indices ``p - 0.5``,
            ``v = 2``; a ``NaN`` point as ``0, 0, 0``.
        boxes: optional ``[N, 4]`` continuous ``x0, y0, x1, y1``, written as ``[x, y, w, h]``; a row with a ``NaN``
            (or no ``boxes``) writes no box.
        image_ids: optional ``N`` image ids (``Dataset.attributes["image_id"]``); default 1, 2, ... per distinct
            name in order.
        kind: ``wholebody`` (``face_kpts``, ``face_box``, ``face_valid: true``) or ``keypoints`` (``keypoints``,
            ``bbox``, ``num_keypoints``; a face without a labelled point gets ``num_keypoints`` 0, which ``read``
            skips).
    Raises:
        ValueError: a bad ``kind`` or shape, an unsafe name, ``image_ids`` inconsistent with ``names``, ``boxes``
            of another length.
    """
    pts = _check_kind(kind, points)
    if len(names) != len(pts):
        raise ValueError(f"{len(names)} names but {len(pts)} faces")
    ids, images = _image_table(names, image_ids)
    box = np.full((len(pts), 4), np.nan) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(box) != len(pts):
        raise ValueError(f"{len(box)} boxes but {len(pts)} faces")
    key, box_key = KEYS[kind]
    anns = []
    for j, (image_id, p, b) in enumerate(zip(ids, pts, box)):
        ann = {"id": j + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, key: _triples(p)}
        if np.isfinite(b).all():
            ann[box_key] = [round(float(v), 6) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])]
        if kind == "wholebody":
            ann["face_valid"] = True
        else:
            ann["num_keypoints"] = int(np.isfinite(p).all(axis=1).sum())
        anns.append(ann)
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "person" if kind == "wholebody" else "face"}]}
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, allow_nan=False)
        f.write("\n")
