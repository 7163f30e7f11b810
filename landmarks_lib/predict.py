"""Inference: a run's final model -> landmarks in original-image pixels.

A final model (``checkpoint.load_model``: ``<run>/model.pt``) holds the localizer and the face model, each
self-describing (backbone, number of points, crop geometry, input normalisation, target units, the mirror permutation
for flip TTA), and the inference settings it was validated with. Prediction for ``face`` models is two-stage: the
localizer predicts on the letterboxed image, a square around its points is cropped (``geometry.face_frame``) and the
face model predicts there; with ``refine_steps`` > 0 the face model's own prediction re-places the crop and predicts
again. Every prediction is mapped back to original pixels by the crop's frame before it leaves this module.

``python -m landmarks_lib.predict --checkpoint RUN_DIR_OR_MODEL --images DIR --out FILE.csv`` writes all points of
every image of a folder in ``landmarks.csv`` layout (tab-separated, labels, 2 decimals), with the model's own
inference settings unless flags change them.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from . import cache as cache_mod
from . import checkpoint, geometry, models
from .params import parse_scales  # noqa: F401  (re-exported: predict.parse_scales)
from .data import normalize, to_input

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS if available, else CPU; or the named device.

    Raises:
        RuntimeError: a named accelerator that is not available.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available; use device=auto or cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' requested but MPS is not available; use device=auto or cpu")
    return dev


@torch.no_grad()
def predict_crops(model, meta: dict, crops, device, batch_size: int = 128, tta_flip: bool = False,
                  amp: bool = False) -> np.ndarray:
    """Predict on ready crops.

    Args:
        crops: ``uint8 [N, S, S, 3]`` (array or memmap view), ``S = meta["crop_size"]``.
        tta_flip: also predict on the mirrored crop, map back (``x -> S - x``, points re-indexed by
            ``meta["flip_perm"]``) and average; points without a mirror partner (``meta["flip_unmatched"]``) keep
            their unflipped prediction.
        amp: bf16 autocast on CUDA.
    Returns:
        ``float32 [N, K, 2]`` crop pixels.
    """
    size = int(meta["crop_size"])
    if tta_flip and meta.get("flip_perm") is None:
        raise ValueError("tta_flip needs a checkpoint with a mirror permutation (trained with flip estimation)")
    perm = torch.as_tensor(meta["flip_perm"], dtype=torch.long) if tta_flip else None
    unmatched = torch.as_tensor(meta.get("flip_unmatched") or [], dtype=torch.long) if tta_flip else None
    out = np.zeros((len(crops), int(meta["num_points"]), 2), np.float32)
    use_amp = amp and torch.device(device).type == "cuda"
    for s in range(0, len(crops), batch_size):
        x = to_input(torch.from_numpy(np.ascontiguousarray(crops[s: s + batch_size])), torch.device(device))
        x = normalize(x, meta["input_mean"], meta["input_std"])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            y = models.to_crop_pixels(model(x).float(), size, meta["normalize_targets"])
            if tta_flip:
                yf = models.to_crop_pixels(model(torch.flip(x, dims=[3])).float(), size, meta["normalize_targets"])
                yf[..., 0] = size - yf[..., 0]
                yf = yf[:, perm.to(yf.device)]
                if unmatched is not None:  # no mirror partner: the flipped pass knows nothing about them
                    yf[:, unmatched.to(yf.device)] = y[:, unmatched.to(yf.device)]
                y = (y + yf) / 2
        out[s: s + len(x)] = y.float().cpu().numpy()
    return out


def predict_cache(model, meta, crop_cache, indices=None, device="cpu", batch_size: int = 128,
                  tta_flip: bool = False, amp: bool = False) -> np.ndarray:
    """Predict the images of a ``cache.CropCache`` (crops sliced from its border) and map to original pixels.

    Returns:
        ``float64 [n, K, 2]`` original pixels for ``indices`` (default all), in that order.
    """
    idx = np.arange(len(crop_cache)) if indices is None else np.asarray(indices)
    p, s = crop_cache.pad, crop_cache.size
    out = []
    for b in range(0, len(idx), 1024):
        sel = np.sort(idx[b: b + 1024])
        order = np.argsort(np.argsort(idx[b: b + 1024]))
        crops = crop_cache.images[sel, p: p + s, p: p + s]
        pred = predict_crops(model, meta, crops, device, batch_size, tta_flip, amp)
        out.append(geometry.frames_to_original(pred, crop_cache.frames[sel])[order])
    if not out:
        return np.zeros((0, int(meta["num_points"]), 2))
    return np.concatenate(out)


def _frames_from_points(points, size, face_scale):
    return np.stack([geometry.face_frame(p, size, face_scale).as_array() for p in points])


@dataclass(frozen=True)
class Inference:
    """Test-time settings: flip TTA, how often the face model re-places its own crop, the crop scales of the last
    pass (scale TTA, factors of the model's ``face_scale``), the batch size and bf16 autocast on CUDA."""

    tta_flip: bool = True
    refine_steps: int = 1
    tta_scales: tuple = (1.0,)
    batch_size: int = 128
    amp: bool = False

    @classmethod
    def from_settings(cls, settings: dict, **kw) -> "Inference":
        """From a mapping with ``tta_flip``, ``refine_steps``, ``tta_scales`` (parameters, or a model's stored
        ``inference``); ``kw`` sets the others."""
        return cls(bool(settings["tta_flip"]), int(settings["refine_steps"]), parse_scales(settings["tta_scales"]),
                   **kw)


@dataclass(frozen=True)
class ImageSet:
    """Images to predict: ``names`` in ``image_dir``, their crops cached under ``cache_dir``."""

    image_dir: str
    names: tuple
    cache_dir: str
    num_workers: int = 0
    progress: bool = True

    def crops(self, mode: str, size: int, frames=None, desc: str = "crops"):
        """The ``cache.CropCache`` of these images for a crop geometry (``frames`` for given face boxes)."""
        return cache_mod.get_cache(self.image_dir, list(self.names), mode, size, self.cache_dir, margin=0.0,
                                   frames=frames, num_workers=self.num_workers, progress=self.progress, desc=desc)


def predict_images(model, images: ImageSet, device="cpu", settings: Inference = Inference()) -> np.ndarray:
    """All landmarks of each image, in original pixels.

    Args:
        model: a final model (``checkpoint.load_model``: localizer + face model), or a list of them (an
            ensemble: each model's predictions, after its own crops, are averaged in original pixels).
        images: the images (``ImageSet``).
        settings: ``Inference``; flip TTA is skipped for a model without a mirror permutation.
    Returns:
        ``float64 [N, K, 2]`` original pixels.
    Raises:
        checkpoint.CheckpointError: a ``face`` model without its localizer.
    """
    if isinstance(model, (list, tuple)):
        return np.mean([predict_images(m, images, device, settings) for m in model], axis=0)
    dev = torch.device(device)
    face = model["face"]
    meta = face["meta"]
    net = checkpoint.network(face, dev)
    tta = settings.tta_flip and meta.get("flip_perm") is not None
    if meta["crop_mode"] != "face":
        c = images.crops(meta["crop_mode"], int(meta["crop_size"]), desc="test crops")
        return predict_cache(net, meta, c, None, dev, settings.batch_size, tta, settings.amp)
    if model.get("localizer") is None:
        raise checkpoint.CheckpointError("a 'face' model needs its localizer to place crops; it has none")
    loc = model["localizer"]
    lc = images.crops(loc["meta"]["crop_mode"], int(loc["meta"]["crop_size"]), desc="localizer crops")
    points = predict_cache(checkpoint.network(loc, dev), loc["meta"], lc, None, dev, settings.batch_size,
                           tta and loc["meta"].get("flip_perm") is not None, settings.amp)
    for _ in range(settings.refine_steps):
        points = _predict_face(net, meta, points, 1.0, images, dev, settings, tta)
    return np.mean([_predict_face(net, meta, points, s, images, dev, settings, tta) for s in settings.tta_scales],
                   axis=0)


def _predict_face(net, meta, points, scale, images: ImageSet, dev, settings: Inference, tta: bool) -> np.ndarray:
    """One face-crop pass: crops of side ``face_scale * scale`` times each face's extent around ``points``."""
    size = int(meta["crop_size"])
    frames = _frames_from_points(points, size, meta["face_scale"] * scale)
    c = images.crops("face", size, frames=frames, desc="face crops")
    return predict_cache(net, meta, c, None, dev, settings.batch_size, tta, settings.amp)


def list_images(image_dir) -> list:
    """Sorted image file names (by extension) in a folder."""
    return sorted(n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS))


