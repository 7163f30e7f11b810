"""Bounded memory at any dataset size: the lazy points view, and statistics visited block by block equal the
in-memory ones (exact figures exactly; sampled figures seeded and reproducible)."""

import numpy as np
import pytest
from floats import assert_close

from landmarks_lib.core import coords, files, geometry
from landmarks_lib.data import cache
from landmarks_lib.evaluation import eda
from landmarks_lib.reporting import viz
from landmarks_lib.training import engine
from tests.test_cache import _images


def _labels(n=37, k=12, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(20, 60, (1, k, 2))
    return np.round(base + rng.normal(0, 3, (n, k, 2)) + rng.uniform(-10, 10, (n, 1, 2))).astype(np.int16)


def test_points_view_converts_only_what_is_indexed():
    labels = _labels()
    full = coords.labels_to_points(labels)
    view = coords.PointsView(labels)
    assert len(view) == 37 and view.shape == (37, 12, 2) and view.dtype == np.float32
    np.testing.assert_array_equal(view[3], full[3])
    np.testing.assert_array_equal(view[5:9], full[5:9])
    np.testing.assert_array_equal(view[np.array([7, 2, 30])], full[[7, 2, 30]])
    np.testing.assert_array_equal(np.asarray(view), full)
    np.testing.assert_array_equal(np.concatenate([b for _, b in view.chunks(5)]), full)
    assert [s for s, _ in view.chunks(10)] == [0, 10, 20, 30]
    sub = coords.PointsView(labels, np.array([4, 1, 20]))
    assert sub.shape == (3, 12, 2)
    np.testing.assert_array_equal(sub[1:], full[[1, 20]])
    np.testing.assert_array_equal(sub[np.array([2, 0])], full[[20, 4]])
    # a view hashes as the array it converts to, whatever the block size
    assert files.fingerprint(view) == files.fingerprint(full)
    assert files.fingerprint(sub) == files.fingerprint(full[[4, 1, 20]])
    assert files.fingerprint(coords.PointsView(labels[:36])) != files.fingerprint(view)


def _coverage_in_memory(points, widths, heights, crop_size, face_scale):
    """The per-image reference: every frame from make_frame, all points at once."""
    p = np.asarray(points, np.float64)
    w, h = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    ok = np.isfinite(p).all(axis=2)
    x, y = p[..., 0], p[..., 1]
    out_img = ok & ((x < 0) | (y < 0) | (x > w[:, None]) | (y > h[:, None]))
    side_face = (np.nanmax(p, axis=1) - np.nanmin(p, axis=1)).max(axis=1)
    rows = []
    for mode in geometry.CROP_MODES:
        f = np.array([geometry.make_frame(mode, w[i], h[i], crop_size, p[i], face_scale).as_array()
                      for i in range(len(p))])
        out = ok & ((x < f[:, :1]) | (y < f[:, 1:2]) | (x > f[:, :1] + f[:, 2:3]) | (y > f[:, 1:2] + f[:, 2:3]))
        share = side_face / f[:, 2]
        rows.append({"crop_mode": mode, "points_outside_image_pct": 100.0 * out_img.sum() / ok.sum(),
                     "points_outside_crop_pct": 100.0 * out.sum() / ok.sum(),
                     "images_cut_pct": 100.0 * out.any(axis=1).mean(),
                     "face_px_median": float(np.median(share * crop_size)),
                     "face_share_median": float(np.median(share))})
    return rows


def test_crop_coverage_in_blocks_equals_in_memory():
    labels = _labels(n=41)
    view = coords.PointsView(labels)
    rng = np.random.default_rng(3)
    w, h = rng.integers(50, 90, 41), rng.integers(50, 90, 41)
    expected = _coverage_in_memory(np.asarray(view), w, h, 32, 1.2)
    for chunk in (1, 6, 1000):
        assert eda.crop_coverage(view, w, h, 32, 1.2, chunk=chunk) == expected
    assert eda.crop_coverage(np.asarray(view), w, h, 32, 1.2) == expected
    assert expected[0]["points_outside_image_pct"] > 0 and expected[0]["images_cut_pct"] > 0  # not a vacuous check
    with pytest.raises(ValueError, match="N widths"):
        eda.crop_coverage(view, w[:-1], h[:-1], 32)


def test_nan_free_blocks_take_numpy_plain_reductions_with_the_same_values(monkeypatch):
    """Labels usually have no NaN: the EDA's statistics then skip the nan-functions' masked copies; every figure is
    the same as through the nan-functions (forced here for every block)."""
    labels = _labels(n=41, k=30)
    labels[3] = labels[3][::-1]
    view = coords.PointsView(labels)
    rng = np.random.default_rng(5)
    w, h = rng.integers(50, 90, 41), rng.integers(50, 90, 41)
    a = np.asarray(view, np.float64)
    for fn in ("min", "max", "mean", "sum", "median"):
        for axis in (0, 1):
            ours, numpy_nan = getattr(geometry, f"_nan{fn}"), getattr(np, f"nan{fn}")
            np.testing.assert_array_equal(ours(a, axis), numpy_nan(a, axis=axis))

    def figures():
        return (eda.crop_coverage(view, w, h, 32, 1.2, chunk=8), eda.shape_reference(view),
                eda.shape_residuals(view, chunk=8), eda.face_placement(view, w, h, chunk=8))

    fast = figures()
    monkeypatch.setattr(geometry, "_has_nan", lambda arr: True)  # numpy's nan-functions everywhere
    slow = figures()
    assert fast[0] == slow[0]
    for x, y in zip(fast[1:], slow[1:]):
        np.testing.assert_array_equal(x, y)
    monkeypatch.undo()
    # a face with unlabelled points takes the nan-aware path in its block only, and a face without any raises
    with_nan = a.copy()
    with_nan[2, :5] = np.nan
    with_nan[2, 5] = (np.nan, -500.0)  # one coordinate unknown, the other far outside: the point counts nowhere
    with_nan[9, 0] = (np.inf, 10.0)
    cov = eda.crop_coverage(with_nan, w, h, 32, 1.2, chunk=8)
    assert cov == _coverage_in_memory(with_nan, w, h, 32, 1.2)
    clean = a.copy()
    clean[2, :6] = clean[9, :1] = np.nan  # the same points ignored, differently
    assert cov == eda.crop_coverage(clean, w, h, 32, 1.2, chunk=8)
    with_nan[2] = np.nan
    with pytest.raises(ValueError, match="no finite landmarks to place the crop of image 2"):
        eda.crop_coverage(with_nan, w, h, 32, 1.2, chunk=8)


def test_crop_frames_equal_make_frame():
    p = coords.labels_to_points(_labels(n=9)).astype(np.float64)
    w, h = np.arange(60, 69), np.arange(80, 71, -1)
    for mode in geometry.CROP_MODES:
        expected = np.array([geometry.make_frame(mode, w[i], h[i], 24, p[i], 1.3).as_array() for i in range(9)])
        np.testing.assert_array_equal(eda.crop_frames(mode, w, h, 24, p, 1.3), expected)
    with pytest.raises(ValueError, match="unknown crop_mode"):
        eda.crop_frames("zoom", w, h, 24)


def test_shape_residuals_in_blocks_equal_in_memory():
    labels = _labels(n=50, k=20)
    labels[7] = labels[7][::-1]  # a scrambled shape: the outlier
    pts = coords.labels_to_points(labels).astype(np.float64)
    # the in-memory algorithm: generalised Procrustes with a median reference over every shape
    q = geometry.normalize_shapes(pts)
    m = np.nanmedian(q, axis=0)
    m -= np.nanmean(m, axis=0)
    for _ in range(3):
        m = np.nanmedian(eda._rotate_onto(q, m), axis=0)
        m -= np.nanmean(m, axis=0)
    d = np.sqrt(((eda._rotate_onto(q, m) - m) ** 2).sum(-1))
    expected = np.sqrt((d ** 2).mean(axis=1))
    np.testing.assert_array_equal(eda.shape_reference(pts), m)
    view = coords.PointsView(labels)
    for chunk in (1, 7, 10000):
        np.testing.assert_array_equal(eda.shape_residuals(view, chunk=chunk), expected)
    res, per_point = eda.shape_residuals(view[7:8], per_point=True, reference=m)
    np.testing.assert_array_equal(per_point[0], d[7])
    assert int(np.argmax(expected)) == 7


def test_sampled_reference_is_seeded_and_reproducible():
    labels = _labels(n=60, k=10)
    a = eda.shape_reference(coords.PointsView(labels), sample=25)
    np.testing.assert_array_equal(a, eda.shape_reference(coords.PointsView(labels), sample=25))
    assert not np.array_equal(a, eda.shape_reference(coords.PointsView(labels), sample=25, seed=1))
    idx = eda.sample_rows(60, 25)
    assert len(idx) == 25 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, eda.sample_rows(60, 25))
    np.testing.assert_array_equal(eda.sample_rows(20, 25), np.arange(20))


