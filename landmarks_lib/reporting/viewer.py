"""An interactive viewer of 971 points, for Jupyter and for the HTML reports alike (plotly, no widget state).

- ``face_regions(mean_shape)``: face regions named from the data: k-means of the mean shape
  (``viz.region_labels``, seeded, so stable across runs), each named by where its centre lies on the face
  (``"upper left"``, ``"middle center"``, ...; left and right as seen in the image; ``"lower center 2"`` where two
  share a place).
- ``region_table(pred, truth, regions)``: the error of each region over a set of images.
- ``viewer_data(...)``: what the viewer shows of each image: the face crop as a JPEG data URL, the truth and prediction
points
  and, per point, the text a hover shows (index, region, error in pixels). Tested without a browser.
- ``image_viewer(...)``: a plotly figure browsing at most ``MAX_IMAGES`` images (two menus: by error, by name) with
  plotly's own zoom, pan, hover and legend toggles (truth / prediction on and off).
- ``point_viewer(...)``: each point on the mean face, coloured by its mean error over the set; its hover gives the
  index, the region and the error's mean, median and maximum, with the image where it is worst.
- ``to_html(figs)``: the figures as one HTML fragment with plotly.js embedded once (no network), which Jupyter and
  the nbconvert reports both render: ``IPython.display.HTML(viewer.to_html([...]))``.

Coordinates are original-image pixels (continuous convention); images are shown cropped to the face
(``viz.face_view``) and y grows downward.
"""

from __future__ import annotations

import base64
import io as _io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from ..evaluation import metrics
from ..inference import drawing
from . import viz

MAX_IMAGES = 50
_ROWS, _COLS = ("upper", "middle", "lower"), ("left", "center", "right")


def face_regions(mean_shape, n_regions: int = 8, seed: int = 0) -> tuple[np.ndarray, list]:
    """Face regions of a point layout, named from where they lie.

    Args:
        mean_shape: ``[K, 2]`` (``geometry.mean_shape``; any units, y downward).
        n_regions: number of regions.
        seed: k-means seed (``viz.region_labels``).
    Returns:
        ``(labels int64 [K] in [0, n_regions), names list of n_regions str)``; names are unique.
    Raises:
        ValueError: fewer distinct points than regions.
    """
    p = np.asarray(mean_shape, np.float64)
    lab = viz.region_labels(p, n_regions, seed)
    ok = np.isfinite(p).all(axis=1)
    lo, hi = np.nanmin(p[ok], axis=0), np.nanmax(p[ok], axis=0)
    names = []
    for j in range(int(n_regions)):
        c = (p[lab == j].mean(axis=0) - lo) / np.maximum(hi - lo, 1e-9)
        base = f"{_ROWS[min(2, int(c[1] * 3))]} {_COLS[min(2, int(c[0] * 3))]}"
        n = sum(1 for m in names if m == base or m.startswith(base + " "))
        names.append(base if n == 0 else f"{base} {n + 1}")
    return lab, names


def region_table(pred, truth, regions: np.ndarray, names: list) -> pd.DataFrame:
    """Per-region error over a set of images.

    Args:
        pred, truth: ``[N, K, 2]`` original pixels.
        regions, names: ``face_regions``' labels and names.
    Returns:
        one row per region, worst first: ``region``, ``points``, ``mean_error_px`` (Euclidean, over images and the
        region's points), ``mse_px2`` (the contest's MSE restricted to the region's points).
    """
    d = metrics.per_point_error(pred, truth)  # [N, K] px
    sq = ((np.asarray(pred, np.float64) - np.asarray(truth, np.float64)) ** 2)  # [N, K, 2]
    rows = [{"region": name, "points": int((regions == j).sum()),
             "mean_error_px": float(np.nanmean(d[:, regions == j])),
             "mse_px2": float(np.nanmean(sq[:, regions == j]))} for j, name in enumerate(names)]
    return pd.DataFrame(rows).sort_values("mean_error_px", ascending=False, ignore_index=True)


def _jpeg(image, view) -> tuple[str, tuple]:
    """The face crop of ``image`` (``uint8 [H, W, 3]``) inside ``view`` as a base64 JPEG (quality 90: a report of
    50 faces stays a few MB), and the crop's extent ``(x0, x1, y0, y1)`` in original pixels (clipped to the
    image)."""

    h, w = image.shape[:2]
    x0, x1, y0, y1 = view
    c0, c1 = int(max(0, np.floor(x0))), int(min(w, np.ceil(x1)))
    r0, r1 = int(max(0, np.floor(y0))), int(min(h, np.ceil(y1)))
    buf = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[r0:r1, c0:c1])).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), (c0, c1, r0, r1)


HOVER = "{kind} {index} · {text}"  # what a hover shows: "prediction 17 · upper left · 2.31 px"


