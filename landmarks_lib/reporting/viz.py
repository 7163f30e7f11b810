"""Plots used by every notebook: landmarks on images, predictions and their errors, CED curves, training curves, EDA.

Conventions
-----------
- Points are ``(x, y)`` in the package's continuous pixel convention (``landmarks_lib.__init__``): the centre of
  pixel ``(i, j)`` (column ``i``, row ``j``) is ``(i + 0.5, j + 0.5)``, the image spans ``[0, W] x [0, H]`` and ``y``
  grows downward. Images are drawn with ``imshow(image, extent=(0, W, H, 0))`` so a point lands exactly where the
  convention puts it. Arrays of points are ``[K, 2]`` (one image) or ``[N, K, 2]``, any float dtype.
- Images are ``uint8 [H, W, 3]`` RGB (``[H, W]`` grayscale is accepted and shown in gray).
- Figures are plain ``matplotlib.figure.Figure`` objects with an Agg canvas (no pyplot, so nothing is shown twice
  and no global figure list grows in loops). In a notebook, end the cell with the figure or call ``display(fig)``.
- Every public plotting function takes an optional ``ax`` when it draws a single panel: with ``ax`` it draws into
  that Axes, otherwise into a new figure; either way it returns the (root) ``Figure``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..core import geometry
from ..core.files import atomic_open
from ..core.images import as_image
from ..evaluation import eda, metrics
from ..inference import drawing

__all__ = [
    "show_points", "region_labels", "plot_prediction", "select_by_error", "gallery",
    "plot_point_errors", "plot_ced", "plot_history", "plot_mean_shape", "plot_size_histogram", "save_figure",
]

TRUTH_COLOR = "#00d5ff"  # cyan: ground truth
SEGMENT_COLOR = "#ffe600"  # yellow: truth -> prediction, for the worst points only
EDGE = dict(edgecolors="black", linewidths=0.25)  # a dark rim keeps dots visible on light and dark pixels


# ------------------------------------------------------------------------------------------------------- helpers
def new_figure(figsize=(6.0, 6.0), dpi: float = 100) -> Figure:
    """A ``Figure`` with an Agg canvas attached (renderable without pyplot or a display)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _root_figure(ax) -> Figure:
    try:
        return ax.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10
        fig = ax.figure
        while hasattr(fig, "figure") and fig.figure is not fig:
            fig = fig.figure
        return fig


def _axes(ax, figsize=(6.0, 6.0)):
    if ax is not None:
        return _root_figure(ax), ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _as_points(points, name="points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"{name}: expected [K, 2] (x, y) points, got shape {p.shape}")
    return p


def _image_figsize(w: int, h: int, longer: float = 6.0):
    s = longer / max(w, h, 1)
    return (max(w * s, 1.5), max(h * s, 1.5))


def _auto_marker_area(ax, k: int, spread: float = 0.15) -> float:
    """Scatter marker area (points^2) for ``k`` points on ``ax``: diameter ~ ``spread`` * axes width / sqrt(k),
    clipped to [0.6, 8] points, so 971 points on a 6-inch panel get ~2 pt dots and a handful of points stay visible
    (``spread`` 0.3 where the view is cropped to the face, whose points then fill the panel)."""
    fig = _root_figure(ax)
    width_pt = ax.get_position().width * fig.get_figwidth() * 72.0
    d = float(np.clip(spread * width_pt / np.sqrt(max(k, 1)), 0.6, 8.0))
    return d * d


def face_view(*point_sets, margin: float = 0.15):
    """``(x0, x1, y0, y1)``: the square around the finite points of ``point_sets`` (``[K, 2]`` each, original
    pixels), its side the box's longer side plus ``margin`` of it on each side, or None without finite points."""
    pts = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in point_sets if p is not None])
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        return None
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    c, side = (lo + hi) / 2, max(float((hi - lo).max()), 1.0) * (1 + 2 * margin)
    return c[0] - side / 2, c[0] + side / 2, c[1] - side / 2, c[1] + side / 2


def _draw_image(ax, image) -> tuple[int, int]:
    img = as_image(image)
    h, w = img.shape[:2]
    ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return w, h