def write_points_csv(path, names, points) -> None:
    """Write ``[N, K, 2]`` continuous original-pixel points as labels in ``landmarks.csv`` layout and convention
    (``io.points_to_labels``: minus ``io.LABEL_OFFSET``; tab-separated, 2 decimals), atomically."""
    import pandas as pd

    from .files import atomic_open
    from .io import points_to_labels

    pts = points_to_labels(points)
    k = pts.shape[1]
    cols = [f"Point_{i}_{a}" for i in range(k) for a in "XY"]
    df = pd.DataFrame(pts.reshape(len(pts), -1), columns=cols)
    df.insert(0, "file_name", list(names))
    with atomic_open(path, "w", newline="") as f:
        df.to_csv(f, sep="\t", index=False, float_format="%.2f")


def main(argv=None) -> int:
    from .params import default_cache_dir

    ap = argparse.ArgumentParser(prog="python -m landmarks_lib.predict",
                                 description="Predict all landmarks of every image in a folder (original pixels).")
    ap.add_argument("--checkpoint", required=True, nargs="+",
                    help="a run folder or its model.pt (several are averaged)")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--out", required=True, help="output CSV (landmarks.csv layout, tab-separated)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-tta", action="store_true", help="disable flip test-time augmentation")
    ap.add_argument("--refine-steps", type=int, default=None,
                    help="face crops: re-placements by the face model (default: the model's own setting)")
    ap.add_argument("--tta-scales", default=None,
                    help="face crops: crop scales of the last pass, e.g. 0.92,1.0 (default: the model's own)")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    names = list_images(a.images)
    if not names:
        ap.error(f"no images in {a.images}")
    try:
        loaded = [checkpoint.load_model(c) for c in a.checkpoint]
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stored = dict(loaded[0]["inference"])
    stored.update({k: v for k, v in (("refine_steps", a.refine_steps), ("tta_scales", a.tta_scales)) if v is not None})
    if a.no_tta:
        stored["tta_flip"] = False
    settings = Inference.from_settings(stored, batch_size=a.batch_size)
    images = ImageSet(a.images, tuple(names), a.cache_dir or default_cache_dir())
    try:
        pts = predict_images(loaded, images, select_device(a.device), settings)
        write_points_csv(a.out, names, pts)
    except (OSError, ValueError, RuntimeError) as e:  # an unreadable image, a full disk: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(names)} rows x {pts.shape[1]} points to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