def hover_texts(errors, regions, region_names) -> list:
    """The per-point part of each hover (``HOVER``'s ``text``): ``"upper left · 2.31 px"``, the point's region and
    error (no error part when ``errors`` is None)."""
    out = []
    for i in range(len(regions)):
        err = "" if errors is None or not np.isfinite(errors[i]) else f" · {errors[i]:.2f} px"
        out.append(f"{region_names[regions[i]]}{err}")
    return out


def viewer_data(images, names, preds, truths=None, regions=None, region_names=None, errors=None,
                max_images: int = MAX_IMAGES) -> list:
    """What the image viewer shows, per image (at most ``max_images``, in the given order).

    Args:
        images: a sequence of ``uint8 [H, W, 3]`` or a callable ``i -> image``.
        names: ``[N]`` image names.
        preds: ``[N, K, 2]`` original pixels. truths: ``[N, K, 2]`` or None (test images).
        regions, region_names: ``face_regions`` (default: one region, ``"face"``).
        errors: ``[N]`` per-image errors for the menu (e.g. NME %), or None.
    Returns:
        a list of dicts: ``name``, ``error``, ``png`` (a JPEG data URL of the face crop), ``extent`` ``(x0, x1, y0,
        y1)``,
        ``pred`` / ``truth`` (``float [K, 2]`` rounded to 0.01 px, truth None without labels), ``pred_text`` /
        ``truth_text`` (hover texts: kind, index, region, per-point error in px).
    """
    k = np.asarray(preds).shape[1]
    regions = np.zeros(k, np.int64) if regions is None else np.asarray(regions)
    region_names = region_names or ["face"]
    get = images if callable(images) else (lambda i: images[i])
    out = []
    for i in range(min(len(names), int(max_images))):
        p = np.asarray(preds[i], np.float64)
        t = None if truths is None else np.asarray(truths[i], np.float64)
        d = None if t is None else np.sqrt(((p - t) ** 2).sum(-1))
        png, extent = _jpeg(np.asarray(get(i)), viz.face_view(t, p))
        out.append({"name": str(names[i]), "error": None if errors is None else float(errors[i]), "png": png,
                    "extent": extent, "pred": p.round(2), "truth": None if t is None else t.round(2),
                    "pred_text": hover_texts(d, regions, region_names),
                    "truth_text": None if t is None else hover_texts(d, regions, region_names)})
    return out


def _menu(items, order, label, x, traces_per_image, n_images):
    buttons = []
    for i in order:
        vis = [False] * (traces_per_image * n_images)
        vis[i * traces_per_image: (i + 1) * traces_per_image] = [True] * traces_per_image
        it = items[i]
        text = it["name"] if it["error"] is None else f"{it['name']} ({it['error']:.3g})"
        buttons.append({"label": text, "method": "update",
                        "args": [{"visible": vis}, {"images": [_layout_image(it)], "title.text": text}]})
    return {"buttons": buttons, "direction": "down", "x": x, "y": 1.01, "xanchor": "left", "yanchor": "bottom",
            "showactive": True, "pad": {"r": 4, "t": 4}, "name": label}


def _layout_image(it) -> dict:
    x0, x1, y0, y1 = it["extent"]
    return {"source": it["png"], "xref": "x", "yref": "y", "x": x0, "y": y0, "sizex": x1 - x0, "sizey": y1 - y0,
            "sizing": "stretch", "layer": "below"}


def image_viewer(items: list, title: str = "", error_label: str = "NME %"):
    """A plotly figure browsing ``viewer_data`` items: truth (cyan) and prediction (magenta) over the face crop; a
    menu by error (worst first) and one by name (the title names the image shown); zoom, pan, hover and the legend's
    toggles (truth / prediction on and off) are plotly's own.

    Returns:
        ``plotly.graph_objects.Figure``.
    """

    fig = go.Figure()
    per = 2
    for i, it in enumerate(items):
        sets = [("truth", it["truth"], it["truth_text"], viz.TRUTH_COLOR),
                ("prediction", it["pred"], it["pred_text"], drawing.PRED_COLOR)]
        for kind, pts, text, color in sets:
            xy = np.zeros((0, 2)) if pts is None else pts
            fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name=kind, text=text or None,
                                       hovertemplate=HOVER.format(kind=kind, index="%{pointNumber}",
                                                                  text="%{text}") + "<extra></extra>",
                                       visible=(i == 0), legendgroup=kind, showlegend=(i == 0),
                                       marker={"size": 4, "color": color, "line": {"width": 0.5, "color": "black"}}))
    n = len(items)
    by_err = sorted(range(n), key=lambda i: -(items[i]["error"] or 0.0)) if n else []
    by_name = sorted(range(n), key=lambda i: items[i]["name"])
    first = items[by_err[0]] if n else None
    fig.update_layout(
        title={"text": title or (f"{n} images; menus: by {error_label} (worst first), by name" if n else "no images"),
               "y": 0.985, "yanchor": "top", "font": {"size": 13}},
        images=[_layout_image(first)] if first else [], updatemenus=[
            _menu(items, by_err, "by error", 0.0, per, n), _menu(items, by_name, "by name", 0.45, per, n)] if n else [],
        xaxis={"showgrid": False, "zeroline": False, "constrain": "domain"},
        yaxis={"autorange": "reversed", "scaleanchor": "x", "showgrid": False, "zeroline": False},
        height=680, width=640, margin={"l": 10, "r": 10, "t": 110, "b": 10}, hovermode="closest",
        legend={"orientation": "h", "y": -0.02}, template="plotly_white")
    if first:  # the first menu entry is what shows at first
        vis = [False] * (per * n)
        vis[by_err[0] * per: (by_err[0] + 1) * per] = [True] * per
        for tr, v in zip(fig.data, vis):
            tr.visible = v
    return fig


