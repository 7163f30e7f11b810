"""landmarks_lib.images: the load_image policy (modes, 16-bit, alpha, EXIF, errors)."""

import numpy as np
import pytest
from PIL import Image

from landmarks_lib.core.images import ImageError, image_size, load_image, to_rgb

RNG = np.random.RandomState(0)


def check_rgb(a, h, w):
    assert a.dtype == np.uint8 and a.shape == (h, w, 3)


# ------------------------------------------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    p = tmp_path / "missing.jpg"
    for fn in (load_image, image_size):
        with pytest.raises(ImageError, match=r"missing\.jpg: image file is missing"):
            fn(p)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    for fn in (load_image, image_size):
        with pytest.raises(ImageError, match=r"empty\.jpg: image file is empty \(0 bytes\)"):
            fn(p)


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    Image.fromarray((RNG.rand(120, 100, 3) * 255).astype(np.uint8)).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert image_size(p) == (100, 120)  # the header is intact...
    with pytest.raises(ImageError, match=r"cut\.jpg: not a readable image .*truncated"):
        load_image(p)  # ...but the pixels are not


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    for fn in (load_image, image_size):
        with pytest.raises(ImageError, match=r"notes\.jpg: not a readable image \(UnidentifiedImageError"):
            fn(p)


def test_decompression_bomb_is_an_image_error(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px > 2 * 100: PIL raises DecompressionBombError
    for fn in (load_image, image_size):
        with pytest.raises(ImageError, match=r"big\.png: .*DecompressionBomb"):
            fn(p)


# ------------------------------------------------------------------------------------------------- modes
def test_rgb_jpeg_roundtrip(tmp_path):
    p = tmp_path / "rgb.png"
    a = (RNG.rand(7, 9, 3) * 255).astype(np.uint8)
    Image.fromarray(a).save(p)
    out = load_image(p)
    check_rgb(out, 7, 9)
    np.testing.assert_array_equal(out, a)


def test_grayscale_l(tmp_path):
    p = tmp_path / "gray.png"
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, "L").save(p)
    out = load_image(p)
    check_rgb(out, 3, 4)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_one_bit(tmp_path):
    p = tmp_path / "bw.png"
    im = Image.new("1", (5, 4), 0)
    im.putpixel((2, 1), 1)
    im.save(p)
    assert Image.open(p).mode == "1"
    out = load_image(p)
    check_rgb(out, 4, 5)
    assert out[1, 2].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def _palette_image(transparent):
    im = Image.new("P", (4, 3), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((1, 1), 1)
    if transparent:
        im.info["transparency"] = 0  # index 0 fully transparent
    return im


def test_palette_without_transparency(tmp_path):
    p = tmp_path / "pal.png"
    _palette_image(False).save(p)
    out = load_image(p)
    check_rgb(out, 3, 4)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == [200, 100, 50]


def test_palette_with_transparency_composited_over_black(tmp_path):
    p = tmp_path / "palt.png"
    _palette_image(True).save(p, transparency=0)
    assert "transparency" in Image.open(p).info
    out = load_image(p)
    check_rgb(out, 3, 4)
    assert out[0, 0].tolist() == [0, 0, 0]  # transparent index -> black
    assert out[1, 1].tolist() == [200, 100, 50]  # opaque index keeps its colour


def test_rgba_composited_over_black(tmp_path):
    p = tmp_path / "rgba.png"
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = [200, 100, 50, 128]
    a[0, 1] = [200, 100, 50, 255]
    a[0, 2] = [200, 100, 50, 0]
    Image.fromarray(a, "RGBA").save(p)
    out = load_image(p)
    check_rgb(out, 2, 3)
    assert out[0, 0].tolist() == [100, 50, 25]  # 200 * 128 / 255 = 100.4 -> 100
    assert out[0, 1].tolist() == [200, 100, 50]
    assert out[0, 2].tolist() == [0, 0, 0]


def test_la_composited_over_black(tmp_path):
    p = tmp_path / "la.png"
    a = np.array([[[200, 255], [200, 51]]], np.uint8)
    Image.fromarray(a, "LA").save(p)
    assert Image.open(p).mode == "LA"
    out = load_image(p)
    check_rgb(out, 1, 2)
    assert out[0, 0].tolist() == [200] * 3 and out[0, 1].tolist() == [40] * 3


def test_premultiplied_alpha_modes_use_their_colour_channels():
    """``La`` and ``RGBa`` store colour already multiplied by alpha: that is the image over black, as for ``LA``."""
    src = Image.fromarray(np.array([[[200, 128], [7, 255], [90, 0]]], np.uint8), "LA")
    la = src.convert("La")
    assert la.mode == "La"
    out = to_rgb(la)
    check_rgb(out, 1, 3)
    assert out[0].tolist() == [[100] * 3, [7] * 3, [0] * 3]  # 200 * 128 / 255 = 100.4 -> 100
    np.testing.assert_array_equal(out, to_rgb(src))  # the same as the LA image it came from
    rgba = Image.new("RGBa", (2, 1), (100, 50, 20, 128))
    assert to_rgb(rgba)[0, 0].tolist() == [100, 50, 20]


def test_unconvertible_mode_names_the_file(tmp_path, monkeypatch):
    p = tmp_path / "odd.png"
    Image.new("RGB", (4, 3)).save(p)

    def refuse(im):
        raise ValueError(f"conversion from {im.mode} to RGB not supported")

    monkeypatch.setattr("landmarks_lib.core.images.to_rgb", refuse)
    with pytest.raises(ImageError, match=r"odd\.png: image mode RGB cannot be converted to RGB \(conversion from"):
        load_image(p)


def test_cmyk_jpeg_known_colour(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    check_rgb(out, 16, 16)
    r, g, b = out[8, 8].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_16bit_scaled_by_the_type_range(tmp_path):
    """16-bit values scale by 255/65535, as the field's readers do (the same photo at 8 and 16 bits agrees), never
    stretched from the image's own darkest to brightest pixel."""
    p = tmp_path / "g16.png"
    a = np.full((4, 5), 2000, np.uint16)
    a[0, 0], a[3, 4], a[1, 1] = 1000, 3000, 1500
    Image.fromarray(a).save(p)
    assert Image.open(p).mode == "I;16"
    out = load_image(p)
    check_rgb(out, 4, 5)
    g = out[..., 0]
    assert (g[0, 0], g[1, 1], g[2, 2], g[3, 4]) == (4, 6, 8, 12)  # round(v * 255 / 65535)
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_constant_image_keeps_its_level():
    im = Image.fromarray(np.full((3, 3), 777, np.uint16))
    out = to_rgb(im)
    check_rgb(out, 3, 3)
    assert out.min() == out.max() == 3  # round(777 * 255 / 65535)


def test_float_image_is_refused_by_mode(tmp_path):
    im = Image.fromarray(np.array([[0.0, np.nan], [2.0, 4.0]], np.float32), "F")
    with pytest.raises(ImageError, match="mode F"):
        to_rgb(im)


def test_exif_orientation_ignored(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray((RNG.rand(100, 50, 3) * 255).astype(np.uint8)).save(p, exif=exif.tobytes())
    with Image.open(p) as im:
        assert im.getexif().get(0x0112) == 6
    assert image_size(p) == (50, 100)  # (width, height) as stored
    check_rgb(load_image(p), 100, 50)  # not rotated to 50 x 100


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "YCbCr", "La",
                                  "RGBa", "PA", "LAB", "HSV", "I;16B", "RGBX"])
def test_every_mode_gives_uint8_hw3(mode):
    im = Image.new(mode, (6, 4))
    out = to_rgb(im)
    check_rgb(out, 4, 6)
