"""Image decoding: one function, ``load_image``, used by every path that reads a photo (cache, prediction, plots).

Policy (documented once, tested in ``tests/test_images.py``):

- Output is always ``uint8 [H, W, 3]`` RGB.
- EXIF orientation is **ignored**: pixels are used as stored. The contest's landmarks were made on the stored pixel
  grid, so rotating by the EXIF tag would move the face away from its labels. ``image_size`` follows the same rule.
- Grayscale (``L``, ``1``), palette (``P``), ``LA``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` are converted to RGB by
  PIL. Images with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) are composited over black, matching the
  black padding of crops; premultiplied-alpha images (``RGBa``, ``La``) already hold that composite and their colour
  channels are used as stored.
- 16-bit and 32-bit integer images (``I;16*``, ``I``) and float images (``F``) are scaled linearly from their own
  ``[min, max]`` range to ``[0, 255]`` (not clipped); a constant image becomes 0.
- A missing, empty, truncated or undecodable file raises ``ImageError`` naming the file, and so does an image over
  ``MAX_PIXELS`` (about 89 megapixels, PIL's decompression-bomb limit), checked from its header before decoding.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): larger images are refused


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` pixels is refused (over ``MAX_PIXELS``), or None; the validator and the
    loader use the same rule."""
    if width * height > MAX_PIXELS:
        return (f"{width}x{height} px ({width * height / 1e6:.0f} megapixels) is over the "
                f"{MAX_PIXELS / 1e6:.0f}-megapixel limit of images.MAX_PIXELS")
    return None


def _open(path):
    if not os.path.exists(path):
        raise ImageError(f"{path}: image file is missing")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes)")
    im = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit, named, below
            im = Image.open(path)
        too_big = size_problem(*im.size)
        if not too_big:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        if im is not None:
            im.close()
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if too_big:
        im.close()
        raise ImageError(f"{path}: {too_big}")
    return im


def to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to ``uint8 [H, W, 3]`` RGB by the policy in the module docstring.

    Raises:
        ValueError: a mode PIL cannot convert to RGB (``load_image`` reports it as ``ImageError`` with the file).
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if a.ndim == 3:
            a = a[..., 0]
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        a = np.where(finite, a, lo)  # NaN/inf pixels of float images count as the minimum
        g = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBa", "La"):  # premultiplied alpha: the colour channels are the image over black
        a = np.asarray(im, dtype=np.uint8)
        return np.repeat(a[..., :1], 3, axis=2) if mode == "La" else a[..., :3].copy()
    if mode in ("RGBA", "LA"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return np.round(rgba[..., :3] * alpha).astype(np.uint8)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def load_image(path) -> np.ndarray:
    """Decode an image file as ``uint8 [H, W, 3]`` RGB (policy in the module docstring).

    Raises:
        ImageError: missing, empty, truncated or undecodable file, or a mode that cannot be converted to RGB (the
            message names the file).
    """
    im = _open(path)
    try:
        return to_rgb(im)
    except ValueError as e:  # e.g. "conversion from X to RGB not supported"
        raise ImageError(f"{path}: image mode {im.mode} cannot be converted to RGB ({e})") from e
    finally:
        im.close()


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` in pixels as stored (EXIF orientation ignored), reading only the header.

    Raises:
        ImageError: missing, empty or undecodable file.
    """
    if not os.path.exists(path):
        raise ImageError(f"{path}: image file is missing")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def as_image(image) -> np.ndarray:
    """An image array as ``[H, W, 3]`` (or ``[H, W, 4]``): a grayscale ``[H, W]`` repeated on three channels, the
    dtype kept.

    Raises:
        ValueError: another shape.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3] (or [H, W]), got shape {a.shape}")
    return a
