"""Tests of landmarks_lib.viz: every figure renders on tiny synthetic data; render_points is pixel-exact."""

import matplotlib

matplotlib.use("Agg")

import os  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from landmarks_lib.core import geometry
from landmarks_lib.evaluation import metrics
from landmarks_lib.inference import drawing
from landmarks_lib.reporting import viz

W, H, K, N = 48, 36, 12, 6  # non-square images, few points


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(N)]
    t = np.linspace(0, 2 * np.pi, K, endpoint=False)
    base = np.stack([W / 2 + 12 * np.cos(t), H / 2 + 10 * np.sin(t)], axis=1)
    truths = base[None] + rng.normal(0, 0.5, (N, K, 2))
    preds = truths + rng.normal(0, 1, (N, K, 2)) * np.arange(1, N + 1)[:, None, None]
    return images, truths, preds


def _check_figure(fig, tmp_path, name):
    """The figure saves to a PNG > 1 kB and its canvas is not one uniform colour."""
    path = viz.save_figure(fig, tmp_path / f"{name}.png")
    assert path.exists() and path.stat().st_size > 1000
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    assert (rgb != rgb[0, 0]).any(axis=-1).mean() > 0.01
    return rgb


# ------------------------------------------------------------------------------------------------- render_points
def test_render_points_pixel_exact_non_square():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    cells = [(0, 0), (W - 1, 0), (0, H - 1), (W - 1, H - 1), (1, 2), (17, 5), (40, 30), (3, 33)]  # (col i, row j)
    pts = np.array(cells, dtype=np.float64) + 0.5
    out = drawing.render_points(img, pts, color=(255, 0, 0), marker_px=1)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    expected = np.zeros_like(img)
    for i, j in cells:
        expected[j, i] = (255, 0, 0)
    np.testing.assert_array_equal(out, expected)


def test_render_points_y_grows_downward():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    out = drawing.render_points(img, [[10.5, 2.5]], color=(0, 255, 0))
    rows, cols = np.nonzero(out[..., 1])
    assert list(rows) == [2] and list(cols) == [10]  # near the top, not at row H - 3
    out = drawing.render_points(img, [[10.5, H - 2.5]], color=(0, 255, 0))
    rows, _ = np.nonzero(out[..., 1])
    assert list(rows) == [H - 3]


def test_render_points_keeps_image_and_marker_size():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(drawing.render_points(img, np.zeros((0, 2))), img)  # image unchanged, 1:1
    out = drawing.render_points(img, [[20.5, 10.5], [np.nan, np.nan]], color=(255, 255, 255), marker_px=3)
    changed = (out != img).any(-1)
    block = np.zeros((H, W), dtype=bool)
    block[9:12, 19:22] = True
    np.testing.assert_array_equal(changed, block & (img != 255).any(-1))
    assert (out[9:12, 19:22] == 255).all()


# ---------------------------------------------------------------------------------------------- selection, k-means
def test_select_by_error():
    e = np.array([5.0, 1.0, 9.0, 3.0, 7.0, np.nan, 4.0])
    s = viz.select_by_error(e, 2)
    assert s["best"].tolist() == [1, 3]
    assert s["worst"].tolist() == [5, 2]  # NaN counts as worst
    assert viz.select_by_error(e, 1)["median"].tolist() == [0]  # sorted: 1 3 4 [5] 7 9 nan
    assert viz.select_by_error(e, 3)["median"].tolist() == [6, 0, 4]
    s = viz.select_by_error([2.0, 1.0], 5)  # n clipped to N
    assert s["best"].tolist() == [1, 0] and s["worst"].tolist() == [0, 1]
    assert all(v.dtype == np.int64 for v in s.values())


