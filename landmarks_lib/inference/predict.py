"""Inference: a run's final model -> landmarks in original-image pixels.

A final model (``checkpoint.load_model``: ``<run>/model.pt``) holds the localizer and the face model, each
self-describing (backbone, number of points, crop geometry, input normalisation, target units, the mirror permutation
for flip TTA), and the inference settings it was validated with. Prediction for ``face`` models is two-stage: the
localizer predicts on the letterboxed image, a square around its points is cropped (``geometry.face_frame``) and the
face model predicts there; with ``refine_steps`` > 0 the face model's own prediction re-places the crop and predicts
again. Every prediction is mapped back to original pixels by the crop's frame before it leaves this module.

The steps themselves (crops in memory, fixed micro-batches, ensembles) are ``predictor.Predictor``'s;
``predict_images`` runs it over an ``ImageSet``; ``predict_crops`` and ``predict_cache`` serve training's validation
on cached crops.

``python -m landmarks_lib.predict --checkpoint RUN_DIR_OR_MODEL [...] --images DIR --out FILE.csv
[--inference accurate|fast] [--backend auto|torch|onnx] [--device D] [--batch-size N] [--draw DIR]
[--boxes BOXES.csv] [--format csv|pts|wflw|coco]`` writes all points of every image of a folder in
``landmarks.csv`` layout (tab-separated, labels, 2 decimals) and ``FILE.faces.csv`` (face crop and confidence per
image: ``crop_x0, crop_y0, crop_x1, crop_y1``); the default inference is the one stored with the model.
``--boxes`` gives face boxes (``read_boxes_csv``: the landmarks' extent ``x0, y0, x1, y1``, not the crop) that
replace the localizer's for the images it lists. ``--format`` (``FORMATS``) writes instead: ``pts``, one 300-W
``.pts`` file per image (1-based) below the folder ``--out``, at the image's path relative to ``--images`` with the
extension replaced (``pts`` alone also predicts the images of sub-folders, as 300-W's trees are nested; the other
formats take the folder's own images: a ``landmarks.csv`` names plain file names); ``wflw``, one WFLW annotation
file; ``coco``, one COCO results JSON (image ids 1..N in the listing's order). Those three write no faces table.
``--backend onnx`` runs the networks through onnxruntime (``runtime``: numpy around the networks); ``--checkpoint``
may then also be an export folder (``python -m landmarks_lib.export``), and a process predicting from export folders
never imports torch. ``auto`` (the default) is onnx on the CPU when onnxruntime is installed, else torch.

The CLI refuses before predicting anything (one line, exit 2): ``--batch-size`` below 1; ``--out`` naming a folder
(a file with ``pts``) or in a folder that does not exist; ``--out`` or ``--draw`` inside the ``--images`` folder
(real paths compared); a ``--boxes`` file with a bad line (named with its line); with ``pts``, two images of one
stem in a folder.
A file name a tab-separated table cannot hold (a tab, newline or carriage return in it) is named on one line and left
out, the other rows are written (exit 1). Both outputs are written to temporary files first; then the older pair is
removed (``OUT`` first) and the new pair moved in (``OUT`` last), so whenever ``OUT`` exists its ``.faces.csv`` is
of the same run. Drawings are ``DIR/<file name with its extension>.png`` (``a.jpg`` and ``a.png`` get their own;
an image of a sub-folder is drawn in that sub-folder of ``DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core import devices
from ..core.coords import points_to_labels
from ..core.files import TMP_SUFFIX, atomic_open
from ..core.images import ImageError, load_image
from ..data.formats import coco, pts, wflw
from ..models import checkpoint
from . import backends, passes
from .drawing import PRED_COLOR, render_points
from .predictor import Predictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
UNTABULAR = ("\t", "\n", "\r")  # characters a row of the tab-separated points table cannot hold in a file name
FORMATS = ("csv", "pts", "wflw", "coco")  # --format: what --out receives
FACES_COLUMNS = ["file_name", "crop_x0", "crop_y0", "crop_x1", "crop_y1", "confidence"]
BOXES_COLUMNS = ["file_name", "x0", "y0", "x1", "y1"]  # a --boxes file's header


@dataclass(frozen=True)
class ImageSet:
    """Images to predict: ``names`` in ``image_dir``."""

    image_dir: str
    names: tuple
    progress: bool = True

    def paths(self) -> list:
        return [os.path.join(self.image_dir, n) for n in self.names]


def predict_images(model, images: ImageSet, device="cpu", settings: passes.Inference | None = None,
                   chunk: int = 256, backend: str = "torch", with_faces: bool = False):
    """All landmarks of each image, in original pixels, through ``predictor.Predictor`` (crops in memory, fixed
    micro-batches), ``chunk`` images at a time.

    Args:
        model: a final model (``checkpoint.load_model``: localizer + face model), or a list of them (an
            ensemble: each model's predictions, after its own crops, are averaged in original pixels).
        images: the images (``ImageSet``).
        settings: ``Inference``; flip TTA is skipped for a model without a mirror permutation.
        backend: ``"torch"`` or ``"onnx"`` (onnxruntime, ``export.onnx_network``).
        with_faces: also return each image's face crop, confidence and number of faces found.
    Returns:
        ``float32 [N, K, 2]`` original pixels (the ``Predictor``'s values, held once); with ``with_faces``,
        ``(points, faces)`` with ``faces`` a dict of
        ``boxes float32 [N, 4]`` (``x0, y0, x1, y1``), ``confidence float32 [N]`` and ``faces int32 [N]``
        (``predictor.Prediction``).
    Raises:
        images.ImageError: an image cannot be read (the message names it).
        checkpoint.CheckpointError: a ``face`` model without its localizer.
        ValueError: another ``backend``; RuntimeError: ``"onnx"`` without onnxruntime installed.
    """
    from tqdm.auto import tqdm


    pr = Predictor(model, device, settings or passes.Inference(), backend=backend)
    points = np.zeros((len(images.names), pr.num_points, 2), np.float32)  # filled in place: one copy in memory
    boxes, conf, faces = [], [], []
    done = 0
    with tqdm(total=len(images.names), desc="predicting", disable=not images.progress, mininterval=2.0) as bar:
        for res in pr.predict_iter(images.paths(), chunk):
            if res.errors:
                raise ImageError(next(iter(res.errors.values())))
            points[done:done + len(res)] = res.points
            done += len(res)
            boxes.append(res.boxes), conf.append(res.confidence), faces.append(res.faces)
            bar.update(len(res))
    if not with_faces:
        return points
    cat = (lambda a, shape, dt: np.concatenate(a) if a else np.zeros(shape, dt))  # noqa: E731
    return points, {"boxes": cat(boxes, (0, 4), np.float32), "confidence": cat(conf, 0, np.float32),
                    "faces": cat(faces, 0, np.int32)}


def list_images(image_dir, recursive: bool = False) -> list:
    """Sorted image file names (by extension) in a folder; with ``recursive``, also in its sub-folders (not
    following links to folders), as ``/``-separated paths relative to ``image_dir``."""
    if not recursive:
        return sorted(n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    names = []
    for folder, dirs, files in os.walk(image_dir):
        dirs.sort()
        rel = os.path.relpath(folder, image_dir)
        names += [n if rel == "." else "/".join([*rel.split(os.sep), n]) for n in files
                  if n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(names)


class PointsWriter:
    """Rows of ``landmarks.csv`` layout written as they come: labels
    (``coords.points_to_labels``: minus ``coords.LABEL_OFFSET``), tab-separated, 2 decimals, an empty field for NaN;
    each row
    formatted by one ``%`` template (the text pandas' ``to_csv(float_format="%.2f")`` writes).

    Args:
        f: a text file open for writing (``newline=""``). num_points: ``K``; the header is written at once.
    """

    def __init__(self, f, num_points: int):
        self.f, self.k = f, int(num_points)
        self.row = "\t".join(["%s"] + ["%.2f"] * (2 * self.k)) + "\n"
        f.write("\t".join(["file_name"] + [f"Point_{i}_{a}" for i in range(self.k) for a in "XY"]) + "\n")

    def write(self, names, points) -> None:
        """Rows of ``names`` and their ``[n, K, 2]`` continuous original-pixel points."""

        flat = np.asarray(points_to_labels(np.asarray(points).reshape(-1, self.k, 2)), np.float64)
        for name, v in zip(names, flat.reshape(len(flat), -1)):
            if np.isfinite(v).all():
                self.f.write(self.row % (name, *v.tolist()))
            else:
                self.f.write("\t".join([str(name)] + ["" if not np.isfinite(x) else f"{x:.2f}" for x in v]) + "\n")


class FacesWriter:
    """Rows of ``file_name, crop_x0, crop_y0, crop_x1, crop_y1, confidence[, faces]`` written as they come
    (``write_faces_csv``): the final face crop (``face_scale`` times the landmarks' extent: not a ``--boxes`` box),
    comma-separated, 3 decimals, an empty field for NaN, names quoted where CSV needs it (the text pandas'
    ``to_csv(float_format="%.3f")`` writes, without importing pandas).

    Args:
        f: a text file open for writing (``newline=""``). with_faces: also the ``faces`` column.
    """

    def __init__(self, f, with_faces: bool = True):

        self.w, self.with_faces = csv.writer(f, lineterminator="\n"), bool(with_faces)
        self.w.writerow(FACES_COLUMNS + (["faces"] if with_faces else []))

    def write(self, names, boxes, confidence, faces=None) -> None:
        """Rows of ``names``: ``boxes [n, 4]`` original pixels (continuous convention), ``confidence [n]``,
        ``faces [n]`` (the number of faces the localizer found; needed with ``with_faces``)."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        cols = [b[:, 0], b[:, 1], b[:, 2], b[:, 3], np.round(np.asarray(confidence, np.float64), 3)]
        extra = [np.asarray(faces, np.int64).tolist()] if self.with_faces else []
        for i, name in enumerate(names):
            self.w.writerow([name] + ["" if np.isnan(c[i]) else f"{c[i]:.3f}" for c in cols] + [e[i] for e in extra])


def write_faces_csv(path, names, boxes, confidence, faces=None) -> None:
    """Write ``file_name, crop_x0, crop_y0, crop_x1, crop_y1, confidence[, faces]`` per image (the final face crop,
    original pixels in the continuous convention; the number of faces the localizer found; ``FacesWriter``),
    atomically."""

    with atomic_open(path, "w", newline="") as f:
        FacesWriter(f, faces is not None).write(names, boxes, confidence, faces)


def drawing_name(name: str) -> str:
    """The drawing of image ``name``: ``<name with its extension>.png`` (``a.jpg`` -> ``a.jpg.png``), so that two
    images of one stem (``a.jpg``, ``a.png``) get their own."""
    return os.path.basename(name) + ".png"


def _draw(draw_dir, image_dir, name, points) -> None:
    """``<draw_dir>/<name's folder>/<file name>.png`` (``drawing_name``): the image ``name`` (relative to
    ``image_dir``) with its points drawn (``render_points``, 3-px magenta squares)."""
    out = render_points(load_image(os.path.join(image_dir, name)), points, color=PRED_COLOR, marker_px=3)
    with atomic_open(os.path.join(draw_dir, *name.split("/")[:-1], drawing_name(name)), "wb") as f:
        Image.fromarray(out).save(f, format="PNG")


def faces_csv_path(out) -> str:
    """The faces table written beside the points table ``out``: ``<out without extension>.faces.csv``."""
    return os.path.splitext(os.fspath(out))[0] + ".faces.csv"


def _inside(path: str, folder: str) -> bool:
    """Whether the real path of ``path`` is ``folder``'s real path or below it."""
    p, d = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([p, d]) == d


def output_problem(images: str, out: str, draw: str | None = None, fmt: str = "csv") -> str | None:
    """Why the predict CLI must not write ``out`` (and its ``faces_csv_path`` with ``fmt`` ``csv``) or drawings into
    ``draw``, checked before anything is predicted; ``None`` when they can be written. Refused: ``out`` (or its faces
    table) naming a folder (with ``fmt`` ``pts``: naming a file), ``out`` in a folder that does not exist, ``out`` or
    ``draw`` inside the ``images`` folder (real paths: symlinks resolved; the drawings would be read as images next
    time), ``draw`` naming a file."""
    if fmt == "pts" and os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out}: is a file; with --format pts name a folder (it receives one .pts file per image)"
    example = {"csv": "landmarks.csv", "wflw": "landmarks.txt", "coco": "results.json"}.get(fmt)
    outs = (("--out", out), ("--out's faces table", faces_csv_path(out))) if fmt == "csv" else (("--out", out),)
    for flag, p in outs if example else ():
        if os.path.isdir(p):
            return f"{flag} {p}: is a folder; name a file (e.g. {os.path.join(p, example)})"
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        return f"--out {out}: its folder {parent} does not exist; create it first"
    if _inside(out, images):
        return f"--out {out}: inside the --images folder {images}; write it elsewhere"
    if draw is not None:
        if os.path.exists(draw) and not os.path.isdir(draw):
            return f"--draw {draw}: is a file; name a folder"
        if _inside(draw, images):
            return f"--draw {draw}: inside the --images folder {images}; draw elsewhere (the drawings would be " \
                   f"read as images)"
    return None


class BoxesError(ValueError):
    """A ``--boxes`` file that cannot be used; the message names the file and line."""


def _boxes_header(path, header) -> None:
    """Check a ``--boxes`` file's header (``BOXES_COLUMNS``, in any order).

    Raises:
        BoxesError: a faces table (``crop_`` columns, or ``confidence`` / ``faces``), or other columns.
    """
    if any(str(c).startswith("crop_") for c in header) or {"confidence", "faces"} & set(header):
        raise BoxesError(f"{path}:1: this is a faces table that predict writes: its crop_ columns are the face "
                         f"crops, face_scale times larger than the landmarks' box that --boxes takes; write a file "
                         f"with the header {','.join(BOXES_COLUMNS)} holding each face's landmark box")
    if sorted(header) != sorted(BOXES_COLUMNS):
        raise BoxesError(f"{path}:1: header {','.join(header)!r}; expected {','.join(BOXES_COLUMNS)} "
                         f"(comma-separated, continuous original pixels)")


def _boxes_row(path, line: int, row: dict) -> np.ndarray:
    """One ``--boxes`` row's ``float64 [4]`` ``x0, y0, x1, y1``.

    Raises:
        BoxesError: a value that is not a finite number, ``x1 <= x0`` or ``y1 <= y0``.
    """
    values = []
    for c in BOXES_COLUMNS[1:]:
        try:
            v = float(row[c])
        except (TypeError, ValueError):
            raise BoxesError(f"{path}:{line}: {c} {row[c]!r} is not a number") from None
        if not np.isfinite(v):
            raise BoxesError(f"{path}:{line}: {c} {row[c]!r} is not a finite number")
        values.append(v)
    b = np.array(values)
    if b[2] <= b[0] or b[3] <= b[1]:
        raise BoxesError(f"{path}:{line}: x0, y0, x1, y1 = {', '.join(row[c] for c in BOXES_COLUMNS[1:])}: "
                         f"need x1 > x0 and y1 > y0")
    return b


def read_boxes_csv(path, names, image_dir: str = "--images") -> np.ndarray:
    """The face boxes of a ``--boxes`` file for the images ``names``.

    The file is comma-separated with the header ``file_name,x0,y0,x1,y1``: ``file_name`` relative to the images'
    folder (as the points table names images), the box of the face's landmarks (``geometry.face_boxes``' extent,
    the localizer's quantity, not the crop: ``predictor.check_boxes``) in continuous original pixels.

    Args:
        path: the file. names: the images' names, relative to ``image_dir`` (``/``-separated).
    Returns:
        ``float64 [len(names), 4]``; a NaN row for an image the file does not list (the localizer places it).
    Raises:
        BoxesError: ``path:line`` and what is wrong: no such file, another header (a faces table's ``crop_``
            columns are explained), a row of other than 5 fields, a file name that is not among the images or
            listed twice, a value that is not a number, ``x1 <= x0`` or ``y1 <= y0``.
    """
    where = {n: i for i, n in enumerate(names)}
    out, seen = np.full((len(names), 4), np.nan), {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None:
                raise BoxesError(f"{path}:1: empty; expected the header {','.join(BOXES_COLUMNS)}")
            _boxes_header(path, header)
            for fields in rows:
                line = rows.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise BoxesError(f"{path}:{line}: {len(fields)} fields; expected {len(header)} "
                                     f"({','.join(header)})")
                row = dict(zip(header, fields))
                name = os.path.normpath(row["file_name"]).replace(os.sep, "/")
                if name not in where:
                    raise BoxesError(f"{path}:{line}: {row['file_name']!r} is not among the images of {image_dir}")
                if name in seen:
                    raise BoxesError(f"{path}:{line}: {row['file_name']!r} is listed again (first on line "
                                     f"{seen[name]}); give one box per image")
                seen[name] = line
                out[where[name]] = _boxes_row(path, line, row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BoxesError(f"--boxes {path}: cannot be read: {e}") from None
    return out


def _one_line(text) -> str:
    """A message on one line: line breaks (a library's message, a file name) shown as spaces."""
    return " ".join(str(text).splitlines()).strip()


def _stage(path: str) -> str:
    """A temporary name beside ``path``: ``.<name>.<pid>.<random>.tmp``, as ``files.atomic_open`` names its own (the
    pid tells a live writer's file from a stale one)."""
    d, b = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{b}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


@contextlib.contextmanager
def pair_writer(out: str, faces_path: str):
    """Write the points table ``out`` and its faces table as a pair: the block writes two temporary files
    (``(f, g)``, text, ``newline=""``); when it ends without error the older pair is removed (``out`` first) and the
    new pair moved in (``out`` last), so a reader that finds ``out`` finds the faces table of the same run (never new
    faces beside old points). On an error both temporaries are removed and the older pair is left as it was.

    Raises:
        OSError: a folder that cannot be written (a full disk is ``no space left on <folder>``).
    """
    staged = (_stage(out), _stage(faces_path))
    try:
        with atomic_open(staged[0], "w", newline="") as f, atomic_open(staged[1], "w", newline="") as g:
            yield f, g
        for old in (out, faces_path):  # the points first: from here on no OUT is paired with another run's faces
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)
        os.replace(staged[1], faces_path)
        os.replace(staged[0], out)
    finally:
        for t in staged:
            with contextlib.suppress(OSError):
                os.remove(t)


def resolve_cli_backend(choice: str, checkpoints, device: str) -> str:
    """The CLI's ``--backend`` resolved (``backends.resolve_backend``): ``auto`` is onnx for export folders and run
    folders with a current ``export/`` alone (``backends.run_export``: no torch is imported for them) when
    onnxruntime imports, else onnx on the CPU (``select_device``) and torch on an accelerator."""
    if choice != "auto":
        return choice
    exports = all(backends.run_export(c) for c in checkpoints)
    return backends.resolve_backend("auto", "cpu" if exports else devices.select_device(device).type)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="landmarks predict",
                                 description="Predict all landmarks of every image in a folder (original pixels).",
                                 epilog="Writes OUT (landmarks.csv layout) and OUT's .faces.csv (face crop and "
                                        "confidence per image), or OUT in another --format.")
    ap.add_argument("--checkpoint", required=True, nargs="+",
                    help="a run folder or its model.pt (several are averaged); with --backend onnx also an "
                         "export folder (python -m landmarks_lib.export)")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--out", required=True, help="output CSV (landmarks.csv layout, tab-separated); with --format "
                                                 "pts a folder, wflw a .txt file, coco a .json file")
    ap.add_argument("--inference", choices=("accurate", "fast"), default="accurate",
                    help="accurate: the model's own validated settings (default); fast: one pass each, no TTA")
    ap.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                    help="torch, onnx (the networks run by onnxruntime; a run folder's are exported in memory) or "
                         "auto (default: onnx on the CPU when onnxruntime is installed, else torch)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256, help="images read and predicted at a time")
    ap.add_argument("--draw", metavar="DIR", help="also write each image with its points drawn into DIR")
    ap.add_argument("--boxes", metavar="FILE.csv",
                    help="face boxes instead of the localizer's: comma-separated, header file_name,x0,y0,x1,y1, the "
                         "box of each face's landmarks (not the crop) in original pixels; images not listed are "
                         "placed by the localizer")
    ap.add_argument("--format", choices=FORMATS, default="csv",
                    help="csv (default: landmarks.csv layout and a faces table), pts (one 300-W .pts per image, "
                         "1-based, below the folder --out, sub-folders of --images included), wflw (one WFLW "
                         "annotation file) or coco (COCO results JSON, image ids 1..N in file-name order)")
    return ap


class _Usage(Exception):
    """A usage error found before anything is predicted: exit 2 with its message."""


def _stem_collision(names) -> str | None:
    """Two images whose ``.pts`` files would be one (``a.jpg`` and ``a.png`` in one folder), in words, or
    ``None``."""
    seen = {}
    for n in names:
        t = os.path.splitext(n)[0] + ".pts"
        if t in seen:
            return f"{seen[t]!r} and {n!r} would both be written to {t!r} with --format pts: rename one of them"
        seen[t] = n
    return None


def _check_args(a) -> list:
    """The images to predict (``list_images``: sub-folders too with ``--format pts``), after the checks made
    before anything is predicted.

    Raises:
        _Usage: ``--batch-size`` below 1, no such ``--images`` folder, ``--boxes labels``, ``output_problem``, no
            images, two images of one stem with ``pts``.
    """
    if a.batch_size < 1:
        raise _Usage(f"--batch-size must be at least 1 (images read and predicted at a time), got {a.batch_size}")
    if not os.path.isdir(a.images):
        raise _Usage(f"{a.images}: no such folder of images")
    if a.boxes == "labels":
        raise _Usage("--boxes labels needs labelled data (each image's box from its labelled points): use "
                     "landmarks evaluate on a data folder; predict takes a --boxes FILE.csv (a file named labels: "
                     "pass ./labels)")
    problem = output_problem(a.images, a.out, a.draw, a.format)
    if problem:
        raise _Usage(problem)
    names = list_images(a.images, recursive=a.format == "pts")
    if not names:
        raise _Usage(f"no images in {a.images}")
    collision = _stem_collision(names) if a.format == "pts" else None
    if collision:
        raise _Usage(collision)
    return names


def _load(a) -> Predictor:
    """The ``Predictor`` of ``--checkpoint``.

    Raises:
        _Usage: a model that cannot be loaded, onnxruntime missing.
    """
    try:
        return Predictor.load(a.checkpoint, a.device, backend=resolve_cli_backend(a.backend, a.checkpoint, a.device),
                              inference=a.inference)
    except (FileNotFoundError, checkpoint.CheckpointError, RuntimeError, ValueError) as e:
        raise _Usage(str(e)) from None


def _chunks(a, names, results):
    """Per chunk of ``results`` (``Predictor.predict_iter`` of ``names``): ``(names, positions among names,
    Prediction, rows)`` of its readable images; an unreadable one is named on stderr, drawings are written."""
    for start, res in zip(range(0, len(names), a.batch_size), results):
        for j in sorted(res.errors):
            print(f"error: {_one_line(res.errors[j])}", file=sys.stderr)
        good = [j for j in range(len(res)) if j not in res.errors]
        got = [names[start + j] for j in good]
        if a.draw:
            for j, n in zip(good, got):
                _draw(a.draw, a.images, n, res.points[j])
        yield got, [start + j for j in good], res, good


def _write_csv(a, pr, names, results) -> int:
    """``--format csv``: the points table and its faces table (``pair_writer``); returns the rows written."""
    ok = 0
    with pair_writer(a.out, faces_csv_path(a.out)) as (f, g):
        points_out, faces_out = PointsWriter(f, pr.num_points), FacesWriter(g)
        for got, _, res, good in _chunks(a, names, results):
            points_out.write(got, res.points[good])
            faces_out.write(got, res.boxes[good], res.confidence[good], res.faces[good])
            ok += len(got)
    return ok


def _write_pts(a, pr, names, results) -> int:
    """``--format pts``: one ``.pts`` per image below ``--out`` (``pts.write_tree``, each file atomically, chunk by
    chunk); returns the files written."""

    ok = 0
    for got, _, res, good in _chunks(a, names, results):
        pts.write_tree(a.out, got, res.points[good])
        ok += len(got)
    return ok


def _write_whole(a, pr, names, results) -> int:
    """``--format wflw`` (``wflw.write``) or ``coco`` (``coco.write_results``: image ids 1..N in ``names``' order,
    the confidence as score, ``wholebody`` face keypoints for 68 points, else ``keypoints``): one file written to
    a temporary name and moved over ``--out``; returns the images written. Points are passed in continuous
    original pixels (the predictor's); the writers convert to their files' conventions."""
    got_all, ids, points, scores = [], [], [], []
    for got, at, res, good in _chunks(a, names, results):
        got_all += got
        ids += [i + 1 for i in at]
        points.append(res.points[good]), scores.append(res.confidence[good])
    k = pr.num_points
    p = np.concatenate(points) if points else np.zeros((0, k, 2), np.float32)
    staged = _stage(a.out)
    try:
        if a.format == "wflw":
            wflw.write(staged, got_all, p)
        else:
            coco.write_results(staged, ids, p, scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
                               kind="wholebody" if k == 68 else "keypoints")
        os.replace(staged, a.out)
    finally:
        with contextlib.suppress(OSError):
            os.remove(staged)
    return len(got_all)


WRITERS = {"csv": _write_csv, "pts": _write_pts, "wflw": _write_whole, "coco": _write_whole}


def main(argv=None) -> int:
    """The predict CLI: one line on stderr per unreadable image or file name a table cannot hold (its row is left
    out; exit 1), one line for a usage error checked before anything is predicted (exit 2: ``output_problem``, a
    ``--batch-size`` below 1, a bad ``--boxes`` file, two images of one stem with ``--format pts``, a model that
    cannot be loaded, ``--format wflw`` for a model of another point count than 98), no tracebacks. With ``--format
    csv`` rows are written as they are predicted (memory stays at one ``--batch-size`` of points) into temporary
    files that replace ``--out`` and its ``.faces.csv`` as a pair at the end (``pair_writer``); ``pts`` writes each
    chunk's files as it comes; ``wflw`` and ``coco`` hold all points and write one file at the end."""

    a = build_parser().parse_args(argv)
    try:
        names = _check_args(a)
        boxes = None if a.boxes is None else read_boxes_csv(a.boxes, names, a.images)
        pr = _load(a)
        if a.format == "wflw" and pr.num_points != wflw.NUM_POINTS:
            raise _Usage(f"--format wflw writes WFLW's {wflw.NUM_POINTS}-point layout; this model predicts "
                         f"{pr.num_points} points (use csv, pts or coco)")
    except (_Usage, BoxesError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    refused = [n for n in names if any(c in n for c in UNTABULAR)]
    for n in refused:
        print(f"error: {os.path.join(a.images, n)!r}: a file name with a tab, newline or carriage return cannot be "
              f"a row of the tab-separated table; rename the file", file=sys.stderr)
    keep = [i for i, n in enumerate(names) if n not in set(refused)]
    names = [names[i] for i in keep]
    try:
        results = pr.predict_iter([os.path.join(a.images, n) for n in names], a.batch_size,
                                  boxes=None if boxes is None else boxes[keep])
    except ValueError as e:  # boxes for a model whose crops are not placed on faces
        print(f"error: --boxes {_one_line(a.boxes)}: {_one_line(e)}", file=sys.stderr)
        return 2
    try:
        ok = WRITERS[a.format](a, pr, names, results)
    except (OSError, ValueError) as e:  # a full disk, an unwritable output: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    total = len(names) + len(refused)
    print(f"wrote {ok} rows x {pr.num_points} points to {a.out}" + (f" ({a.format})" if a.format != "csv" else "")
          + (f"; {total - ok} image(s) left out" if ok < total else ""))
    return 0 if ok == total else 1