def test_face_placement_in_blocks():
    view = coords.PointsView(_labels(n=23))
    w, h = np.full(23, 100), np.full(23, 80)
    p = np.asarray(view, np.float64)
    lo, hi = p.min(axis=1), p.max(axis=1)
    expected = np.stack([(lo[:, 0] + hi[:, 0]) / 2 / 100, (lo[:, 1] + hi[:, 1]) / 2 / 80,
                         (hi[:, 0] - lo[:, 0]) / 100], 1)
    np.testing.assert_array_equal(eda.face_placement(view, w, h, chunk=4), expected)


def test_figures_state_their_sample():
    view = coords.PointsView(_labels(n=30))
    fig = viz.plot_mean_shape(view, sample=12)
    assert "12 of 30 faces (seeded sample)" in fig.axes[0].get_title()
    assert "sample" not in viz.plot_mean_shape(view).axes[0].get_title()
    fig = viz.plot_face_placement(view, np.full(30, 100), np.full(30, 100), sample=10)
    assert "10 of 30 images (seeded sample)" in fig.axes[0].get_title()
    assert len(fig.axes[0].collections[0].get_offsets()) == 10
    assert sum(p.get_height() for p in fig.axes[1].patches) == 30  # the histogram counts every face


def test_nanmean_rows_in_blocks():
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 10, (40, 6, 2)).astype(np.float32)
    pts[3, 2] = np.nan
    rows = np.array([0, 3, 5, 7, 11, 39, 20])
    expected = np.nanmean(pts[rows], axis=0)
    np.testing.assert_array_equal(engine._nanmean_rows(pts, rows), expected)  # one block: the very same
    assert_close(engine._nanmean_rows(pts, rows, chunk=2), expected)