def test_region_labels_deterministic_and_clusters():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, -5.0], [5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    pts = np.concatenate([c + rng.normal(0, 0.3, (20, 2)) for c in centres])
    a = viz.region_labels(pts, n_regions=4, seed=0)
    b = viz.region_labels(pts, n_regions=4, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (80,)
    assert sorted(set(a.tolist())) == [0, 1, 2, 3]
    for g in range(4):  # each blob is one cluster
        assert len(set(a[g * 20:(g + 1) * 20].tolist())) == 1
    assert a[0] == 0 and a[-1] == 3  # numbered top (small y) to bottom
    ms = geometry.mean_shape(rng.normal(0, 1, (5, 30, 2)))
    lab = viz.region_labels(ms, n_regions=8, seed=3)
    assert sorted(set(lab.tolist())) == list(range(8))
    np.testing.assert_array_equal(lab, viz.region_labels(ms, n_regions=8, seed=3))


# -------------------------------------------------------------------------------------------------------- figures
def test_show_points_convention_values_and_labels(data, tmp_path):
    images, truths, _ = data
    fig = viz.show_points(images[0], truths[0], values=np.arange(K), title="err")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # image + colorbar
    top = ax.transData.transform((0, 0))
    bottom = ax.transData.transform((0, H))
    assert top[1] > bottom[1]  # y = 0 is at the top of the display (display y grows upward)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), truths[0])
    _check_figure(fig, tmp_path, "values")
    labels = viz.region_labels(truths[0], 3)
    _check_figure(viz.show_points(images[0], truths[0], colors=labels), tmp_path, "labels")


def test_plot_prediction_segments_for_the_worst_points_only(data, tmp_path):
    images, truths, preds = data
    fig = viz.plot_prediction(images[0], truths[0], preds[0], title="x", worst=3, crop=False)
    lcs = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    assert len(lcs) == 1
    segs = np.array(lcs[0].get_segments())
    err = np.sqrt(((preds[0] - truths[0]) ** 2).sum(-1))
    worst = np.argsort(-err)[:3]
    assert segs.shape == (3, 2, 2)
    np.testing.assert_allclose(segs[:, 0], truths[0][worst])
    np.testing.assert_allclose(segs[:, 1], preds[0][worst])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["3 largest errors", "truth",
                                                                             "prediction"]
    _check_figure(fig, tmp_path, "pred")


def test_a_known_point_lands_on_its_pixel_in_the_face_view():
    img = np.full((200, 300, 3), 40, np.uint8)  # dark, like the synthetic drawings
    truth = np.array([[140.5, 90.5], [160.5, 90.5], [150.5, 110.5], [150.5, 70.5]])
    pred = truth + [[30.0, 0], [0, 0], [0, 0], [0, 0]]
    fig = viz.plot_prediction(img, truth, pred, size=40.0, worst=0)
    ax = fig.axes[0]
    x0, x1 = ax.get_xlim()
    assert x1 - x0 < 100  # cropped to the face, not the 300-px image
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    for (x, y), color in ((truth[0], viz.TRUTH_COLOR), (pred[0], drawing.PRED_COLOR)):  # the others lie under pred
        dx, dy = ax.transData.transform((x, y))
        px = rgba[int(round(rgba.shape[0] - dy)), int(round(dx)), :3].astype(int)
        want = np.array([int(color[i: i + 2], 16) for i in (1, 3, 5)])
        assert np.abs(px - want).max() < 40, (color, px)


def test_gallery(data, tmp_path):
    images, truths, preds = data
    err = ((preds - truths) ** 2).reshape(len(preds), -1).mean(axis=1)
    names = [f"img{i}.jpg" for i in range(N)]
    fig = viz.gallery(images, truths, preds, err, which="worst", n=3, names=names, cols=2)
    titles = [a.get_title() for a in fig.axes if a.images]
    assert len(titles) == 3
    worst = int(np.argmax(err))
    assert titles[0].startswith(f"img{worst}.jpg\n") and f"{err[worst]:.4g}" in titles[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()][1:] == ["truth", "prediction"]  # one legend
    _check_figure(fig, tmp_path, "gallery")
    fig = viz.gallery(lambda i: images[i], None, preds, None, n=2)  # test images: predictions only
    assert sum(1 for a in fig.axes if a.images) == 2
    with pytest.raises(ValueError):
        viz.gallery(images, truths, preds, err, which="middle")


def test_plot_point_errors_and_mean_shape(data, tmp_path):
    _, truths, preds = data
    ms = geometry.mean_shape(truths)
    ppe = metrics.per_point_error(preds, truths)
    fig = viz.plot_point_errors(ms, ppe)
    ax = fig.axes[0]
    assert ax.yaxis_inverted()
    np.testing.assert_allclose(np.sort(ax.collections[0].get_array()), np.sort(ppe.mean(0)))
    _check_figure(fig, tmp_path, "ppe")
    fig = viz.plot_mean_shape(truths)
    assert fig.axes[0].yaxis_inverted() and len(fig.axes[0].collections[0].get_offsets()) == K
    _check_figure(fig, tmp_path, "mean_shape")


def test_plot_ced_shared_axes(data, tmp_path):
    _, truths, preds = data
    nme = metrics.per_image_nme(preds, truths)
    fig = viz.plot_ced(nme, threshold=10.0, label="a")
    viz.plot_ced(nme * 3, threshold=10.0, ax=fig.axes[0], label="b")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(texts) == 2
    _, _, auc, fail = metrics.ced(nme * 3, 10.0)
    assert f"{auc:.3f}" in texts[1] and f"{100 * fail:.1f}%" in texts[1]
    _check_figure(fig, tmp_path, "ced")


def test_plot_history_from_csv(tmp_path):
    df = pd.DataFrame({
        "epoch": [1, 2, 1, 2, 3, 1],
        "stage": ["coarse", "coarse", "train", "train", "train", "finetune"],
        "train_loss": [5.0, 4.0, 3.0, 2.5, 2.0, 1.5],
        "val_mse": [40.0, np.nan, 20.0, 15.0, 12.0, 10.0],
        "lr": [1e-3, 1e-3, 1e-3, 5e-4, 1e-4, 1e-5],
    })
    path = tmp_path / "history.csv"
    df.to_csv(path, index=False)
    fig = viz.plot_history(path)
    assert len(fig.axes) == 3
    assert fig.axes[1].get_yscale() == "log"
    xs = np.concatenate([ln.get_xdata() for ln in fig.axes[0].get_lines() if ln.get_label() in
                         ("coarse", "train", "finetune")])
    np.testing.assert_array_equal(np.sort(xs), np.arange(1, 7))  # running step, not the per-stage epoch
    vlines = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert sorted(ln.get_xdata()[0] for ln in vlines) == [2.5, 5.5]  # stage boundaries
    _check_figure(fig, tmp_path, "history")


def test_plot_size_histogram(tmp_path):
    rng = np.random.default_rng(3)
    fig = viz.plot_size_histogram(rng.integers(100, 900, 50), rng.integers(100, 900, 50))
    assert len(fig.axes) == 3
    assert sum(p.get_height() for p in fig.axes[0].patches) == 50
    _check_figure(fig, tmp_path, "sizes")


# ----------------------------------------------------------------------------------------------------- save_figure
def test_save_figure_atomic(tmp_path):
    fig = viz.plot_size_histogram([100, 200, 300], [120, 220, 330])
    target = tmp_path / "a" / "b" / "sizes.png"
    out = viz.save_figure(fig, target)
    assert out == target and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(target.parent) == ["sizes.png"]

    class Broken:
        def savefig(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        viz.save_figure(Broken(), tmp_path / "c" / "x.png")
    assert os.listdir(tmp_path / "c") == []
