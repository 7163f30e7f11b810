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
[--inference accurate|fast] [--backend auto|torch|onnx] [--device D] [--batch-size N] [--draw DIR]`` writes all
points of every image of a folder in ``landmarks.csv`` layout (tab-separated, labels, 2 decimals) and
``FILE.faces.csv`` (face box and confidence per image); the default inference is the one stored with the model.
``--backend onnx`` runs the networks through onnxruntime (``runtime``: numpy around the networks); ``--checkpoint``
may then also be an export folder (``python -m landmarks_lib.export``), and a process predicting from export folders
never imports torch. ``auto`` (the default) is onnx on the CPU when onnxruntime is installed, else torch.

The CLI refuses before predicting anything (one line, exit 2): ``--batch-size`` below 1; ``--out`` naming a folder
or in a folder that does not exist; ``--out`` or ``--draw`` inside the ``--images`` folder (real paths compared).
A file name a tab-separated table cannot hold (a tab, newline or carriage return in it) is named on one line and left
out, the other rows are written (exit 1). Both outputs are written to temporary files first; then the older pair is
removed (``OUT`` first) and the new pair moved in (``OUT`` last), so whenever ``OUT`` exists its ``.faces.csv`` is
of the same run. Drawings are ``DIR/<file name with its extension>.png`` (``a.jpg`` and ``a.png`` get their own).
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
from ..models import checkpoint
from . import backends, passes
from .drawing import PRED_COLOR, render_points
from .predictor import Predictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
UNTABULAR = ("\t", "\n", "\r")  # characters a row of the tab-separated points table cannot hold in a file name


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


def list_images(image_dir) -> list:
    """Sorted image file names (by extension) in a folder."""
    return sorted(n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS))


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
    """Rows of ``file_name, x0, y0, x1, y1, confidence[, faces]`` written as they come (``write_faces_csv``):
    comma-separated, 3 decimals, an empty field for NaN, names quoted where CSV needs it (the text pandas'
    ``to_csv(float_format="%.3f")`` writes, without importing pandas).

    Args:
        f: a text file open for writing (``newline=""``). with_faces: also the ``faces`` column.
    """

    def __init__(self, f, with_faces: bool = True):

        self.w, self.with_faces = csv.writer(f, lineterminator="\n"), bool(with_faces)
        self.w.writerow(["file_name", "x0", "y0", "x1", "y1", "confidence"] + (["faces"] if with_faces else []))

    def write(self, names, boxes, confidence, faces=None) -> None:
        """Rows of ``names``: ``boxes [n, 4]`` original pixels (continuous convention), ``confidence [n]``,
        ``faces [n]`` (the number of faces the localizer found; needed with ``with_faces``)."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        cols = [b[:, 0], b[:, 1], b[:, 2], b[:, 3], np.round(np.asarray(confidence, np.float64), 3)]
        extra = [np.asarray(faces, np.int64).tolist()] if self.with_faces else []
        for i, name in enumerate(names):
            self.w.writerow([name] + ["" if np.isnan(c[i]) else f"{c[i]:.3f}" for c in cols] + [e[i] for e in extra])


def write_faces_csv(path, names, boxes, confidence, faces=None) -> None:
    """Write ``file_name, x0, y0, x1, y1, confidence[, faces]`` per image (the final face crop, original pixels in
    the continuous convention; the number of faces the localizer found; ``FacesWriter``), atomically."""

    with atomic_open(path, "w", newline="") as f:
        FacesWriter(f, faces is not None).write(names, boxes, confidence, faces)


def drawing_name(name: str) -> str:
    """The drawing of image ``name``: ``<name with its extension>.png`` (``a.jpg`` -> ``a.jpg.png``), so that two
    images of one stem (``a.jpg``, ``a.png``) get their own."""
    return os.path.basename(name) + ".png"


def _draw(draw_dir, path, points) -> None:
    """``<draw_dir>/<file name>.png`` (``drawing_name``): the image with its points drawn (``render_points``,
    3-px magenta squares)."""
    out = render_points(load_image(path), points, color=PRED_COLOR, marker_px=3)
    with atomic_open(os.path.join(draw_dir, drawing_name(path)), "wb") as f:
        Image.fromarray(out).save(f, format="PNG")


def faces_csv_path(out) -> str:
    """The faces table written beside the points table ``out``: ``<out without extension>.faces.csv``."""
    return os.path.splitext(os.fspath(out))[0] + ".faces.csv"


def _inside(path: str, folder: str) -> bool:
    """Whether the real path of ``path`` is ``folder``'s real path or below it."""
    p, d = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([p, d]) == d