def point_texts(per_point, regions, region_names, names) -> list:
    """The point viewer's hover text of each point: index, region, mean / median / max error over the set (px)
    and the image where it is worst. ``per_point``: ``float [N, K]`` per-point errors (px)."""
    d = np.asarray(per_point, np.float64)
    worst = np.argmax(np.where(np.isfinite(d), d, -np.inf), axis=0)
    return [f"point {j} · {region_names[regions[j]]}<br>error over {len(d)} images: mean {np.nanmean(d[:, j]):.2f}, "
            f"median {np.nanmedian(d[:, j]):.2f}, max {np.nanmax(d[:, j]):.2f} px ({names[worst[j]]})"
            for j in range(d.shape[1])]


def point_viewer(mean_shape, pred, truth, names, regions=None, region_names=None):
    """Each point on the mean face coloured by its mean error (px) over the set; hover for its index, region and
    error across the set (``point_texts``).

    Returns:
        ``plotly.graph_objects.Figure``.
    """

    p = np.asarray(mean_shape, np.float64)
    regions = np.zeros(len(p), np.int64) if regions is None else np.asarray(regions)
    region_names = region_names or ["face"]
    d = metrics.per_point_error(pred, truth)
    fig = go.Figure(go.Scattergl(
        x=p[:, 0].round(4), y=p[:, 1].round(4), mode="markers", text=point_texts(d, regions, region_names, list(names)),
        hoverinfo="text", marker={"size": 6, "color": np.nanmean(d, axis=0), "colorscale": "Magma",
                                  "reversescale": True, "colorbar": {"title": {"text": "mean error, px"}}}))
    fig.update_layout(title={"text": f"per-point error over {len(d)} images (hover a point)"}, height=600, width=600,
                      yaxis={"autorange": "reversed", "scaleanchor": "x", "visible": False},
                      xaxis={"visible": False}, template="plotly_white", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def to_html(figs) -> str:
    """The figures as one HTML fragment: plotly.js embedded once (in the first), each figure a ``div`` drawn by an
    inline script, nothing loaded from the network; ``IPython.display.HTML`` of it renders in Jupyter and in the
    nbconvert reports."""
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
             for i, f in enumerate(figs)]
    return "\n".join(parts)


def report(images, names, preds, truths, mean_shape, errors=None, test=None, max_images: int = 24,
           n_regions: int = 8) -> tuple[str, pd.DataFrame]:
    """The viewers of a run's report in one HTML fragment (plotly.js once), and the per-region error table.

    Args:
        images, names, preds, truths, errors: the validation images (a callable ``i -> image``), their names,
            ``[N, K, 2]`` predictions and truth, ``[N]`` per-image errors (default their NME %); the viewer shows the
            ``max_images // 2`` worst and as many around the median (``viz.select_by_error``).
        mean_shape: ``[K, 2]`` for the regions and the point viewer.
        test: optional ``(images, names, preds)`` of test images (no truth): a third viewer of the first
            ``max_images`` (none for zero test images).
    Returns:
        ``(html, region_table(...))``.
    """
    regions, region_names = face_regions(mean_shape, n_regions)
    if errors is None:
        errors = metrics.per_image_nme(preds, truths)
    sel = viz.select_by_error(errors, max(1, max_images // 2))
    idx = list(dict.fromkeys([*sel["worst"].tolist(), *sel["median"].tolist()]))
    get = images if callable(images) else (lambda i: images[i])
    val = viewer_data(lambda j: get(idx[j]), [names[i] for i in idx], np.asarray(preds)[idx],
                      np.asarray(truths)[idx], regions, region_names, np.asarray(errors)[idx], max_images)
    figs = [image_viewer(val, f"validation: the {len(sel['worst'])} worst and {len(idx) - len(sel['worst'])} "
                              f"around the median of {len(names)} (menus: by NME %, by name)"),
            point_viewer(mean_shape, preds, truths, names, regions, region_names)]
    if test is not None and len(test[1]):  # a data folder without test images: no test viewer
        t_images, t_names, t_preds = test
        items = viewer_data(t_images, t_names, t_preds, None, regions, region_names, None, max_images)
        figs.append(image_viewer(items, f"test: the first {len(items)} of {len(t_names)} (no labels)"))
    return to_html(figs), region_table(preds, truths, regions, region_names)
