"""Crop cache: contents match direct cropping, reuse, rebuild on change, cleaning."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from landmarks_lib.core import geometry
from landmarks_lib.core.images import load_image
from landmarks_lib.data import cache


def _images(d, n=5):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        w, h = 40 + 7 * (i % 9), 60 - 3 * (i % 9)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
        names.append(f"{i}.png")
    return names


def test_cache_matches_direct_crops_and_points(tmp_path):
    names = _images(tmp_path / "img")
    pts = np.random.default_rng(1).uniform(5, 30, (len(names), 4, 2))
    c = cache.get_cache(tmp_path / "img", names, "face", 24, tmp_path / "c", margin=0.25, points=pts,
                        num_workers=1, progress=False)
    assert c.images.shape == (5, 36, 36, 3) and c.pad == 6 and c.size == 24
    for i, n in enumerate(names):
        frame = geometry.face_frame(pts[i], 24)
        np.testing.assert_array_equal(c.images[i], geometry.crop_image(load_image(tmp_path / "img" / n),
                                                                       frame.expand(0.25)))
        np.testing.assert_allclose(c.frames[i], frame.as_array())
        np.testing.assert_allclose(c.points[i], frame.to_crop(pts[i]), rtol=1e-6, atol=1e-4)
    # the stored frames map crop points back to the original ones
    back = geometry.frames_to_original(np.asarray(c.points), c.frames)
    assert np.abs(back - pts).max() < 1e-4


def test_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path):
    names = _images(tmp_path / "img")
    a = cache.get_cache(tmp_path / "img", names, "letterbox", 16, tmp_path / "c", progress=False)
    stamp = os.path.getmtime(os.path.join(a.path, "meta.json"))
    b = cache.get_cache(tmp_path / "img", names, "letterbox", 16, tmp_path / "c", progress=False)
    assert b.path == a.path and os.path.getmtime(os.path.join(b.path, "meta.json")) == stamp
    # other geometry -> another cache
    assert cache.get_cache(tmp_path / "img", names, "center", 16, tmp_path / "c", progress=False).path != a.path
    # a changed image -> rebuilt with its new pixels
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img" / names[0])
    os.utime(tmp_path / "img" / names[0], ns=(1, 10 ** 18))
    d = cache.get_cache(tmp_path / "img", names, "letterbox", 16, tmp_path / "c", progress=False)
    assert d.path != a.path and d.images[0].max() == 0
    sizes = cache.cache_size(tmp_path / "c")
    assert len(sizes) == 3 and all(v > 0 for v in sizes.values())


def test_parallel_build_equals_serial(tmp_path):
    names = _images(tmp_path / "img", n=70)  # >= 64 images: uses the process pool
    a = cache.get_cache(tmp_path / "img", names, "center", 16, tmp_path / "c1", num_workers=2, progress=False)
    b = cache.get_cache(tmp_path / "img", names, "center", 16, tmp_path / "c2", num_workers=1, progress=False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.frames, b.frames)


def test_clean_and_cli(tmp_path):
    names = _images(tmp_path / "img")
    cache.get_cache(tmp_path / "img", names, "center", 16, tmp_path / "c", progress=False)
    (tmp_path / "c" / "unrelated.txt").write_text("keep me")
    out = subprocess.run([sys.executable, "-m", "landmarks_lib.cache", str(tmp_path / "c"), "--info"],
                         capture_output=True, text=True, check=True).stdout
    assert "crops-" in out and "total" in out
    subprocess.run([sys.executable, "-m", "landmarks_lib.cache", str(tmp_path / "c"), "--clean"], check=True,
                   capture_output=True)
    assert sorted(os.listdir(tmp_path / "c")) == ["unrelated.txt"]
