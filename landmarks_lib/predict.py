"""Inference: checkpoints -> landmarks in original-image pixels.

A checkpoint (``engine.save_checkpoint``) is self-describing: backbone, number of points, crop geometry, input
normalisation, target units, the mirror permutation for flip TTA and, for ``crop_mode="face"``, the coarse model that
places the face crop. Prediction for ``face`` checkpoints is two-stage: the coarse model predicts on the letterboxed
image, a square around its points is cropped (``geometry.face_frame``) and the face model predicts there; with
``refine_steps`` > 0 the face model's own prediction re-places the crop and predicts again. Every prediction is mapped
back to original pixels by the crop's frame before it leaves this module.

``python -m landmarks_lib.predict --checkpoint FILE --images DIR --out FILE.csv`` writes all points of every image
of a folder in ``landmarks.csv`` layout (tab-separated, original pixels, 2 decimals).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from . import cache as cache_mod
from . import geometry, models
from .data import normalize, to_input

CHECKPOINT_FORMAT = "thousand-landmarks/1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this package (or of an incompatible format)."""


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (no code from the file is run).

    Raises:
        FileNotFoundError, CheckpointError.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: checkpoint is missing")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu") -> torch.nn.Module:
    """Rebuild the network of a checkpoint (no pretrained download: the weights are in the checkpoint), eval mode."""
    meta = ckpt["meta"]
    model = models.build_model(meta["backbone"], meta["num_points"], pretrained=False, dropout=meta.get("dropout", 0),
                               head=meta.get("head", "linear"), crop_size=meta["crop_size"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


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


def parse_scales(text) -> tuple:
    """``"0.92, 1.0"`` (or a number, or a sequence of numbers) -> ``(0.92, 1.0)``.

    Raises:
        ValueError: an empty list, or a value that is not a positive finite number.
    """
    items = [text] if isinstance(text, (int, float)) else (
        str(text).replace(";", ",").split(",") if isinstance(text, str) else list(text))
    out = []
    for v in items:
        if isinstance(v, str) and not v.strip():
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"crop scale {v!r} is not a number (in {text!r})") from None
        if not (np.isfinite(f) and f > 0):
            raise ValueError(f"crop scale {v!r} must be a positive number (in {text!r})")
        out.append(f)
    if not out:
        raise ValueError(f"no crop scale in {text!r}")
    return tuple(out)


def predict_images(checkpoint, image_dir, names, cache_dir, device="cpu", batch_size: int = 128,
                   tta_flip: bool = True, refine_steps: int = 1, num_workers: int = 0, progress: bool = True,
                   amp: bool = False, tta_scales=(1.0,)) -> np.ndarray:
    """All landmarks of each image, in original pixels.

    Args:
        checkpoint: a checkpoint path or loaded dict, or a list of them (an ensemble: predictions of each are
            averaged in original pixels, after each model's own crops).
        image_dir, names: the images.
        cache_dir: where their crops are cached (``cache.get_cache``).
        tta_flip: flip test-time augmentation (ignored for a checkpoint without a mirror permutation).
        refine_steps: for ``face`` checkpoints, how often the face model re-places its own crop.
        tta_scales: for ``face`` checkpoints, crop scales (factors of the checkpoint's ``face_scale``; ``parse_scales``
            text or numbers) of the last pass: each places its own crop around the same refined points and the
            predictions are averaged in original pixels (scale test-time augmentation; ``(1.0,)`` = off).
    Returns:
        ``float64 [N, K, 2]`` original pixels.
    """
    if isinstance(checkpoint, (list, tuple)):
        preds = [predict_images(c, image_dir, names, cache_dir, device, batch_size, tta_flip, refine_steps,
                                num_workers, progress, amp, tta_scales) for c in checkpoint]
        return np.mean(preds, axis=0)
    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    meta = ckpt["meta"]
    dev = torch.device(device)
    tta = tta_flip and meta.get("flip_perm") is not None
    model = model_from_checkpoint(ckpt, dev)
    size = int(meta["crop_size"])
    if meta["crop_mode"] != "face":
        c = cache_mod.get_cache(image_dir, names, meta["crop_mode"], size, cache_dir, margin=0.0,
                                num_workers=num_workers, progress=progress, desc="test crops")
        return predict_cache(model, meta, c, None, dev, batch_size, tta, amp)
    if ckpt.get("coarse") is None:
        raise CheckpointError("a 'face' checkpoint needs its coarse model to place crops; it has none")
    points = predict_images(ckpt["coarse"], image_dir, names, cache_dir, device, batch_size, tta_flip, 0,
                            num_workers, progress, amp)
    scales = parse_scales(tta_scales)
    for _ in range(max(0, int(refine_steps))):
        points = _predict_face(model, meta, points, 1.0, image_dir, names, cache_dir, dev, batch_size, tta,
                               num_workers, progress, amp)
    return np.mean([_predict_face(model, meta, points, s, image_dir, names, cache_dir, dev, batch_size, tta,
                                  num_workers, progress, amp) for s in scales], axis=0)


def _predict_face(model, meta, points, scale, image_dir, names, cache_dir, dev, batch_size, tta, num_workers,
                  progress, amp) -> np.ndarray:
    """One face-crop pass: crops of side ``face_scale * scale`` times each face's extent around ``points``."""
    size = int(meta["crop_size"])
    frames = _frames_from_points(points, size, meta["face_scale"] * scale)
    c = cache_mod.get_cache(image_dir, names, "face", size, cache_dir, margin=0.0, frames=frames,
                            num_workers=num_workers, progress=progress, desc="face crops")
    return predict_cache(model, meta, c, None, dev, batch_size, tta, amp)


def list_images(image_dir) -> list:
    """Sorted image file names (by extension) in a folder."""
    return sorted(n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS))


def write_points_csv(path, names, points) -> None:
    """Write ``[N, K, 2]`` continuous original-pixel points as labels in ``landmarks.csv`` layout and convention
    (``io.points_to_labels``: minus ``io.LABEL_OFFSET``; tab-separated, 2 decimals), atomically."""
    import pandas as pd

    from .io import atomic_open, points_to_labels

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
    ap.add_argument("--checkpoint", required=True, nargs="+", help="checkpoint file(s); several are averaged")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--out", required=True, help="output CSV (landmarks.csv layout, tab-separated)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-tta", action="store_true", help="disable flip test-time augmentation")
    ap.add_argument("--refine-steps", type=int, default=1, help="face crops: re-placements by the face model")
    ap.add_argument("--tta-scales", default="1.0", help="face crops: crop scales of the last pass, e.g. 0.92,1.0")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    names = list_images(a.images)
    if not names:
        ap.error(f"no images in {a.images}")
    dev = select_device(a.device)
    pts = predict_images(a.checkpoint if len(a.checkpoint) > 1 else a.checkpoint[0], a.images, names,
                         a.cache_dir or default_cache_dir(), dev, a.batch_size, not a.no_tta, a.refine_steps,
                         tta_scales=a.tta_scales)
    write_points_csv(a.out, names, pts)
    print(f"wrote {len(names)} rows x {pts.shape[1]} points to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
