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
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core import devices
from ..core.coords import points_to_labels
from ..core.files import atomic_open
from ..core.images import ImageError, load_image
from ..models import checkpoint
from . import backends, passes
from .drawing import PRED_COLOR, render_points
from .predictor import Predictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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


def _draw(draw_dir, path, points) -> None:
    """``<draw_dir>/<name>.png``: the image with its points drawn (``viz.render_points``, 3-px magenta squares)."""


    out = render_points(load_image(path), points, color=PRED_COLOR, marker_px=3)
    with atomic_open(os.path.join(draw_dir, os.path.splitext(os.path.basename(path))[0] + ".png"), "wb") as f:
        Image.fromarray(out).save(f, format="PNG")


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
    """The predict CLI: one line on stderr per unreadable image (its row is left out; exit 1), one line for a
    usage error (exit 2), no tracebacks for either. Rows are written as they are predicted (memory stays at one
    ``--batch-size`` of points), into temporary files renamed over ``--out`` and its ``.faces.csv`` at the end."""

    a = build_parser().parse_args(argv)
    if not os.path.isdir(a.images):
        print(f"error: {a.images}: no such folder of images", file=sys.stderr)
        return 2
    names = list_images(a.images)
    if not names:
        print(f"error: no images in {a.images}", file=sys.stderr)
        return 2
    try:
        backend = _backend(a.backend, a.checkpoint, a.device)
        pr = Predictor.load(a.checkpoint, a.device, backend=backend, inference=a.inference)
    except (FileNotFoundError, checkpoint.CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = 0
    try:
        paths = [os.path.join(a.images, n) for n in names]
        faces_path = os.path.splitext(a.out)[0] + ".faces.csv"
        with atomic_open(a.out, "w", newline="") as f, atomic_open(faces_path, "w", newline="") as g:
            points_out, faces_out = PointsWriter(f, pr.num_points), FacesWriter(g)
            for start, res in zip(range(0, len(names), a.batch_size), pr.predict_iter(paths, a.batch_size)):
                for j in sorted(res.errors):
                    print(f"error: {res.errors[j]}", file=sys.stderr)
                good = [j for j in range(len(res)) if j not in res.errors]
                got = [names[start + j] for j in good]
                points_out.write(got, res.points[good])
                faces_out.write(got, res.boxes[good], res.confidence[good], res.faces[good])
                ok += len(good)
                if a.draw:
                    for j, n in zip(good, got):
                        _draw(a.draw, os.path.join(a.images, n), res.points[j])
    except (OSError, ValueError) as e:  # a full disk, an unwritable output: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {ok} rows x {pr.num_points} points to {a.out}"
          + (f"; {len(names) - ok} unreadable image(s) left out" if ok < len(names) else ""))
    return 0 if ok == len(names) else 1
