"""One configured predictor for a run's final model: images (paths or arrays) in, landmarks in original pixels out.

``Predictor.load(run_dir_or_model_pt)`` reads ``model.pt`` (``checkpoint.load_model``: localizer + face model +
the inference settings it was validated with); ``predict(images)`` returns a ``Prediction`` (points, face boxes and
a confidence per image) and ``predict_iter`` streams a large folder chunk by chunk. Crops are made in memory
(``geometry.crop_image``, the function the training caches use, so the crops are the same), and every network
pass runs on a fixed micro-batch (padded), so a result does not depend on the batch size or on the other images of
a batch (bit-identical at batch 1, 7 or 128 with a fixed thread count; tested).

Placement: a face-box localizer (``localizer``) finds the faces on the letterboxed image and ``codecs.choose``
picks one; its box, scaled by the face model's ``face_scale``, is the first face crop, and each refinement re-places
the crop around the predicted points. (A model with the older landmark-regression localizer is placed by that
model's points.) Face boxes given by the caller (``predict(images, boxes)``: the landmarks' extent
``x0, y0, x1, y1`` per image, ``check_boxes``) replace the localizer's box for their images; the crops, refinements
and TTA that follow are the same.

Inference settings: ``"accurate"`` is the model's own (flip TTA, refinements, scale TTA as validated); ``"fast"`` is
one localizer pass and one face pass, no TTA. The pipeline's evaluation and test prediction, the notebooks and the
predict CLI all use this class (``predict.predict_images`` wraps it).

Backends: ``"torch"`` runs the torch networks; ``"onnx"`` runs each network through onnxruntime, with the input
normalisation, flip TTA and face-box decoding in numpy (``runtime``, the same values as the torch functions within
2e-3 px). A torch checkpoint is exported to ONNX in memory at construction (``export.onnx_network``, about a second
per network); ``Predictor.load`` also accepts an export folder (``export.export``: ``model.json`` + ``.onnx`` files,
no torch weights needed), and a process predicting from one never imports torch. The crops and the mapping to
original pixels are the same code for both.

Inputs are checked at the boundary (``check_image``): an image is a file path (``str`` or ``os.PathLike``) or a
``uint8`` array ``[H, W, 3]`` (RGB) or ``[H, W]`` (grayscale), non-empty, within ``images.MAX_PIXELS`` and
``images.MAX_SIDE``; anything else (float, 16-bit or bool arrays, RGBA, empty arrays) is refused with a
``ValueError`` naming its index, instead of being predicted tens to hundreds of pixels off. One path or one array
is one image; a list (or any iterable, or a ``[N, H, W, 3]`` array) is several. An ensemble must predict one point
layout (the same ``num_points`` and mirror permutation).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..core import geometry
from ..core.devices import select_device
from ..core.images import ImageError, as_image, load_image, size_problem
from ..models import checkpoint, codecs
from . import backends
from .passes import Inference, detect_crops, predict_crops

FAST = {"tta_flip": False, "refine_steps": 0, "tta_scales": "1.0"}
BACKENDS = ("torch", "onnx")
CONFIDENCE_SCALE = 0.05  # share of the face size at which the confidence falls to 1/e


@dataclass
class Prediction:
    """What a ``Predictor`` returns for ``N`` images.

    Attributes:
        points: ``float32 [N, K, 2]`` landmarks, original pixels (continuous convention); NaN for an image that
            could not be read.
        boxes: ``float32 [N, 4]`` the final face crop of each image, ``x0, y0, x1, y1`` in original pixels.
        confidence: ``float32 [N]`` in ``[0, 1]``: the localizer's score of the chosen face times how well the
            final points agree with the box that placed their crop, ``exp(-d / CONFIDENCE_SCALE)`` with ``d`` the
            RMS difference of the two boxes' centre and extent over the extent (0 for an unreadable image).
        errors: ``{index: message}`` for images that could not be read.
        faces: ``int32 [N]`` faces the localizer found (scores of at least ``codecs.MIN_SCORE`` and half the
            best; the prediction is for one of them, ``codecs.choose``); 1 for crop modes without a face-box
            localizer and for an image placed by a given box (its score counts as 1 in ``confidence``), 0 for an
            unreadable image.
    """

    points: np.ndarray
    boxes: np.ndarray
    confidence: np.ndarray
    errors: dict = field(default_factory=dict)
    faces: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.points)


def check_image(image, index: int) -> np.ndarray:
    """An image array as the predictor takes it: ``uint8 [H, W, 3]`` (a grayscale ``[H, W]`` repeated on three
    channels), values 0..255 RGB, pixel ``(row y, column x)`` spanning ``[x, x + 1) x [y, y + 1)`` of the original
    image (continuous convention).

    Args:
        image: a ``uint8`` array ``[H, W, 3]`` or ``[H, W]`` (or what ``np.asarray`` makes one of, e.g. a PIL RGB
            image); ``H, W >= 1``, within ``images.MAX_PIXELS`` and ``images.MAX_SIDE``.
        index: its position among the images, named in the message.
    Raises:
        ValueError: another type, dtype (float, 16-bit, bool, ...) or shape, an empty or over-size array; the
            message names ``index``, the dtype and shape, and what to pass.
    """
    if isinstance(image, (str, os.PathLike)):
        raise ValueError(f"image {index}: a file path where an array is expected; Predictor.predict takes paths")
    if isinstance(image, bytes) or not (
            isinstance(image, np.ndarray) or hasattr(image, "__array_interface__") or hasattr(image, "__array__")):
        raise ValueError(f"image {index}: a {type(image).__name__}; pass a file path (str or os.PathLike) or a uint8 "
                         f"array [H, W, 3] (RGB) or [H, W] (grayscale)")
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"image {index}: dtype {a.dtype}, shape {a.shape}; pass uint8 values 0..255, [H, W, 3] RGB "
                         f"or [H, W] (floats in [0, 1]: (x * 255).round().astype(np.uint8); 16-bit: "
                         f"(x / 257).round().astype(np.uint8); or pass the file path)")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"image {index}: shape {a.shape}; pass uint8 [H, W, 3] RGB or [H, W] grayscale (RGBA: "
                         f"composite it over black first, or pass the file path; several images: a list)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image {index}: empty array of shape {a.shape}; pass an image of at least 1x1 px")
    too_big = size_problem(int(a.shape[1]), int(a.shape[0]))
    if too_big:
        raise ValueError(f"image {index}: {too_big}")
    return as_image(a)


def _one_or_many(images):
    """One image (a path; an array, tensor or PIL image of other than 4 dimensions) as a list of one; a
    ``[N, H, W, 3]`` array or a list, tuple or other iterable as it is."""
    if isinstance(images, (str, bytes, os.PathLike)):
        return [images]
    if isinstance(images, (list, tuple)):
        return images
    if isinstance(images, np.ndarray) or hasattr(images, "__array_interface__") or hasattr(images, "__array__"):
        return images if getattr(images, "ndim", None) == 4 else [images]
    return images if hasattr(images, "__iter__") else [images]


def _at_least_one(value, what: str) -> int:
    """``value`` as an ``int`` of at least 1 (a whole number: ``16`` or ``16.0``).

    Raises:
        ValueError: anything else, in words naming ``what``.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not ok or not math.isfinite(value) or value != int(value) or value < 1:
        raise ValueError(f"{what} must be a whole number of at least 1, got {value!r}")
    return int(value)


