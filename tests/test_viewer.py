"""The interactive viewer: face regions named from the data, the per-region table, what a hover shows (tested
without a browser), the figures' structure, and one real-browser check that a report's viewer renders offline."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from landmarks_lib.reporting import viewer, viz

K, N = 60, 5


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, K, endpoint=False)
    shape = np.stack([100 + 40 * np.cos(t), 90 + 50 * np.sin(t)], axis=1)
    truths = np.stack([shape + rng.normal(0, 1, shape.shape) for _ in range(N)])
    preds = truths + rng.normal(0, 2, truths.shape)
    images = [np.full((200, 220, 3), 30 * i, np.uint8) for i in range(N)]
    return images, truths, preds, shape


def test_regions_are_named_by_where_they_lie_and_stable(data):
    *_, shape = data
    lab, names = viewer.face_regions(shape, 6)
    assert sorted(set(lab.tolist())) == list(range(6)) and len(set(names)) == 6
    top = int(np.argmin(shape[:, 1]))  # the topmost point (y grows downward)
    assert names[lab[top]].startswith("upper")
    assert names[lab[int(np.argmax(shape[:, 1]))]].startswith("lower")
    assert names[lab[int(np.argmin(shape[:, 0]))]].endswith("left")
    again = viewer.face_regions(shape + 5.0, 6)  # the same layout elsewhere: the same regions and names
    np.testing.assert_array_equal(again[0], lab)
    assert again[1] == names


def test_region_table(data):
    _, truths, preds, shape = data
    lab, names = viewer.face_regions(shape, 4)
    worst = preds.copy()
    worst[:, lab == 2] += 10.0  # region 2 predicted far off
    table = viewer.region_table(worst, truths, lab, names)
    assert table["region"].iloc[0] == names[2] and table["points"].sum() == K
    assert table["mean_error_px"].iloc[0] > 10
    sq = (worst - truths) ** 2
    assert table.set_index("region").loc[names[2], "mse_px2"] == pytest.approx(sq[:, lab == 2].mean())


def test_what_a_hover_shows(data):
    images, truths, preds, shape = data
    lab, names = viewer.face_regions(shape, 4)
    nme = np.arange(N, dtype=float)
    items = viewer.viewer_data(images, [f"img{i}.jpg" for i in range(N)], preds, truths, lab, names, nme,
                               max_images=3)
    assert len(items) == 3
    it = items[1]
    d = np.sqrt(((preds[1] - truths[1]) ** 2).sum(-1))
    j = 17
    hover = viewer.HOVER.format(kind="prediction", index=j, text=it["pred_text"][j])
    assert hover == f"prediction {j} · {names[lab[j]]} · {d[j]:.2f} px"
    np.testing.assert_allclose(it["pred"], preds[1], atol=0.005)
    x0, x1, y0, y1 = it["extent"]
    assert x0 <= preds[1][:, 0].min() and x1 >= preds[1][:, 0].max()  # the face crop holds the points
    assert it["png"].startswith("data:image/jpeg;base64,") and it["error"] == 1.0
    test = viewer.viewer_data(images, ["t.jpg"] * N, preds, None, lab, names)
    assert test[0]["truth"] is None and test[0]["pred_text"][0] == names[lab[0]]  # no labels, no error
    text = viewer.point_texts(viz.metrics.per_point_error(preds, truths), lab, names, [f"img{i}" for i in range(N)])
    worst = int(np.argmax(viz.metrics.per_point_error(preds, truths)[:, j]))
    assert text[j].startswith(f"point {j} · {names[lab[j]]}") and f"(img{worst})" in text[j]


def test_the_image_viewer_shows_the_worst_first_and_has_both_menus(data):
    images, truths, preds, shape = data
    nme = np.array([1.0, 5.0, 2.0, 4.0, 3.0])
    items = viewer.viewer_data(images, [f"img{i}.jpg" for i in range(N)], preds, truths, errors=nme)
    fig = viewer.image_viewer(items)
    assert len(fig.data) == 2 * N
    shown = [i for i, tr in enumerate(fig.data) if tr.visible]
    assert shown == [2, 3]  # image 1 (NME 5) first: its truth and prediction traces
    menus = fig.layout.updatemenus
    assert [b.label for b in menus[0].buttons][:2] == ["img1.jpg (5)", "img3.jpg (4)"]
    assert [b.label for b in menus[1].buttons] == [f"img{i}.jpg ({nme[i]:.3g})" for i in range(N)]
    assert fig.layout.yaxis.autorange == "reversed"  # y grows downward, as in the image
    html = viewer.to_html([fig, viewer.point_viewer(shape, preds, truths, [f"img{i}" for i in range(N)])])
    assert html.count("plotly.js v") == 1 or html.count("Plotly") > 0
    assert 'src="http' not in html  # plotly.js is embedded, nothing comes from the network


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-headless-shell") or shutil.which("chromium-browser")


@pytest.mark.skipif(not _chromium() and os.environ.get("CI") != "true",
                    reason="needs Chromium (apt-get install chromium); CI installs it")
def test_the_viewer_renders_offline_in_a_real_browser(data, tmp_path):
    images, truths, preds, shape = data
    exe = _chromium()
    assert exe, "CI must install Chromium (.ci/run)"
    items = viewer.viewer_data(images, [f"img{i}.jpg" for i in range(N)], preds, truths, errors=np.arange(N) * 1.0)
    page = tmp_path / "report.html"
    page.write_text("<html><body>" + viewer.to_html([viewer.image_viewer(items)]) + "</body></html>")
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          "--proxy-server=127.0.0.1:9", f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    dom = out.stdout
    assert "main-svg" in dom and "updatemenu" in dom, out.stderr[-2000:]  # plotly drew the figure and its menus