def output_problem(images: str, out: str, draw: str | None = None) -> str | None:
    """Why the predict CLI must not write ``out`` (and its ``faces_csv_path``) or drawings into ``draw``, checked
    before anything is predicted; ``None`` when they can be written. Refused: ``out`` (or its faces table) naming a
    folder, ``out`` in a folder that does not exist, ``out`` or ``draw`` inside the ``images`` folder (real paths:
    symlinks resolved; the drawings would be read as images next time), ``draw`` naming a file."""
    for flag, p in (("--out", out), ("--out's faces table", faces_csv_path(out))):
        if os.path.isdir(p):
            return f"{flag} {p}: is a folder; name a file (e.g. {os.path.join(p, 'landmarks.csv')})"
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


def _backend(choice: str, checkpoints, device: str) -> str:
    """The CLI's ``--backend`` resolved (``backends.resolve_backend``): ``auto`` is onnx for export folders and run
    folders with a current ``export/`` alone (``backends.run_export``: no torch is imported for them) when
    onnxruntime imports, else onnx on the CPU (``select_device``) and torch on an accelerator."""
    if choice != "auto":
        return choice
    exports = all(backends.run_export(c) for c in checkpoints)
    return backends.resolve_backend("auto", "cpu" if exports else devices.select_device(device).type)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m landmarks_lib.predict",
                                 description="Predict all landmarks of every image in a folder (original pixels).",
                                 epilog="Writes OUT (landmarks.csv layout) and OUT's .faces.csv (face box and "
                                        "confidence per image).")
    ap.add_argument("--checkpoint", required=True, nargs="+",
                    help="a run folder or its model.pt (several are averaged); with --backend onnx also an "
                         "export folder (python -m landmarks_lib.export)")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--out", required=True, help="output CSV (landmarks.csv layout, tab-separated)")
    ap.add_argument("--inference", choices=("accurate", "fast"), default="accurate",
                    help="accurate: the model's own validated settings (default); fast: one pass each, no TTA")
    ap.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                    help="torch, onnx (the networks run by onnxruntime; a run folder's are exported in memory) or "
                         "auto (default: onnx on the CPU when onnxruntime is installed, else torch)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256, help="images read and predicted at a time")
    ap.add_argument("--draw", metavar="DIR", help="also write each image with its points drawn into DIR")
    return ap


def main(argv=None) -> int:
    """The predict CLI: one line on stderr per unreadable image or file name a table cannot hold (its row is left
    out; exit 1), one line for a usage error checked before anything is predicted (exit 2: ``output_problem``, a
    ``--batch-size`` below 1, a model that cannot be loaded), no tracebacks. Rows are written as they are predicted
    (memory stays at one ``--batch-size`` of points) into temporary files that replace ``--out`` and its
    ``.faces.csv`` as a pair at the end (``pair_writer``)."""

    a = build_parser().parse_args(argv)
    if a.batch_size < 1:
        print(f"error: --batch-size must be at least 1 (images read and predicted at a time), got {a.batch_size}",
              file=sys.stderr)
        return 2
    if not os.path.isdir(a.images):
        print(f"error: {_one_line(a.images)}: no such folder of images", file=sys.stderr)
        return 2
    problem = output_problem(a.images, a.out, a.draw)
    if problem:
        print(f"error: {_one_line(problem)}", file=sys.stderr)
        return 2
    names = list_images(a.images)
    if not names:
        print(f"error: no images in {_one_line(a.images)}", file=sys.stderr)
        return 2
    try:
        backend = _backend(a.backend, a.checkpoint, a.device)
        pr = Predictor.load(a.checkpoint, a.device, backend=backend, inference=a.inference)
    except (FileNotFoundError, checkpoint.CheckpointError, RuntimeError, ValueError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    refused = [n for n in names if any(c in n for c in UNTABULAR)]
    for n in refused:
        print(f"error: {os.path.join(a.images, n)!r}: a file name with a tab, newline or carriage return cannot be "
              f"a row of the tab-separated table; rename the file", file=sys.stderr)
    names = [n for n in names if n not in set(refused)]
    ok = 0
    try:
        paths = [os.path.join(a.images, n) for n in names]
        with pair_writer(a.out, faces_csv_path(a.out)) as (f, g):
            points_out, faces_out = PointsWriter(f, pr.num_points), FacesWriter(g)
            for start, res in zip(range(0, len(names), a.batch_size), pr.predict_iter(paths, a.batch_size)):
                for j in sorted(res.errors):
                    print(f"error: {_one_line(res.errors[j])}", file=sys.stderr)
                good = [j for j in range(len(res)) if j not in res.errors]
                got = [names[start + j] for j in good]
                points_out.write(got, res.points[good])
                faces_out.write(got, res.boxes[good], res.confidence[good], res.faces[good])
                ok += len(good)
                if a.draw:
                    for j, n in zip(good, got):
                        _draw(a.draw, os.path.join(a.images, n), res.points[j])
    except (OSError, ValueError) as e:  # a full disk, an unwritable output: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    total = len(names) + len(refused)
    print(f"wrote {ok} rows x {pr.num_points} points to {a.out}"
          + (f"; {total - ok} image(s) left out" if ok < total else ""))
    return 0 if ok == total else 1