def extent_boxes(boxes) -> np.ndarray:
    """Corner boxes ``x0, y0, x1, y1`` -> the face boxes ``(cx, cy, extent)`` that place crops
    (``geometry.face_boxes``' rows: the box centre and its longer side). NaN rows stay NaN.

    Args:
        boxes: ``float [N, 4]``, any pixel units.
    Returns:
        ``float64 [N, 3]`` in the same units.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                     np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])], 1)


def corner_boxes(boxes) -> np.ndarray:
    """Face boxes ``(cx, cy, extent)`` (``geometry.face_boxes``' rows) -> the square ``x0, y0, x1, y1`` of side
    ``extent`` on their centre, ``float64 [N, 4]`` in the same units (``extent_boxes`` takes it back)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 3)
    h = b[:, 2] / 2
    return np.stack([b[:, 0] - h, b[:, 1] - h, b[:, 0] + h, b[:, 1] + h], 1)


def check_boxes(boxes, n: int | None = None) -> np.ndarray:
    """Face boxes given for the images, as the predictor takes them.

    Args:
        boxes: ``float [N, 4]`` ``x0, y0, x1, y1`` per image, continuous original pixels (pixel ``i`` spans
            ``[i, i + 1)``): the box of the face's landmarks (``geometry.face_boxes`` of the points, the quantity
            the localizer predicts), not the crop (which is ``face_scale`` times the box's longer side, on its
            centre). A row of four NaN means "no box for this image": the localizer places it.
        n: the number of images, or ``None`` to check the rows alone.
    Returns:
        ``float64 [N, 4]``.
    Raises:
        ValueError: another shape or ``N != n``; a row with infinite values or NaN in some of its values only;
            ``x1 <= x0`` or ``y1 <= y0``. The message names the row (from 0).
    """
    try:
        b = np.array(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"boxes must be numbers, float [N, 4] (x0, y0, x1, y1 per image), got "
                         f"{type(boxes).__name__}") from None
    if b.size == 0 and b.ndim <= 2:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be float [N, 4] (x0, y0, x1, y1 per image; one image: [[x0, y0, x1, y1]]), "
                         f"got shape {b.shape}")
    if n is not None and len(b) != n:
        raise ValueError(f"boxes has {len(b)} rows for {n} images: pass one row per image (NaN row: no box)")
    nan = np.isnan(b)
    for i in np.flatnonzero(nan.any(1) & ~nan.all(1)):
        raise ValueError(f"boxes row {i}: {b[i].tolist()} has NaN in some values only; a row of four NaN means "
                         f"no box (the localizer places that image)")
    given = ~nan.all(1)
    for i in np.flatnonzero(given & ~np.isfinite(b).all(1)):
        raise ValueError(f"boxes row {i}: {b[i].tolist()} is not finite")
    for i in np.flatnonzero(given & ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))):
        raise ValueError(f"boxes row {i}: {b[i].tolist()} must have x1 > x0 and y1 > y0 (x0, y0, x1, y1)")
    return b