def _shape_axes(ax):
    """Equal aspect, y downward (image convention) for point clouds without an image."""
    ax.set_aspect("equal", adjustable="datalim")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()


# ---------------------------------------------------------------------------------------------- points on image
def show_points(image, points, ax=None, values=None, colors=None, size=None, cmap="viridis", title=None,
                value_label: str = "value") -> Figure:
    """Draw an image with landmarks on it.

    Args:
        image: ``uint8 [H, W, 3]`` RGB (or ``[H, W]`` grayscale).
        points: ``[K, 2]`` (x, y) in the image's original pixels (continuous convention, y downward); NaN rows are
            skipped by matplotlib.
        ax: draw into this Axes; a new figure when None.
        values: optional ``[K]`` floats (e.g. per-point error in pixels): points are coloured by value through
            ``cmap`` and a colorbar is added.
        colors: optional per-point colours: ``int [K]`` labels (e.g. ``region_labels``; drawn with a categorical
            palette), ``[K, 3]``/``[K, 4]`` RGB(A) floats in ``[0, 1]``, or one matplotlib colour. Ignored when
            ``values`` is given. Default: red.
        size: scatter marker area in points^2; by default scaled to the axes size and ``K`` (~2 pt dots for 971
            points on a 6-inch panel).
        cmap: colormap for ``values``.
        title: optional axes title.
        value_label: the colorbar's label, with its unit (e.g. ``"error, px"``).
    Returns:
        The ``Figure``.
    """
    pts = _as_points(points)
    fig, ax = _axes(ax, _image_figsize(*np.asarray(image).shape[1::-1]))
    _draw_image(ax, image)
    s = _auto_marker_area(ax, len(pts)) if size is None else float(size)
    kw = dict(s=s, linewidths=0, marker="o")
    if values is not None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(v) != len(pts):
            raise ValueError(f"values has {len(v)} entries for {len(pts)} points")
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=v, cmap=cmap, **kw)
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label=value_label)
    elif colors is not None:
        c = np.asarray(colors)
        if c.ndim == 1 and len(c) == len(pts) and np.issubdtype(c.dtype, np.integer):
            palette = "tab10" if c.max(initial=0) < 10 else "tab20"
            ax.scatter(pts[:, 0], pts[:, 1], c=c % (10 if palette == "tab10" else 20), cmap=palette,
                       vmin=0, vmax=(9 if palette == "tab10" else 19), **kw)
        else:
            ax.scatter(pts[:, 0], pts[:, 1], c=colors, **kw)
    else:
        ax.scatter(pts[:, 0], pts[:, 1], c=drawing.PRED_COLOR, **kw)
    ax.set_xlim(0, np.asarray(image).shape[1])
    ax.set_ylim(np.asarray(image).shape[0], 0)
    if title is not None:
        ax.set_title(title)
    return fig