def test_cache_from_a_points_view_equals_the_array(tmp_path):
    names = _images(tmp_path / "img", n=70)  # >= 64: the windowed process pool
    labels = np.random.default_rng(1).integers(5, 30, (70, 4, 2)).astype(np.int16)
    view = coords.PointsView(labels)
    arr = np.asarray(view)
    a = cache.get_cache(tmp_path / "img", names, "face", 16, tmp_path / "a", points=arr, num_workers=1,
                        progress=False)
    b = cache.get_cache(tmp_path / "img", names, "face", 16, tmp_path / "b", points=view, num_workers=2,
                        progress=False)
    assert a.path.rsplit("crops-", 1)[1] == b.path.rsplit("crops-", 1)[1]  # the same key
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    np.testing.assert_array_equal(np.asarray(a.points), np.asarray(b.points))
    np.testing.assert_array_equal(a.frames, b.frames)


def _scale_module():
    import importlib.util
    import os
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    spec = importlib.util.spec_from_file_location("scale_bench", os.path.join(root, "benchmarks", "scale.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_benchmark_measures_the_anonymous_memory_of_a_process_tree(tmp_path):
    import os
    import sys
    scale = _scale_module()
    # a parent holding 150 MB that forks a child writing 100 MB of its own: 250 MB of anonymous memory in the tree,
    # plus a 300 MB file mapped and read (page cache, not counted)
    code = ("import mmap, os, time\n"
            "a = bytearray(150 * 2**20)\n"
            "f = open(os.environ['MAPPED'], 'rb'); m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
            "touched = sum(m[i] for i in range(0, len(m), 4096))  # every page resident, nothing copied\n"
            "if os.fork() == 0:\n"
            "    b = bytearray(100 * 2**20); time.sleep(2.5); os._exit(0)\n"
            "time.sleep(2.5); os.wait()\n")
    mapped = tmp_path / "mapped.bin"
    with open(mapped, "wb") as f:
        f.truncate(300 * 2**20)
    res = scale.run_measured([sys.executable, "-c", code], str(tmp_path / "log"), {**os.environ, "MAPPED": str(mapped)})
    assert res["rc"] == 0 and res["wall_s"] >= 2.5
    assert 240 <= res["peak_mb"] <= 340, res  # the 300 MB mapped file would push it past 540


def test_scale_benchmark_touches_only_its_own_work_folder(tmp_path):
    scale = _scale_module()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="not made by this benchmark"):
        scale.prepare_work(str(theirs), resume=False)
    assert (theirs / "keep.txt").exists()
    ours = tmp_path / "ours"
    assert scale.prepare_work(str(ours), resume=False) == {"stages": {}}
    scale.save_state(str(ours), {"stages": {"validate": {"wall_s": 1.0, "peak_mb": 2.0, "rc": 0}}})
    assert scale.prepare_work(str(ours), resume=True)["stages"]["validate"]["peak_mb"] == 2.0
    assert scale.prepare_work(str(ours), resume=False) == {"stages": {}}  # a fresh start clears our own folder


def test_cache_keeps_no_copy_of_the_points(tmp_path):
    names = _images(tmp_path / "img", n=6)
    labels = np.random.default_rng(2).integers(5, 30, (6, 5, 2)).astype(np.int16)
    view = coords.PointsView(labels)
    c = cache.get_cache(tmp_path / "img", names, "face", 16, tmp_path / "c", margin=0.25, points=view,
                        num_workers=1, progress=False)
    import os
    assert sorted(os.listdir(c.path)) == ["frames.npy", "images.npy", "meta.json"]
    expected = geometry.frames_to_crop(np.asarray(view, np.float64), c.frames).astype(np.float32)
    assert c.points.shape == (6, 5, 2)
    np.testing.assert_array_equal(np.asarray(c.points), expected)
    np.testing.assert_array_equal(c.points[np.array([4, 1])], expected[[4, 1]])
    np.testing.assert_array_equal(c.points[2], expected[2])
    np.testing.assert_array_equal(c.points[1:3], expected[1:3])
    again = cache.get_cache(tmp_path / "img", names, "face", 16, tmp_path / "c", margin=0.25, points=view,
                            num_workers=1, progress=False)
    assert again.path == c.path
    np.testing.assert_array_equal(np.asarray(again.points), expected)
    with pytest.raises(ValueError, match="cached frames"):
        cache.CropPoints(view[:3], c.frames)


def test_the_openmp_spin_count_and_wait_policy_change_no_result():
    """The same weights under every wait: spin counts, PASSIVE, and cpuload's helper team switched on for the
    second step and off after it (the watcher's switch while training runs)."""
    import os
    import subprocess
    import sys
    code = ("import hashlib, os, landmarks_lib, torch\n"
            "from landmarks_lib.training import cpuload\nfrom landmarks_lib.models import landmark as models\n"
            "torch.set_num_threads(2); torch.manual_seed(0)\n"
            "m = models.build_model('mobilenet_v2', 10, pretrained=False, head='linear', crop_size=32).train()\n"
            "opt = torch.optim.AdamW(m.parameters(), 1e-3); x = torch.randn(8, 3, 32, 32); t = torch.randn(8, 20)\n"
            "helper = os.environ.get('HELPER') and cpuload.Throttle(cpuload.libgomp(), 1)\n"
            "for i in range(3):\n"
            "    if helper: helper.start() if i == 1 else helper.stop()\n"
            "    opt.zero_grad(); ((m(x).reshape(8, -1) - t) ** 2).mean().backward(); opt.step()\n"
            "print(hashlib.sha1(torch.cat([p.detach().flatten() for p in m.parameters()]).numpy().tobytes())"
            ".hexdigest())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    settings = ([{"GOMP_SPINCOUNT": spin} for spin in ("0", "1000", "300000")] + [{"OMP_WAIT_POLICY": "PASSIVE"}]
                + [{"HELPER": "1"}])
    digests = {subprocess.run([sys.executable, "-c", code], env={**env, **s}, capture_output=True, text=True,
                              check=True).stdout.strip() for s in settings}
    assert len(digests) == 1 and len(next(iter(digests))) == 40