def check_ensemble(models, names=None) -> None:
    """Models that can be averaged: each predicts ``num_points`` points of one layout (equal ``num_points``, and
    equal mirror permutations ``flip_perm`` where both models have one).

    Raises:
        checkpoint.CheckpointError: one line naming both models (``names``, default ``model 1``, ``model 2``, ...).
    """
    names = list(names) if names is not None else [f"model {i + 1}" for i in range(len(models))]
    k0, perm0 = checkpoint.num_points(models[0]), models[0]["face"]["meta"].get("flip_perm")
    for m, name in zip(models[1:], names[1:]):
        k, perm = checkpoint.num_points(m), m["face"]["meta"].get("flip_perm")
        if k != k0:
            raise checkpoint.CheckpointError(
                f"ensemble: {name} predicts {k} points per face and {names[0]} {k0}; an ensemble averages the "
                f"points of one layout: combine models trained on the same landmarks")
        if perm is not None and perm0 is not None and list(perm) != list(perm0):
            raise checkpoint.CheckpointError(
                f"ensemble: {name} and {names[0]} both predict {k} points but in different layouts (their mirror "
                f"permutations differ); combine models trained on the same landmarks")


def _check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}"
                         + (" (pass inference= by keyword)" if backend in ("accurate", "fast") else ""))


