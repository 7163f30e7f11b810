"""Points drawn on an image at its native resolution."""

from __future__ import annotations

import numpy as np

from ..core.images import as_image

PRED_COLOR = "#ff1fce"  # magenta: prediction (contrasts with cyan, and with skin, hair and dark outlines)


def render_points(image, points, color=(255, 0, 0), marker_px: float = 1, dpi: float = 100) -> np.ndarray:
    """Render an image with square point markers at its native resolution, through matplotlib.

    The figure is exactly ``W x H`` pixels with one axes filling it and no margins, so one data unit is one pixel:
    a point ``(i + 0.5, j + 0.5)`` with ``marker_px=1`` fills exactly pixel ``(i, j)`` (row ``j``, column ``i`` of
    the output). Markers are axis-aligned, non-antialiased ``marker_px x marker_px`` squares centred on the point
    (in image pixels), so with odd ``marker_px`` and a point at a pixel centre the result is pixel-exact. Pixels
    without a marker are the input image, unchanged.

    Args:
        image: ``uint8 [H, W, 3]`` RGB (or ``[H, W]`` grayscale).
        points: ``[K, 2]`` (x, y) original pixels; NaN rows are skipped. May be empty.
        color: ``(r, g, b)`` in ``0..255`` or any matplotlib colour.
        marker_px: marker side in image pixels.
        dpi: figure dpi (does not change the output; the figure is sized in pixels).
    Returns:
        ``uint8 [H, W, 3]``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    img = as_image(image)[..., :3]
    h, w = img.shape[:2]
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if isinstance(color, (tuple, list, np.ndarray)) and len(color) in (3, 4) and max(color) > 1:
        color = tuple(np.asarray(color, dtype=np.float64) / 255.0)
    rgba = to_rgba(color)
    # + 1e-3 px so that int() or round() of figsize * dpi both give exactly w, h.
    fig = Figure(figsize=((w + 1e-3) / dpi, (h + 1e-3) / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest", resample=False)
    half = marker_px / 2.0
    if len(pts):
        rects = [Rectangle((x - half, y - half), marker_px, marker_px) for x, y in pts]
        ax.add_collection(PatchCollection(rects, facecolor=rgba, edgecolor="none", linewidth=0,
                                          antialiased=False))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())
    if buf.shape[:2] != (h, w):
        raise RuntimeError(f"render_points: canvas is {buf.shape[1]}x{buf.shape[0]}, expected {w}x{h}")
    return np.ascontiguousarray(buf[..., :3]).astype(np.uint8)
