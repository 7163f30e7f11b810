"""The mirror permutation of a point layout, estimated from the labels."""

from __future__ import annotations

import numpy as np

from ..core import geometry


def _pair_greedy(cost: np.ndarray) -> np.ndarray:
    """Involutive matching: pairs ``{i, j}`` (``i == j`` allowed) taken greedily by ascending symmetric cost."""
    k = len(cost)
    iu = np.triu_indices(k)
    order = np.argsort(cost[iu], kind="stable")
    perm = -np.ones(k, dtype=np.int64)
    left = k
    for idx in order:
        i, j = iu[0][idx], iu[1][idx]
        if perm[i] < 0 and perm[j] < 0:
            perm[i], perm[j] = j, i
            left -= 1 if i == j else 2
            if left == 0:
                break
    return perm


def _fit_reflection(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares reflection (orthogonal, det -1) plus translation mapping ``src`` onto ``dst``; ``[3, 3]``.

    Kabsch/Umeyama alignment (Umeyama, IEEE TPAMI 1991) with the determinant forced to -1."""
    ms, md = src.mean(0), dst.mean(0)
    h = (src - ms).T @ (dst - md)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    a = vt.T @ np.diag([1.0, -d]) @ u.T  # det = -1
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = md - a @ ms
    return m


MIRROR_TOLERANCE = 0.1


def estimate_mirror_permutation(points: np.ndarray, iterations: int = 8, max_tilt_deg: float = 45.0,
                                step_deg: float = 0.1) -> np.ndarray:
    """Estimate which point mirrors which from training landmarks, for horizontal-flip augmentation and TTA.

    Recipe: take the mean normalised shape (``mean_shape``), centred. (1) Find its mirror line: for lines through
    the centre tilted by up to ``max_tilt_deg`` from the vertical (every degree, then every ``step_deg`` around the
    best), mirror the shape and take the median distance from each mirrored point to its nearest shape point; the
    line with the smallest median is the symmetry axis (a symmetric layout lands on itself there, and unpaired
    points cannot move a median). (2) Pair each point with the mirrored point
    nearest to it, greedily by the symmetric cost ``(|m(p_i) - p_j| + |m(p_j) - p_i|) / 2`` in ascending order, so
    that the result is an involution by construction (midline points pair with themselves). (3) Refit the mirror as
    the least-squares reflection mapping the shape onto its permuted self, trimmed to the well-matched pairs
    (``mirror_residuals``), and pair again, up to ``iterations`` times.

    Args:
        points: ``[N, K, 2]`` landmarks of many images (any pixels; NaN allowed).
    Returns:
        ``int64 [K]`` permutation ``perm`` with ``perm[perm] == arange(K)``: after flipping an image, point ``i`` of the
        flipped face is point ``perm[i]`` of the original, flipped.
    """
    ms = geometry.mean_shape(points)
    ms = ms - ms.mean(axis=0)
    ms32 = ms.astype(np.float32)

    def line(t):  # reflection about the line through the centre along the vertical tilted by t
        u = np.array([np.sin(t), np.cos(t)])
        return 2 * np.outer(u, u) - np.eye(2)

    def cost(t):  # median distance from a mirrored point to its nearest shape point (robust to unpaired points)
        m = ms32 @ line(t).astype(np.float32).T
        return float(np.median(np.sqrt(((m[:, None, :] - ms32[None, :, :]) ** 2).sum(-1)).min(1)))

    coarse = np.deg2rad(np.arange(-max_tilt_deg, max_tilt_deg + 1e-9, 1.0))
    t0 = coarse[int(np.argmin([cost(t) for t in coarse]))]
    fine = t0 + np.deg2rad(np.arange(-1.0, 1.0 + 1e-9, step_deg))
    best = line(fine[int(np.argmin([cost(t) for t in fine]))])
    refl = np.eye(3)
    refl[:2, :2] = best
    perm = None
    for _ in range(max(1, iterations)):
        mirrored = geometry.apply_affine(refl, ms)
        d = np.sqrt(((mirrored[:, None, :] - ms[None, :, :]) ** 2).sum(-1))
        new = _pair_greedy((d + d.T) / 2.0)
        if perm is not None and np.array_equal(new, perm):
            break
        perm = new
        refl = _trimmed_reflection(ms, perm)[0]
    return perm


def _trimmed_reflection(ms: np.ndarray, perm: np.ndarray, trim: float = None, iterations: int = 5):
    """``(reflection [3, 3], residuals [K])``: ``_fit_reflection`` of ``ms`` onto ``ms[perm]`` refitted up to
    ``iterations`` times on the pairs whose residual is at most ``max(trim, 3 x median residual)`` (a loose first
    cut while outliers still tilt the fit), so unpaired points neither tilt it nor hide among the paired ones."""
    trim = MIRROR_TOLERANCE if trim is None else trim
    keep = np.ones(len(ms), bool)
    refl, res = np.eye(3), np.zeros(len(ms))
    for _ in range(max(1, iterations)):
        refl = _fit_reflection(ms[keep], ms[perm][keep])
        res = np.sqrt(((geometry.apply_affine(refl, ms) - ms[perm]) ** 2).sum(-1))
        new = res <= max(trim, 3.0 * float(np.median(res)))
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
    return refl, res


def mirror_residuals(points: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Per point, how far the best-fitting reflection of the mean shape lands from the point ``perm`` pairs it with,
    in units of the shape's RMS radius: ``float64 [K]``, about 0.01 for a symmetric layout's points. Large values
    mark points without a mirror partner in the layout (a dense mesh need not be symmetric) or wrong pairs. The
    reflection is a trimmed least-squares fit (``_trimmed_reflection``)."""
    return _trimmed_reflection(geometry.mean_shape(points), perm)[1]


def mirror_unmatched(points: np.ndarray, perm: np.ndarray, tolerance: float = MIRROR_TOLERANCE) -> np.ndarray:
    """``int64`` indices of the points whose mirror residual (``mirror_residuals``) exceeds ``tolerance`` (default
    10 % of the face's RMS radius, a few pixels on a typical face): after a horizontal flip their position is
    unknown. Training masks them out of the loss on flipped samples and flip TTA keeps their unflipped prediction.
    The set is closed under ``perm`` (a point and its partner are dropped together)."""
    bad = mirror_residuals(points, perm) > tolerance
    bad |= bad[perm]
    return np.flatnonzero(bad).astype(np.int64)


def mirror_error(points: np.ndarray, perm: np.ndarray) -> float:
    """How well ``perm`` maps the mean shape onto its mirror image: RMS distance between the best-fitting reflection
    of the mean shape and the permuted one, in units of the shape's RMS radius (0 for a perfectly symmetric
    layout)."""
    return float(np.sqrt((mirror_residuals(points, perm) ** 2).mean()))