def region_labels(mean_shape, n_regions: int = 8, seed: int = 0, n_iter: int = 100) -> np.ndarray:
    """Deterministic k-means of the points of a shape into spatial clusters, to colour points by face region.

    The contest's 971-point layout is undocumented, so "regions" are simply spatial clusters of the mean shape.
    Initialisation is k-means++ with ``numpy.random.default_rng(seed)``; clusters are renumbered by the y then x of
    their centres (top to bottom, then left to right), so labels are stable for a given shape and seed.

    Args:
        mean_shape: ``[K, 2]`` points (any units, e.g. ``geometry.mean_shape``); NaN rows get label -1.
        n_regions: number of clusters (at most the number of distinct finite points).
        seed: RNG seed for the initialisation.
        n_iter: maximum Lloyd iterations.
    Returns:
        ``int64 [K]`` labels in ``[0, n_regions)``.
    """
    p = _as_points(mean_shape, "mean_shape")
    ok = np.isfinite(p).all(axis=1)
    x = p[ok]
    k = int(n_regions)
    if k < 1:
        raise ValueError("n_regions must be >= 1")
    if len(np.unique(x, axis=0)) < k:
        raise ValueError(f"region_labels: {len(np.unique(x, axis=0))} distinct points for {k} regions")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # k-means++
        d2 = ((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.asarray(centres, dtype=np.float64)
    lab = np.zeros(len(x), dtype=np.int64)
    for it in range(n_iter):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(axis=1)
        if it > 0 and np.array_equal(new, lab):
            break
        lab = new
        for j in range(k):
            m = lab == j
            if m.any():
                c[j] = x[m].mean(axis=0)
            else:  # empty cluster: move it to the point farthest from its centre
                far = ((x - c[lab]) ** 2).sum(-1).argmax()
                c[j] = x[far]
    order = np.lexsort((c[:, 0], c[:, 1]))  # top to bottom, then left to right
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    out = -np.ones(len(p), dtype=np.int64)
    out[ok] = rank[lab]
    return out


# ------------------------------------------------------------------------------------------- predictions, errors
def plot_prediction(image, truth, pred, ax=None, title=None, size=None, crop: bool = True, worst: int = 20,
                    legend: bool = True) -> Figure:
    """Ground truth (cyan) and prediction (magenta) on the image, each dot with a dark rim, and a yellow segment from
    truth to prediction for the ``worst`` points with the largest error (so the segments show where the model is
    wrong without covering the points).

    Args:
        image: ``uint8 [H, W, 3]``.
        truth: ``[K, 2]`` original pixels, or None (test images: the prediction alone).
        pred: ``[K, 2]`` original pixels (same ``K`` as ``truth``), or None (ground truth alone).
        ax: draw into this Axes; a new figure when None.
        title: optional axes title.
        size: marker area in points^2 (default: scaled to the axes and ``K``).
        crop: show the face only (``face_view`` of the points) instead of the whole image.
        worst: how many of the largest errors get a segment (0 = none).
        legend: add a legend to the axes.
    Returns:
        The ``Figure``.
    Raises:
        ValueError: ``truth`` and ``pred`` of different shapes.
    """
    fig, ax = _axes(ax, _image_figsize(*np.asarray(image).shape[1::-1]))
    w, h = _draw_image(ax, image)
    t = None if truth is None else _as_points(truth, "truth")
    p = None if pred is None else _as_points(pred, "pred")
    if t is not None and p is not None and t.shape != p.shape:
        raise ValueError(f"truth shape {t.shape} != pred shape {p.shape}")
    k = len(t) if t is not None else (len(p) if p is not None else 0)
    view = face_view(t, p) if crop and k else None
    s = _auto_marker_area(ax, k, 0.3 if view else 0.15) if size is None else float(size)
    if t is not None and p is not None and worst > 0:
        err = np.sqrt(((p - t) ** 2).sum(-1))
        order = np.argsort(np.where(np.isfinite(err), -err, np.inf), kind="stable")[: int(worst)]
        order = order[np.isfinite(err[order])]
        ax.add_collection(LineCollection(np.stack([t[order], p[order]], axis=1), colors=SEGMENT_COLOR,
                                         linewidths=0.8, zorder=2, label=f"{len(order)} largest errors"))
    if t is not None:
        ax.scatter(t[:, 0], t[:, 1], s=s, c=TRUTH_COLOR, zorder=3, label="truth", **EDGE)
    if p is not None:
        ax.scatter(p[:, 0], p[:, 1], s=s, c=drawing.PRED_COLOR, zorder=4, label="prediction", **EDGE)
    x0, x1, y0, y1 = view if view else (0, w, 0, h)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    if legend and k:
        ax.legend(loc="lower right", fontsize=6, markerscale=float(np.sqrt(16.0 / max(s, 1e-6))), framealpha=0.7)
    if title is not None:
        ax.set_title(title, fontsize=8)
    return fig


def select_by_error(errors, n: int) -> dict:
    """Pick the ``n`` best, median and worst items by error.

    Args:
        errors: ``[N]`` per-image errors (e.g. MSE or NME); NaN counts as the worst (+inf).
        n: how many of each (clipped to ``N``).
    Returns:
        ``{"best", "median", "worst"}``: ``int64 [min(n, N)]`` indices. ``best`` by increasing error, ``worst`` by
        decreasing error, ``median`` the ``n`` items around the median rank by increasing error. Ties keep index
        order (stable sort).
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    e = np.where(np.isnan(e), np.inf, e)
    n = int(max(0, min(int(n), len(e))))
    order = np.argsort(e, kind="stable")
    start = int(np.clip((len(e) - n) // 2, 0, len(e) - n))
    worst = np.argsort(-e, kind="stable")[:n]
    return {"best": order[:n].astype(np.int64), "median": order[start:start + n].astype(np.int64),
            "worst": worst.astype(np.int64)}


def gallery(images, truths, preds, errors, which: str = "worst", n: int = 8, names=None, cols: int = 4,
            panel_inches: float = 3.0, error_label: str = "err", crop: bool = True) -> Figure:
    """A grid of ``plot_prediction`` panels for the best, median or worst images by error.

    Args:
        images: a sequence of ``uint8 [H, W, 3]`` images (sizes may differ), or a callable ``i -> image`` (lazy
            loading from disk).
        truths: ``[N, K, 2]`` original pixels (or a sequence of ``[K, 2]``), or None for test images (the
            prediction alone is drawn).
        preds: ``[N, K, 2]`` original pixels.
        errors: ``[N]`` per-image errors used to pick and shown in the titles (any unit, e.g. MSE in px^2 or NME %);
            may be None when ``truths`` is None, then the first ``n`` images are shown.
        which: ``"best"``, ``"median"`` or ``"worst"`` (see ``select_by_error``), or an explicit index sequence.
        n: number of panels.
        names: optional ``[N]`` names (e.g. file names) for the titles. Each panel shows the face only
            (``plot_prediction(crop=True)``); one legend for the figure.
        cols: panels per row.
        panel_inches: size of one panel.
        error_label: label of the error in titles.
        crop: each panel shows the face only (``plot_prediction(crop=True)``); False shows the whole image.
    Returns:
        The ``Figure``.
    """
    n_items = len(preds)
    if isinstance(which, str):
        if errors is None:
            idx = np.arange(min(n, n_items))
        else:
            sel = select_by_error(errors, n)
            if which not in sel:
                raise ValueError(f"which must be one of {sorted(sel)} or an index sequence, got {which!r}")
            idx = sel[which]
    else:
        idx = np.asarray(which, dtype=np.int64).reshape(-1)
    m = len(idx)
    cols = max(1, min(int(cols), max(m, 1)))
    rows = max(1, -(-m // cols))
    fig = new_figure((panel_inches * cols, panel_inches * rows + 0.4))
    axs = fig.subplots(rows, cols, squeeze=False)
    get = images if callable(images) else (lambda i: images[i])
    for a, i in zip(axs.flat, idx):
        i = int(i)
        name = str(names[i]) if names is not None else f"#{i}"
        title = name if errors is None else f"{name}\n{error_label} = {float(np.asarray(errors)[i]):.4g}"
        plot_prediction(get(i), None if truths is None else truths[i], preds[i], ax=a, title=title, legend=False,
                        crop=crop)
    for a in list(axs.flat)[m:]:
        a.set_axis_off()
    if isinstance(which, str):
        fig.suptitle(f"first {m} of {n_items}" if errors is None else f"{which} {m} of {n_items}")
    if m:
        handles, labels = axs.flat[0].get_legend_handles_labels()
        sizes = [float(h.get_sizes()[0]) for h in handles if hasattr(h, "get_sizes") and len(h.get_sizes())]
        scale = float(np.sqrt(25.0 / max(sizes[0], 1e-6))) if sizes else 1.0  # legend dots of ~5 pt
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, markerscale=scale,
                   frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def robustness_gallery(rset, per_image: dict, n: int = 8):
    """The ``n`` worst images of the robustness set (``rset``: ``robustness.RobustnessSet``; ``per_image``: the
    per-image dict of ``robustness.evaluate``), whole frames with labels and prediction, titled with their MSE (px²)
    and confidence (a figure saying so for an empty set)."""
    if not len(rset):
        fig = new_figure((4, 1))
        fig.text(0.5, 0.5, "no validation images: no robustness set", ha="center", va="center")
        return fig
    worst = np.argsort(-per_image["mse"], kind="stable")[:n]
    titles = [f"{name} (conf {c:.2f})" for name, c in zip(rset.names, per_image["confidence"])]
    return gallery(lambda i: rset.item(i)[0], rset.points(), per_image["points"], per_image["mse"],
                   which=worst, names=titles, crop=False, error_label="MSE px²")


def plot_point_errors(mean_shape, per_point_error, ax=None, cmap="magma_r", title=None,
                      unit: str = "mean error, px") -> Figure:
    """Per-point error on the mean face: which landmarks are hard.

    Args:
        mean_shape: ``[K, 2]`` (e.g. ``geometry.mean_shape``, normalised units), y downward.
        per_point_error: ``[K]`` error per point (e.g. mean Euclidean distance in original pixels from
            ``metrics.per_point_error(...).mean(0)``); ``[N, K]`` is averaged over images (NaN ignored).
        ax: draw into this Axes; a new figure when None.
        cmap: colormap (default: darker = larger error).
        title: axes title (default mentions the mean and max).
        unit: the colorbar's label.
    Returns:
        The ``Figure`` (scatter coloured by error, colorbar, equal aspect, y downward).
    """
    p = _as_points(mean_shape, "mean_shape")
    e = np.asarray(per_point_error, dtype=np.float64)
    if e.ndim == 2:
        e = np.nanmean(e, axis=0)
    if e.shape != (len(p),):
        raise ValueError(f"per_point_error shape {e.shape} does not match {len(p)} points")
    fig, ax = _axes(ax, (6.5, 6.0))
    order = np.argsort(np.where(np.isfinite(e), e, -np.inf), kind="stable")  # worst drawn on top
    s = _auto_marker_area(ax, len(p)) * 2.0
    sc = ax.scatter(p[order, 0], p[order, 1], c=e[order], s=s, cmap=cmap, linewidths=0)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label=unit)
    _shape_axes(ax)
    ax.set_title(title if title is not None else
                 f"per-point error: mean {np.nanmean(e):.3g}, max {np.nanmax(e):.3g} (point {int(np.nanargmax(e))})")
    return fig


def plot_ced(nme_values, threshold: float = 10.0, ax=None, label=None) -> Figure:
    """Cumulative error distribution (``metrics.ced``) of per-image NME, with AUC and failure rate at the threshold.

    Several calls with the same ``ax`` overlay curves (one legend entry each).

    Args:
        nme_values: ``[N]`` per-image NME, percent (``metrics.per_image_nme``).
        threshold: NME (percent) for the AUC and the failure rate; the x axis spans ``[0, threshold]``.
        ax: draw into this Axes; a new figure when None.
        label: curve name; the legend entry is ``"{label}: AUC@{threshold}=..., FR=...%"``.
    Returns:
        The ``Figure``.
    """
    x, y, auc, fail = metrics.ced(nme_values, threshold)
    fig, ax = _axes(ax, (6.0, 4.5))
    name = f"{label}: " if label else ""
    ax.plot(x, y, label=f"{name}AUC@{threshold:g}={auc:.3f}, FR={100 * fail:.1f}% (n={len(np.ravel(nme_values))})")
    ax.set_xlim(0, threshold)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("NME, % of sqrt(bbox w * h)")
    ax.set_ylabel("share of images with NME <= x")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("cumulative error distribution")
    return fig


def plot_runs(histories: dict, val_nmes: dict | None = None, threshold: float = 10.0) -> Figure:
    """Several runs overlaid: validation MSE per epoch (all stages in order, log scale) and, when given, their CEDs.

    Args:
        histories: ``{label: history DataFrame}`` (``history.csv``: ``epoch, stage, val_mse, ...``).
        val_nmes: ``{label: [N] per-image validation NME, percent}`` (runs without one are left out of the CED).
        threshold: NME (percent) of the CED's AUC and failure rate.
    Returns:
        The ``Figure`` (one panel, or two side by side).
    """

    panels = 2 if val_nmes else 1
    fig = new_figure((6.5 * panels, 4.5))
    axs = np.atleast_1d(fig.subplots(1, panels))
    for label, h in histories.items():
        h = pd.DataFrame(h).reset_index(drop=True)
        v = pd.to_numeric(h["val_mse"], errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(v) & (v > 0)
        axs[0].plot(np.arange(1, len(h) + 1)[ok], v[ok], marker=".", label=label)
    axs[0].set_yscale("log")
    axs[0].set_xlabel("epoch, all stages in order")
    axs[0].set_ylabel("validation MSE, px^2 (log)")
    axs[0].set_title("training curves")
    axs[0].grid(True, alpha=0.3)
    axs[0].legend(fontsize=8)
    for label, nme in (val_nmes or {}).items():
        plot_ced(nme, threshold, ax=axs[1], label=label)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------- training
def plot_history(history) -> Figure:
    """Training curves: train loss, validation MSE and learning rate against a running step index.

    Args:
        history: a ``history.csv`` path or a DataFrame with columns ``epoch, stage, train_loss, val_mse, lr``, one
            row per epoch in training order. ``stage`` is a string (e.g. ``"localizer"``, ``"train"``,
            ``"finetune"``); epochs restart per stage, so rows are plotted against their position (step 1, 2, ...)
            with a dashed line and the stage name at each stage start. ``val_mse`` is in original pixels^2 (NaN
            rows, e.g. epochs without validation, are skipped). Log scales are used where all values are > 0
            (always for ``val_mse``).
    Returns:
        The ``Figure`` (three panels sharing x).
    """

    df = pd.read_csv(history) if isinstance(history, (str, os.PathLike)) else pd.DataFrame(history).copy()
    missing = {"epoch", "stage", "train_loss", "val_mse", "lr"} - set(df.columns)
    if missing:
        raise ValueError(f"history lacks columns {sorted(missing)}")
    df = df.reset_index(drop=True)
    step = np.arange(1, len(df) + 1)
    stage = df["stage"].astype(str).to_numpy()
    starts = [0] + [i for i in range(1, len(df)) if stage[i] != stage[i - 1]]
    fig = new_figure((7.5, 8.0))
    axs = fig.subplots(3, 1, sharex=True)
    panels = [("train_loss", "train loss"), ("val_mse", "validation MSE, px^2"), ("lr", "learning rate")]
    for ax, (col, ylabel) in zip(axs, panels):
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bounds = starts + [len(df)]
        for s0, s1 in zip(bounds[:-1], bounds[1:]):
            seg = slice(s0, s1)
            ok = np.isfinite(v[seg])
            ax.plot(step[seg][ok], v[seg][ok], marker="o" if s1 - s0 <= 30 else None, ms=3, label=stage[s0])
        finite = v[np.isfinite(v)]
        if len(finite) and (finite > 0).all():
            ax.set_yscale("log")
        if col == "val_mse" and len(finite):
            best = int(np.nanargmin(v))
            ax.scatter([step[best]], [v[best]], c="k", s=25, zorder=5, label=f"best {v[best]:.4g}")
        for s0 in starts[1:]:
            ax.axvline(step[s0] - 0.5, color="gray", ls="--", lw=0.8)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="both")
    handles, labels = axs[1].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    axs[1].legend(list(uniq.values()), list(uniq.keys()), fontsize=8)
    for s0 in starts:
        axs[0].annotate(stage[s0], (step[s0] - 0.5, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -2), textcoords="offset points", va="top", fontsize=8, color="gray")
    axs[-1].set_xlim(0.5, max(len(df), 1) + 0.5)
    axs[-1].set_xlabel("epoch (running count over stages)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------- EDA
def plot_mean_shape(points, ax=None, cmap="viridis", sample: int = eda.SHAPE_SAMPLE, seed: int = 0) -> Figure:
    """EDA: the mean of normalised shapes with every point, coloured by its spread.

    Shapes are normalised by ``geometry.normalize_shapes`` (centred, RMS radius 1); the mean is
    ``geometry.mean_shape`` (per-coordinate median). The colour of a point is its spread: the RMS distance of the
    normalised point to the mean point over images (normalised units; NaN ignored). Drawn from at most ``sample``
    faces (``eda.sample_rows``, seeded: more faces would not move a point visibly); the title says so.

    Args:
        points: ``[N, K, 2]`` landmarks in original pixels (NaN allowed): an array, a memmap or an
        ``coords.PointsView``.
        ax: draw into this Axes; a new figure when None.
    Returns:
        The ``Figure`` (equal aspect, y downward, colorbar "spread").
    Raises:
        ValueError: ``points`` not ``[N, K, 2]``.
    """
    shape = tuple(points.shape) if hasattr(points, "shape") else np.shape(points)
    if len(shape) != 3 or shape[2] != 2:
        raise ValueError(f"points: expected [N, K, 2], got shape {shape}")
    idx = eda.sample_rows(shape[0], sample, seed)
    q = geometry.normalize_shapes(np.asarray(points[idx], dtype=np.float64))
    ms = np.nanmedian(q, axis=0)
    spread = np.sqrt(np.nanmean(((q - ms[None]) ** 2).sum(-1), axis=0))
    fig, ax = _axes(ax, (6.5, 6.0))
    s = _auto_marker_area(ax, shape[1]) * 2.0
    sc = ax.scatter(ms[:, 0], ms[:, 1], c=spread, s=s, cmap=cmap, linewidths=0)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label="spread (RMS distance, normalised units)")
    _shape_axes(ax)
    ax.set_title(f"mean shape of {eda.sample_note(len(idx), shape[0])}, {shape[1]} points")
    return fig


def plot_size_histogram(widths, heights, bins: int = 40) -> Figure:
    """EDA: histograms of image widths, heights (pixels) and aspect ratios (width / height).

    Args:
        widths, heights: ``[N]`` image sizes in pixels.
        bins: histogram bins.
    Returns:
        The ``Figure`` (three panels).
    """
    w = np.asarray(widths, dtype=np.float64).reshape(-1)
    h = np.asarray(heights, dtype=np.float64).reshape(-1)
    if w.shape != h.shape:
        raise ValueError(f"{len(w)} widths for {len(h)} heights")
    fig = new_figure((12.0, 3.6))
    axs = fig.subplots(1, 3)
    for ax, v, name in zip(axs, [w, h, w / np.maximum(h, 1e-12)], ["width, px", "height, px", "aspect w / h"]):
        v = v[np.isfinite(v)]
        ax.hist(v, bins=bins, color="#4477aa")
        if len(v):
            ax.axvline(np.median(v), color="k", ls="--", lw=1, label=f"median {np.median(v):.4g}")
            ax.legend(fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel("images")
    fig.suptitle(f"image sizes of {len(w)} images")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------- save
def save_figure(fig, path, dpi: float = 100) -> Path:
    """Save ``fig`` as a PNG atomically (``files.atomic_open``): a reader never sees a partial file, and nothing is
    left behind on error. Creates the folder.

    Args:
        fig: a ``Figure`` (or anything with ``savefig``).
        path: target ``.png`` path.
        dpi: resolution.
    Returns:
        The target ``Path``.
    """

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return Path(path)


# ------------------------------------------------------------------------------------------------ mirror check
def plot_mirror_check(mean_shape, perm, ax=None, error=None) -> Figure:
    """EDA: does a mirror permutation map the mean face onto its mirror image?

    The mean shape (blue dots) is mirrored about the vertical line through its centroid (``x -> 2 cx - x``) and
    re-indexed by ``perm`` (red rings: point ``i`` drawn at the mirror of point ``perm[i]``). With the right
    permutation of a roughly symmetric, upright face every ring sits on its dot; grey segments join each point to
    its partner, so a wrong pair shows as a long line that crosses the face at an angle.

    Args:
        mean_shape: ``[K, 2]`` (e.g. ``geometry.mean_shape``, normalised units), y downward.
        perm: ``int [K]`` mirror permutation (``symmetry.estimate_mirror_permutation``).
        ax: draw into this Axes; a new figure when None.
        error: optional ``symmetry.mirror_error`` value shown in the title.
    Returns:
        The ``Figure``.
    """
    p = _as_points(mean_shape, "mean_shape")
    perm = np.asarray(perm, dtype=np.int64).reshape(-1)
    if perm.shape != (len(p),):
        raise ValueError(f"perm has {perm.size} entries for {len(p)} points")
    cx = np.nanmean(p[:, 0])
    mirrored = np.stack([2 * cx - p[:, 0], p[:, 1]], axis=1)[perm]
    fig, ax = _axes(ax, (6.5, 6.0))
    s = _auto_marker_area(ax, len(p)) * 2.0
    pairs = np.flatnonzero(perm > np.arange(len(p)))
    seg = np.stack([p[pairs], p[perm[pairs]]], axis=1)
    ax.add_collection(LineCollection(seg, colors="0.8", linewidths=0.4, zorder=1))
    ax.scatter(p[:, 0], p[:, 1], s=s, c="#3366cc", linewidths=0, zorder=2, label="mean shape")
    ax.scatter(mirrored[:, 0], mirrored[:, 1], s=s * 2.5, facecolors="none", edgecolors=drawing.PRED_COLOR,
               linewidths=0.5, zorder=3, label="mirrored, re-indexed by perm")
    ax.axvline(cx, color="0.6", ls="--", lw=0.8)
    _shape_axes(ax)
    n_self = int((perm == np.arange(len(p))).sum())
    err = "" if error is None else f", mirror error {float(error):.3g}"
    ax.set_title(f"{len(pairs)} mirror pairs, {n_self} midline points{err}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_face_placement(points, widths, heights, bins: int = 30, sample: int = eda.SHAPE_SAMPLE,
                        seed: int = 0) -> Figure:
    """EDA: where faces sit in their images and how large they are (``eda.face_placement``).

    Left: the centre of each face's landmark bounding box as a share of the image width and height (``(0.5, 0.5)``
    is the image centre; y downward), a scatter of at most ``sample`` faces (seeded, ``eda.sample_rows``; the
    title says so). Right: histogram of the box width over the image width, of every face. The medians are of every
    face.

    Args:
        points: ``[N, K, 2]`` landmarks, original pixels (NaN allowed): an array, a memmap or an ``coords.PointsView``
            (visited in blocks).
        widths, heights: ``[N]`` image sizes, pixels.
        bins: histogram bins.
    Returns:
        The ``Figure`` (two panels).
    Raises:
        ValueError: shapes that disagree.
    """
    place = eda.face_placement(points, widths, heights)
    cx, cy, share = place[:, 0], place[:, 1], place[:, 2]
    shown = eda.sample_rows(len(place), sample, seed)
    fig = new_figure((11.0, 4.6))
    a0, a1 = fig.subplots(1, 2)
    a0.scatter(cx[shown], cy[shown], s=6, c="#4477aa", alpha=0.5, linewidths=0)
    a0.add_patch(Rectangle((0, 0), 1, 1, fill=False, ec="0.5", lw=0.8))
    a0.axvline(0.5, color="0.7", ls="--", lw=0.8)
    a0.axhline(0.5, color="0.7", ls="--", lw=0.8)
    a0.set_xlim(-0.05, 1.05)
    a0.set_ylim(1.05, -0.05)
    a0.set_aspect("equal")
    a0.set_xlabel("face centre x / image width")
    a0.set_ylabel("face centre y / image height")
    a0.set_title(f"face centres of {eda.sample_note(len(shown), len(place), 'images')}\n"
                 f"(median of all {np.nanmedian(cx):.2f}, {np.nanmedian(cy):.2f})", fontsize=10)
    v = share[np.isfinite(share)]
    a1.hist(v, bins=bins, color="#4477aa")
    if len(v):
        a1.axvline(np.median(v), color="k", ls="--", lw=1, label=f"median {np.median(v):.2f}")
        a1.legend(fontsize=8)
    a1.set_xlabel("face width / image width")
    a1.set_ylabel("images")
    a1.set_title("face size", fontsize=10)
    fig.tight_layout()
    return fig
