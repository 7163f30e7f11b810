"""The embedded synthetic dataset: format, determinism, exact mirror layout, and labels lying on drawn strokes."""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from landmarks_lib.data import synthetic as S
from landmarks_lib.data.symmetry import estimate_mirror_permutation
from landmarks_lib.data.tables import read_landmarks, read_test_points


def _tree_bytes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def ds971(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn971") / "ds"
    # Dense K needs enough images for the median shape to separate neighbours (the default 240 does).
    args = dict(n_train=240, n_test=40, num_points=971, seed=0, write_test_truth=True)
    return S.write_dataset(out, **args), args


@pytest.fixture(scope="module")
def ds68(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn68") / "ds"
    args = dict(n_train=41, n_test=7, num_points=68, seed=5, write_test_truth=True)  # odd n_train: a self-mirror
    return S.write_dataset(out, **args), args


# --------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("k", [S.MIN_POINTS, 20, 68, 971, 2000])
def test_template_is_exactly_mirror_symmetric(k):
    t = S.template(k)
    perm = S.mirror_permutation(k)
    assert t.shape == (k, 2) and t.dtype == np.float64 and np.isfinite(t).all()
    assert perm.shape == (k,) and perm.dtype == np.int64
    assert np.array_equal(np.sort(perm), np.arange(k))
    assert np.array_equal(perm[perm], np.arange(k))
    assert np.array_equal(t[perm], t * np.array([-1.0, 1.0]))  # exact, not approximate
    # Midline points (their own mirror) lie exactly on x = 0; the others do not.
    own = perm == np.arange(k)
    assert np.all(t[own, 0] == 0.0) and np.all(t[~own, 0] != 0.0)
    # No two points coincide (else the mirror pairing would be ambiguous).
    d = np.sqrt(((t[:, None] - t[None]) ** 2).sum(-1)) + np.eye(k) * 9
    assert d.min() > 1e-4
    # Unit frame: the face oval spans y in [-1, 1].
    assert t[:, 1].min() >= -1.0 and t[:, 1].max() <= 1.0
    # The generic estimator recovers the exact pairing from the template alone.
    assert np.array_equal(estimate_mirror_permutation(t[None]), perm)


def test_points_spread_in_proportion_to_length():
    k = 971
    lay = S._layout(k)
    dense = S._dense_curves(S._DEFAULT_PERSON)
    lengths = np.array([S._length(S._full_polyline(kind, dense[name])[0]) for name, kind, _ in S._CURVES])
    spacing = lengths / np.array(lay.counts)
    total = sum(length * (2 if kind == "pair" else 1) for length, (_, kind, _) in zip(lengths, S._CURVES))
    assert np.allclose(spacing, total / k, rtol=0.1), spacing * k / total
    assert sum(n * (2 if kind == "pair" else 1) for n, (_, kind, _) in zip(lay.counts, S._CURVES)) == k


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        S.template(S.MIN_POINTS - 1)
    with pytest.raises(ValueError):
        S.write_dataset(tmp_path / "a", n_train=2, n_test=1, min_size=120, max_size=100)
    with pytest.raises(ValueError):
        S.write_dataset(tmp_path / "b", n_train=0, n_test=1)


# ---------------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("which", ["ds971", "ds68"])
def test_files_follow_the_contest_format(which, request):
    summary, args = request.getfixturevalue(which)
    k, n_train, n_test = args["num_points"], args["n_train"], args["n_test"]
    root = summary["out_dir"]
    assert summary["n_train"] == n_train and summary["n_test"] == n_test and summary["num_points"] == k

    with open(summary["train_landmarks"]) as f:
        header = f.readline().rstrip("\n").split("\t")
        first = f.readline().rstrip("\n").split("\t")
    assert header[:3] == ["file_name", "Point_0_X", "Point_0_Y"] and header[-1] == f"Point_{k - 1}_Y"
    assert len(first) == 1 + 2 * k and all(v.lstrip("-").isdigit() for v in first[1:])  # integers only

    tab = read_landmarks(summary["train_landmarks"])
    assert tab.num_points == k and len(tab) == n_train and tab.points.dtype == np.int16
    assert tab.names == [f"{i:05d}.jpg" for i in range(n_train)]
    for name, pts in zip(tab.names, tab.points):
        with Image.open(os.path.join(root, "train", "images", name)) as im:
            w, h = im.size
            assert im.format == "JPEG" and im.mode == "RGB" and "exif" not in im.info and not im.getexif()
        # The face stays mostly inside the image.
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w) & (pts[:, 1] >= 0) & (pts[:, 1] <= h)
        assert inside.mean() >= 0.9
    assert sorted(os.listdir(os.path.join(root, "train", "images"))) == tab.names

    groups = [line.rstrip("\n").split("\t") for line in open(summary["train_groups"])]
    assert groups[0] == ["file_name", "group"] and [g[0] for g in groups[1:]] == tab.names
    gid = np.array([int(g[1]) for g in groups[1:]])
    assert len(set(gid.tolist())) == summary["n_groups"] and np.bincount(gid).max() >= 2
    assert len(set(gid.tolist())) >= n_train // 6

    tp = read_test_points(summary["test_points"], num_points=k)
    m = min(30, k)
    assert len(tp) == n_test and tp.indices.shape == (n_test, m)
    assert all(len(set(row.tolist())) == m for row in tp.indices)  # distinct
    assert tp.indices.min() >= 0 and tp.indices.max() < k
    assert not set(tp.names) & set(tab.names)
    assert sorted(os.listdir(os.path.join(root, "test", "images"))) == sorted(tp.names)
    line = open(summary["test_points"]).read().splitlines()[1]
    assert line.split("\t")[1].startswith("[") and ", " in line.split("\t")[1]

    truth = read_landmarks(summary["test_truth"])
    assert truth.names == tp.names and truth.points.shape == (n_test, k, 2)


def test_small_k_writes_k_test_indices(tmp_path):
    s = S.write_dataset(tmp_path / "ds", n_train=2, n_test=2, num_points=20, seed=1)
    tp = read_test_points(s["test_points"], num_points=20)
    assert tp.indices.shape == (2, 20) and all(sorted(r.tolist()) == list(range(20)) for r in tp.indices)
    assert s["test_truth"] is None and not os.path.exists(tmp_path / "ds" / "test_truth.csv")


def test_image_sizes_and_face_scale(ds68):
    summary, args = ds68
    tab = read_landmarks(summary["train_landmarks"])
    sizes = []
    for name, pts in zip(tab.names, tab.points.astype(np.float64)):
        with Image.open(os.path.join(summary["train_images"], name)) as im:
            w, h = im.size
        sizes.append((w, h))
        assert 96 <= w <= 160 and 96 <= h <= 160
        # Face height is 35-70% of the shorter side: the labels' diameter (the oval's height, squash only narrows).
        diam = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()
        assert 0.32 <= diam / min(w, h) <= 0.74
    ratios = {round(w / h, 2) for w, h in sizes}
    assert 1.0 in ratios and (ratios & {0.75, 1.33, 0.74, 0.76, 1.32, 1.34})


def test_mirror_twins_are_exact_mirrors(ds68):
    summary, args = ds68
    tab = read_landmarks(summary["train_landmarks"])
    perm = S.mirror_permutation(68)
    p = tab.points.astype(np.int64)
    for i in range(0, args["n_train"] - 1, 2):
        with Image.open(os.path.join(summary["train_images"], tab.names[i])) as im:
            w = im.size[0]
        # labels are pixel indices (io.LABEL_OFFSET): the mirror of column x is w - 1 - x
        assert np.array_equal(p[i + 1], np.stack([w - 1 - p[i][perm, 0], p[i][perm, 1]], axis=1))
    # n_train is odd: the last image is its own mirror.
    with Image.open(os.path.join(summary["train_images"], tab.names[-1])) as im:
        w = im.size[0]
    last = p[-1]
    assert w % 2 == 1 and np.array_equal(last, np.stack([w - 1 - last[perm, 0], last[perm, 1]], axis=1))


@pytest.mark.parametrize("which", ["ds971", "ds68"])
def test_estimate_mirror_permutation_recovers_it(which, request):
    summary, args = request.getfixturevalue(which)
    tab = read_landmarks(summary["train_landmarks"])
    est = estimate_mirror_permutation(tab.points)
    assert np.array_equal(est, S.mirror_permutation(args["num_points"]))


# ------------------------------------------------------------------------------------------ determinism, dirs
def test_deterministic_and_seed_dependent(tmp_path):
    args = dict(n_train=4, n_test=2, num_points=68, write_test_truth=True)
    S.write_dataset(tmp_path / "a", seed=3, **args)
    S.write_dataset(tmp_path / "b", seed=3, **args)
    S.write_dataset(tmp_path / "c", seed=4, **args)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert len(a) == 4 + 2 + 5 and a == b
    assert set(a) == set(c)
    differ = [k for k in a if a[k] != c[k]]
    assert "train/landmarks.csv" in differ and "train/images/00000.jpg" in differ and "test/images/00004.jpg" in differ


def test_overwrite_rules(tmp_path):
    out = tmp_path / "ds"
    S.write_dataset(out, n_train=6, n_test=2, num_points=20)
    s = S.write_dataset(out, n_train=2, n_test=1, num_points=20)  # its own output: fine, stale files go
    assert sorted(os.listdir(out / "train" / "images")) == ["00000.jpg", "00001.jpg"]
    assert sorted(os.listdir(out / "test" / "images")) == ["00002.jpg"]
    assert len(read_landmarks(s["train_landmarks"])) == 2
    assert json.load(open(out / S.MARKER))["n_train"] == 2

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        S.write_dataset(foreign, n_train=2, n_test=1)
    assert os.listdir(foreign) == ["keep.txt"]
    (foreign / S.MARKER).write_text('{"generator": "something else"}')
    with pytest.raises(FileExistsError):
        S.write_dataset(foreign, n_train=2, n_test=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    S.write_dataset(empty, n_train=2, n_test=0, num_points=20)
    assert len(os.listdir(empty / "train" / "images")) == 2


def test_cli(tmp_path, capsys):
    rc = S.main([str(tmp_path / "cli"), "--n-train", "3", "--n-test", "2", "--num-points", "30", "--seed", "2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_train"] == 3 and summary["num_points"] == 30
    assert read_landmarks(tmp_path / "cli" / "train" / "landmarks.csv").points.shape == (3, 30, 2)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert S.main([str(tmp_path / "x"), "--n-train", "2"]) == 2
    assert "not empty" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- pixels under labels
def _line_profile_centre(y, vertical=False, width_px=1.5):
    """Draw one straight stroke through continuous coordinate ``y`` with the renderer's helpers and return the
    centre of the band its coverage profile describes (edges from the partial coverage of the end pixels)."""
    size = 40
    canvas = Image.new("L", (size * S.SUPERSAMPLE, size * S.SUPERSAMPLE), 0)
    pts = np.array([[5.0, y], [35.0, y]])
    if vertical:
        pts = pts[:, ::-1]
    ImageDraw.Draw(canvas).line(S._canvas_xy(pts), fill=255, width=S._odd_width(width_px))
    cover = S._downscale(canvas) / 255.0
    prof = cover[:, 20] if not vertical else cover[20, :]
    nz = np.flatnonzero(prof > 0)
    i0, i1 = nz[0], nz[-1]
    assert np.all(prof[i0 + 1:i1] == 1.0)  # a solid band
    top = i0 + 1.0 - prof[i0]  # pixel i spans [i, i + 1)
    bottom = i1 + prof[i1]
    assert abs((bottom - top) - S._odd_width(width_px) / S.SUPERSAMPLE) < 0.01  # coverage is stored as uint8
    return float((top + bottom) / 2.0)


@pytest.mark.parametrize("vertical", [False, True])
def test_pixel_convention_of_strokes(vertical):
    # Coordinates on the 1/4-pixel grid of canvas centres are drawn exactly; others to within 1/8 pixel.
    for y in (20.375, 13.625, 7.125):
        assert abs(_line_profile_centre(y, vertical) - y) < 0.01
    for y in np.linspace(10.0, 11.0, 9):
        assert abs(_line_profile_centre(y, vertical) - y) < 0.13


def test_labels_lie_on_drawn_strokes(ds971):
    summary, args = ds971
    tab = read_landmarks(summary["train_landmarks"])
    lay = S._layout(args["num_points"])
    specs = S._plan(args["n_train"], args["n_test"], args["num_points"], args["seed"], 96, 160)
    on_bg, on_stroke, cover, offsets = [], [], [], []
    for spec in specs[:8]:
        r = S._render(spec, lay, extras=True)
        lab = tab.points[spec["index"]].astype(np.int64)
        pts = r["points"]
        assert np.abs(lab + 0.5 - pts).max() <= 0.5  # labels: continuous minus 0.5, rounded to nearest
        with Image.open(os.path.join(summary["train_images"], spec["file_name"])) as im:
            jpg = np.asarray(im.convert("RGB"), dtype=np.int64)
        h, w = jpg.shape[:2]
        # The file is this rendering, up to JPEG loss (compared on 4x4 block means: noise backgrounds).
        hh, ww = h // 4 * 4, w // 4 * 4
        diff = (jpg - r["image"])[:hh, :ww].reshape(hh // 4, 4, ww // 4, 4, 3).mean(axis=(1, 3))
        assert np.abs(diff).mean() < 6  # another image would differ by tens
        bg, plain = r["background"].astype(np.int64), r["no_strokes"].astype(np.int64)
        for x, y in lab:
            if not (0 <= x < w and 0 <= y < h):
                continue
            xs, ys = [x], [y]
            block = jpg[np.ix_(ys, xs)]  # the pixel the label (x, y) indexes
            on_bg.append(np.abs(block - bg[np.ix_(ys, xs)]).max() >= 40)
            on_stroke.append(np.abs(block - plain[np.ix_(ys, xs)]).max() >= 40)
        # The pixel containing each continuous point is covered by a stroke.
        ij = np.floor(pts).astype(np.int64)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
        cover.extend(r["stroke_cover"][ij[ok, 1], ij[ok, 0]].tolist())
        # Strokes are centred on the points: stroke-coverage centroid in a 5x5 window, minus the point.
        c = r["stroke_cover"]
        for (x, y), (i, j) in zip(pts, ij):
            if 2 <= i < w - 2 and 2 <= j < h - 2:
                win = c[j - 2:j + 3, i - 2:i + 3]
                yy, xx = np.mgrid[j - 2:j + 3, i - 2:i + 3] + 0.5
                offsets.append(((xx * win).sum() / win.sum() - x, (yy * win).sum() / win.sum() - y))
    assert np.mean(on_bg) >= 0.95 and np.mean(on_stroke) >= 0.95
    cover = np.array(cover)
    assert np.quantile(cover, 0.01) >= 0.2 and np.median(cover) >= 0.6
    assert np.all(np.abs(np.mean(offsets, axis=0)) < 0.08)