class Predictor:
    """A run's final model (or an ensemble of them) with its inference settings, ready to predict.

    Args:
        models: one or more model dicts (``checkpoint.load_model``); an ensemble averages points in original pixels.
        device: a ``torch.device`` or its name (``auto``: CUDA, then MPS, then CPU; with ``backend="onnx"`` and
            torch not imported, onnxruntime's CUDA provider when it has one, else the CPU: ``backends.onnx_device``).
        settings: ``passes.Inference``; default the first model's stored settings.
        micro_batch: images per network pass (the last pass of a chunk is padded to it), at least 1.
        backend: ``"torch"`` (``networks.network``) or ``"onnx"`` (``export.onnx_network``: onnxruntime; a part
            may then be ``export.read_export``'s, without torch weights).
    Raises:
        ValueError: another ``backend``, or ``micro_batch`` below 1.
        checkpoint.CheckpointError: models of different point counts or layouts (``check_ensemble``).
        RuntimeError: ``"onnx"`` without onnx / onnxruntime installed (the message says what to install).
    """

    def __init__(self, models, device="auto", settings: Inference | None = None, micro_batch: int = 16,
                 backend: str = "torch"):
        _check_backend(backend)
        micro_batch = _at_least_one(micro_batch, "micro_batch (images per network pass)")
        self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        if not self.models:
            raise ValueError("no model given: pass one model dict or a list of them")
        check_ensemble(self.models)
        self.settings = settings or Inference.from_settings(self.models[0]["inference"])
        self.micro_batch = int(micro_batch)
        self.backend = backend
        onnx_only = backend == "onnx" and all(m.get(p) is None or m[p].get("onnx") is not None
                                              for m in self.models for p in ("localizer", "face"))
        if onnx_only:  # export folders alone: torch is not imported for them
            if isinstance(device, str) and "torch" in sys.modules:
                device = select_device(device)
            self.device = backends.onnx_device(device) if isinstance(device, str) else device
            where = getattr(self.device, "type", str(self.device))
            self._nets = [{part: None if m.get(part) is None else backends.onnx_file_network(m[part]["onnx"], where)
                           for part in ("localizer", "face")} for m in self.models]
            return
        import torch

        from ..models import networks  # torch: kept off the export folders' path
        from . import export

        self.device = select_device(device) if isinstance(device, str) else torch.device(device)
        def build(part):
            if backend == "onnx":
                return export.onnx_network(part, self.device)
            return backends.TorchNetwork(networks.network(part, self.device), self.device, self.settings.amp)

        self._nets = [{part: None if m.get(part) is None else build(m[part]) for part in ("localizer", "face")}
                      for m in self.models]

    @classmethod
    def load(cls, paths, device="auto", backend: str = "torch", inference: str = "accurate",
             micro_batch: int = 16) -> Predictor:
        """From run folders or ``model.pt`` files (with ``backend="onnx"`` also export folders, ``export.export``'s);
        ``inference`` ``"accurate"`` (the model's stored settings) or ``"fast"`` (``FAST``: one localizer and one
        face pass, no TTA). With ``backend="onnx"`` a run folder whose ``export/`` was made from its current
        ``model.pt`` (``backends.run_export``) loads that export, without torch; otherwise ``model.pt`` is loaded
        and exported in memory.

        Raises:
            FileNotFoundError, checkpoint.CheckpointError: no final model there (or an export folder with the
                torch backend, an export outside its schema: ``backends.read_export``; a file refused on purpose:
                ``checkpoint.load``), or models of different point counts or layouts (``check_ensemble``).
            ValueError: another ``backend`` or ``inference``, ``micro_batch`` below 1.
            RuntimeError: ``"onnx"`` without onnx / onnxruntime installed.
        """
        _check_backend(backend)
        if inference not in ("accurate", "fast"):
            raise ValueError(f"inference must be 'accurate' or 'fast', got {inference!r}")
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        models = []
        for p in paths:
            if backends.is_export(p) and backend != "onnx":
                raise checkpoint.CheckpointError(f"{p}: an ONNX export (model.json); load it with backend='onnx'")
            ready = backends.run_export(p) if backend == "onnx" else None
            models.append(backends.read_export(ready) if ready else checkpoint.load_model(p))
        check_ensemble(models, [os.fspath(p) for p in paths])
        stored = FAST if inference == "fast" else models[0]["inference"]
        return cls(models, device, Inference.from_settings(stored), micro_batch, backend)

    @property
    def num_points(self) -> int:
        return checkpoint.num_points(self.models[0])

    # --------------------------------------------------------------------------------------------- network passes
    def _crops(self, images, frames, size: int) -> np.ndarray:
        """``uint8 [m, size, size, 3]``: the crops of ``frames`` (``float64 [n, 4]``), zero-padded to a whole number
        ``m`` of micro-batches."""
        n, mb = len(images), self.micro_batch
        crops = np.zeros((-(-n // mb) * mb, size, size, 3), np.uint8)
        for i, (img, fr) in enumerate(zip(images, frames)):
            crops[i] = geometry.crop_image(img, geometry.CropFrame.from_array(fr))
        return crops

    @staticmethod
    def _letterbox_frames(images, size: int) -> np.ndarray:
        return np.stack([geometry.letterbox_frame(im.shape[1], im.shape[0], size).as_array() for im in images])

    def _forward(self, net, meta, images, frames, tta: bool) -> np.ndarray:
        """``float64 [n, K, 2]`` original pixels: ``net`` on the crops of ``frames`` (``float64 [n, 4]``), run in
        padded micro-batches."""
        crops = self._crops(images, frames, int(meta["crop_size"]))
        tta = tta and meta.get("flip_perm") is not None
        pred = predict_crops(net, meta, crops, self.micro_batch, tta)
        return geometry.frames_to_original(pred[:len(images)], frames)

    def _locate(self, net, lm, images, tta_flip: bool = False):
        """A ``facebox`` localizer on the letterboxed images: ``(boxes float64 [n, 3]`` original pixels,
        ``scores float64 [n]``, ``faces int64 [n]``); see ``codecs.choose``."""
        n, lframes = len(images), self._letterbox_frames(images, int(lm["crop_size"]))
        crops = self._crops(images, lframes, int(lm["crop_size"]))
        boxes, scores, faces = detect_crops(net, lm, crops, self.micro_batch, tta_flip)
        return geometry.boxes_to_original(boxes[:n], lframes), scores[:n], faces[:n]

    def _place(self, nets, model, images, given):
        """The first placement of each image's face crop: ``(boxes float64 [n, 3]`` ``(cx, cy, extent)`` original
        pixels, localizer scores ``float64 [n]`` or ``None``, faces ``int64 [n]`` or ``None)``. ``given``:
        ``float64 [n, 4]`` corner boxes (``check_boxes``) or ``None``; its rows place their images (score 1, one
        face) and the localizer runs on the others alone (a result does not depend on the other images)."""
        n, s, lm = len(images), self.settings, None if model.get("localizer") is None else model["localizer"]["meta"]
        todo = np.arange(n) if given is None else np.flatnonzero(np.isnan(given).all(1))
        place = np.full((n, 3), np.nan) if given is None else extent_boxes(given)
        facebox = lm is not None and lm.get("head") == codecs.HEAD
        scores, faces = (np.ones(n), np.ones(n, np.int64)) if facebox else (None, None)
        if len(todo) == 0:
            return place, scores, faces
        if nets["localizer"] is None:
            raise checkpoint.CheckpointError("a 'face' model needs its localizer to place crops; it has none")
        sub = images if len(todo) == n else [images[i] for i in todo]
        if facebox:
            found, sc, fc = self._locate(nets["localizer"], lm, sub, s.tta_flip)
            if len(todo) == n:
                return found, sc, fc
            scores[todo], faces[todo] = sc, fc
        else:  # a landmark-regression localizer: its points place the crop
            lframes = self._letterbox_frames(sub, int(lm["crop_size"]))
            found = geometry.face_boxes(self._forward(nets["localizer"], lm, sub, lframes, s.tta_flip))
        place[todo] = found
        return place, scores, faces

    def _one_model(self, nets, model, images, given=None):
        """``(points float64 [n, K, 2], frames float64 [n, 4] of the final crop, placement boxes float64 [n, 3],
        localizer scores float64 [n] or None, faces int64 [n] or None)``, original pixels; ``given`` as for
        ``_place``."""
        meta = model["face"]["meta"]
        size, s = int(meta["crop_size"]), self.settings
        if meta["crop_mode"] != "face":
            frames = np.stack([geometry.make_frame(meta["crop_mode"], im.shape[1], im.shape[0], size).as_array()
                               for im in images])
            pts = self._forward(nets["face"], meta, images, frames, s.tta_flip)
            return pts, frames, geometry.face_boxes(pts), None, None
        place, scores, faces = self._place(nets, model, images, given)
        fs = meta["face_scale"]
        for _ in range(s.refine_steps):
            pts = self._forward(nets["face"], meta, images, geometry.box_frames(place, size, fs), s.tta_flip)
            place = geometry.face_boxes(pts)
        last = [self._forward(nets["face"], meta, images, geometry.box_frames(place, size, fs * sc), s.tta_flip)
                for sc in s.tta_scales]
        return np.mean(last, axis=0), geometry.box_frames(place, size, fs), place, scores, faces

    def _boxes(self, boxes, n: int | None):
        """``check_boxes`` of ``boxes`` (``None`` stays ``None``, as does a table of NaN rows alone).

        Raises:
            ValueError: ``check_boxes``' errors; a given box for a model whose crops are not placed on faces
                (``crop_mode`` other than ``face``).
        """
        if boxes is None:
            return None
        b = check_boxes(boxes, n)
        if np.isnan(b).all():
            return None
        modes = sorted({m["face"]["meta"]["crop_mode"] for m in self.models} - {"face"})
        if modes:
            raise ValueError(f"boxes place face crops, and this model's crops are {modes[0]!r} crops (of the whole "
                             f"image, not placed on a face): predict without boxes")
        return b

    # --------------------------------------------------------------------------------------------- public API
    def predict_arrays(self, images, boxes=None) -> Prediction:
        """Landmarks of image arrays (sizes may differ).

        Args:
            images: ``uint8 [H, W, 3]`` RGB or ``[H, W]`` grayscale arrays (one array is one image; ``check_image``).
            boxes: optional face boxes, ``float [N, 4]`` ``x0, y0, x1, y1`` per image (``check_boxes``: the
                landmarks' extent in continuous original pixels, not the crop; a NaN row: the localizer's box).
        Returns:
            ``Prediction`` of ``N`` images: points ``float32 [N, K, 2]`` in original pixels, continuous convention
            (pixel ``i`` spans ``[i, i + 1)``).
        Raises:
            ValueError: an array that is not a non-empty ``uint8`` image (``check_image``: names its index); boxes
                refused by ``check_boxes`` (names the row) or given to a model without face crops.
        """
        images = [check_image(im, i) for i, im in enumerate(_one_or_many(images))]
        given = self._boxes(boxes, len(images))
        if not images:
            k = self.num_points
            return Prediction(np.zeros((0, k, 2), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                              faces=np.zeros(0, np.int32))
        return self._predict_checked(images, given)

    def _predict_checked(self, images, given=None) -> Prediction:
        """``predict_arrays`` of arrays already through ``check_image``; ``given``: ``float64 [n, 4]`` boxes already
        through ``_boxes``, or ``None``."""
        outs = [self._one_model(nets, m, images, given) for nets, m in zip(self._nets, self.models)]
        points = np.mean([o[0] for o in outs], axis=0)
        frames, place, scores, faces = outs[0][1:]
        boxes = np.stack([frames[:, 0], frames[:, 1], frames[:, 0] + frames[:, 2], frames[:, 1] + frames[:, 2]], 1)
        # how far the final points' box is from the box that placed their crop, over the face's size
        final = geometry.face_boxes(outs[0][0])
        move = np.sqrt(((final - place) ** 2).mean(axis=1)) / np.maximum(place[:, 2], 1e-9)
        conf = np.exp(-move / CONFIDENCE_SCALE)
        if scores is not None:
            conf = conf * scores
        n = len(images)
        return Prediction(points.astype(np.float32), boxes.astype(np.float32), conf.astype(np.float32),
                          faces=(np.ones(n) if faces is None else faces).astype(np.int32))

    def predict(self, images, boxes=None) -> Prediction:
        """Landmarks of images.

        Args:
            images: one image or several: a file path (``str`` / ``os.PathLike``), a ``uint8 [H, W, 3]`` RGB or
                ``[H, W]`` grayscale array (``check_image``), or a list (any iterable, or a ``[N, H, W, 3]``
                array) of them. One path or one array gives a ``Prediction`` of one image.
            boxes: optional face boxes given instead of the localizer's: ``float [N, 4]`` ``x0, y0, x1, y1`` per
                image in continuous original pixels, the box of the face's landmarks (``geometry.face_boxes`` of
                the points, the localizer's quantity), not the crop (``face_scale`` times its longer side, on its
                centre). A boxed image is not passed to the localizer; its box places the first face crop, and
                refinements and TTA follow as with the localizer's box; its ``faces`` is 1 and its score 1. A row
                of four NaN: no box, the localizer places that image. ``None``: the localizer places all.
        Returns:
            ``Prediction``: points ``float32 [N, K, 2]`` in original pixels, continuous convention. An unreadable
            file gets NaN points, confidence 0 and its message in ``Prediction.errors``; the others are predicted.
        Raises:
            ValueError: an item that is neither a path nor a non-empty ``uint8`` image array (float, 16-bit, bool,
                RGBA, empty: the message names its index, dtype and shape, and what to pass); boxes of another
                shape or count, a row not finite (nor all NaN) or with ``x1 <= x0`` or ``y1 <= y0`` (the message
                names the row: ``check_boxes``), boxes for a model without face crops. Nothing is predicted then.
        """
        items = list(_one_or_many(images))
        return self._predict(items, 0, self._boxes(boxes, len(items)))

    def _predict(self, items: list, start: int, given=None) -> Prediction:
        """``predict`` of a list; ``start``: the index of ``items[0]`` among all the images (named in messages);
        ``given``: ``float64 [len(items), 4]`` boxes (``_boxes``) or ``None``."""
        arrays, errors = [], {}
        for i, im in enumerate(items):
            if isinstance(im, (str, os.PathLike)):
                try:
                    im = load_image(im)
                except ImageError as e:
                    errors[i] = str(e)
                    im = None
            else:
                im = check_image(im, start + i)
            arrays.append(im)
        good = [i for i, a in enumerate(arrays) if a is not None]
        k = self.num_points
        sub = self._predict_checked([arrays[i] for i in good], None if given is None else given[good]) if good \
            else Prediction(np.zeros((0, k, 2), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                            faces=np.zeros(0, np.int32))
        n = len(items)
        out = Prediction(np.full((n, k, 2), np.nan, np.float32), np.full((n, 4), np.nan, np.float32),
                         np.zeros(n, np.float32), errors, np.zeros(n, np.int32))
        out.points[good], out.boxes[good], out.confidence[good] = sub.points, sub.boxes, sub.confidence
        out.faces[good] = sub.faces
        return out

    def predict_iter(self, images, chunk: int = 256, boxes=None):
        """``predict`` over ``chunk`` images at a time (``Prediction`` per chunk, indices of ``errors`` within the
        chunk), so a folder of any size is predicted in bounded memory. ``images`` as for ``predict`` (one path or
        array is one image); an array that ``check_image`` refuses raises ``ValueError`` naming its index among all
        the images when its chunk is reached. ``boxes``: as for ``predict`` (``float [N, 4]``, one row per image,
        cut into chunks alongside the images). (Decoding the next chunk in a thread while one is predicted was slower
        on 2 cores: the decoder and torch's threads wait on each other.)

        Raises:
            ValueError: ``chunk`` below 1 or boxes refused by ``check_boxes`` (at once; with images of no length,
                such as a generator, a count that differs from the boxes' when the images run out), or a refused
                image array.
        """
        chunk = _at_least_one(chunk, "chunk (images read and predicted at a time)")
        images = _one_or_many(images)
        given = self._boxes(boxes, len(images) if hasattr(images, "__len__") else None)
        return self._iter(images, chunk, given)

    def _iter(self, images, chunk: int, given=None):
        batch, start = [], 0
        for im in images:
            batch.append(im)
            if len(batch) == chunk:
                yield self._predict(batch, start, self._rows(given, start, len(batch)))
                start += len(batch)
                batch = []
        if batch:
            yield self._predict(batch, start, self._rows(given, start, len(batch)))
            start += len(batch)
        if given is not None and start != len(given):
            raise ValueError(f"boxes has {len(given)} rows for {start} images: pass one row per image")

    @staticmethod
    def _rows(given, start: int, n: int):
        """Rows ``start .. start + n`` of ``given`` (``None`` stays ``None``).

        Raises:
            ValueError: fewer rows than that (more images than boxes).
        """
        if given is None:
            return None
        if start + n > len(given):
            raise ValueError(f"boxes has {len(given)} rows for more images (at least {start + n}): pass one row per "
                             f"image")
        return given[start:start + n]
