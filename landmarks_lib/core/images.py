"""Image decoding: one function, ``load_image``, used by every path that reads a photo (cache, prediction, plots).

Policy (documented once, tested in ``tests/test_images.py``):

- Output is always ``uint8 [H, W, 3]`` RGB.
- EXIF orientation is **ignored**: pixels are used as stored. The contest's landmarks were made on the stored pixel
  grid, so rotating by the EXIF tag would move the face away from its labels. ``image_size`` follows the same rule.
- Grayscale (``L``, ``1``), palette (``P``), ``LA``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` are converted to RGB by
  PIL. Images with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) are composited over black, matching the
  black padding of crops; premultiplied-alpha images (``RGBa``, ``La``) already hold that composite and their colour
  channels are used as stored.
- 16-bit images (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit grayscale PNG and TIFF; 16-bit PGM, which PIL
  opens as ``I`` already scaled to ``0..65535``) are scaled by the fixed factor ``255 / 65535``, rounded, so that
  0 stays black, 65535 becomes 255 and an image keeps its brightness: a dark 16-bit photo stays dark, as it does
  when PIL decodes a 16-bit RGB PNG. (torchvision, scikit-image and PIL's own 16-bit RGB decoding take the high
  byte, ``v >> 8``: the same map up to one level.) An image is never stretched from its own darkest to brightest
  pixel.
- 32-bit integer (``I``, other than a PGM) and float (``F``) images have no fixed white level (depth maps,
  scientific data): they are refused with ``ImageError`` naming the file and the mode; convert them to 8-bit RGB
  first.
- A missing, empty, truncated or undecodable file raises ``ImageError`` naming the file, and so does an image over
  ``MAX_PIXELS`` (about 89 megapixels, PIL's decompression-bomb limit) or with a side over ``MAX_SIDE`` (16384 px),
  checked from its header before decoding (``load_image`` and ``image_size``; the validator uses the same rule,
  ``size_problem``).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): larger images are refused
# The longest side accepted. A letterbox crop (``geometry.crop_image``) pads an image to the square of its longest
# side L plus its resampling filter's support (2 L / S + 2 px on each side for a crop of S px): a zero-filled uint8
# array of 3 (L + 4 L / S + 6)^2 bytes, then PIL's 4-byte-per-pixel copy of it, whatever the other side. At
# L = 16384 and S = 32 that is 1.02 GB of numpy (measured by tests/test_bad_inference_inputs.py) and 1.36 GB in PIL,
# plus the image itself (at most 3 * MAX_PIXELS bytes); without this limit an 89-megapixel image 1 px high would need
# 10^16 bytes. 16384 is WebP's own limit (16383) rounded up, and it accepts every image under MAX_PIXELS with an
# aspect ratio up to 3:1 (16384 x 5461 = 89.47 megapixels): camera photos (4:3, 3:2, 16:9, 2:1) are never refused
# by it.
MAX_SIDE = 16384


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` pixels is refused (over ``MAX_PIXELS``, or a side over ``MAX_SIDE``), or
    None; the validator, the loader and the predictor's array check use the same rule."""
    if width * height > MAX_PIXELS:
        return (f"{width}x{height} px ({width * height / 1e6:.0f} megapixels) is over the "
                f"{MAX_PIXELS / 1e6:.0f}-megapixel limit of images.MAX_PIXELS")
    if max(width, height) > MAX_SIDE:
        return (f"{width}x{height} px: its longest side is over the {MAX_SIDE}-px limit of images.MAX_SIDE (a "
                f"letterbox crop pads an image to a square of its longest side); crop or downscale it")
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


UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _scale16(a: np.ndarray) -> np.ndarray:
    """``uint16`` values ``[H, W]`` (any byte order) -> ``uint8``: ``round(v * 255 / 65535)`` in integers (``v / 257``
    never falls on a half)."""
    v = np.asarray(a).astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image to ``uint8 [H, W, 3]`` RGB by the policy in the module docstring (16-bit images by
    the fixed factor ``255 / 65535``).

    Raises:
        ImageError: a 32-bit integer (``I``) or float (``F``) image, naming the mode (``load_image`` adds the file).
        ValueError: a mode PIL cannot convert to RGB (``load_image`` reports it as ``ImageError`` with the file).
    """
    mode = im.mode
    if mode in UINT16_MODES or (mode == "I" and im.format == "PPM"):  # PIL scales a PGM's maxval to 65535 in "I"
        a = np.asarray(im)
        if a.ndim == 3:
            a = a[..., 0]
        if mode == "I":
            a = np.clip(a, 0, 65535)
        return np.repeat(_scale16(a)[..., None], 3, axis=2)
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise ImageError(f"{kind} image (mode {mode}) has no fixed white level and is refused; convert it to 8-bit "
                         f"RGB (or 16-bit) first")
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
    """Decode an image file as ``uint8 [H, W, 3]`` RGB, pixels as stored (policy in the module docstring).

    Raises:
        ImageError: missing, empty, truncated or undecodable file, an image over ``MAX_PIXELS`` or with a side over
            ``MAX_SIDE``, a 32-bit integer or float image, or a mode that cannot be converted to RGB (the message
            names the file).
    """
    im = _open(path)
    try:
        return to_rgb(im)
    except ImageError as e:  # a refused mode: the file's name added
        raise ImageError(f"{path}: {e}") from e
    except ValueError as e:  # e.g. "conversion from X to RGB not supported"
        raise ImageError(f"{path}: image mode {im.mode} cannot be converted to RGB ({e})") from e
    finally:
        im.close()


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` in pixels as stored (EXIF orientation ignored), reading only the header.

    Raises:
        ImageError: missing, empty or undecodable file, or an image ``load_image`` refuses for its size (over
            ``MAX_PIXELS`` or a side over ``MAX_SIDE``: ``size_problem``).
    """
    if not os.path.exists(path):
        raise ImageError(f"{path}: image file is missing")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit, named, below
            im = Image.open(path)
        with im:
            size = int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    too_big = size_problem(*size)
    if too_big:
        raise ImageError(f"{path}: {too_big}")
    return size


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
