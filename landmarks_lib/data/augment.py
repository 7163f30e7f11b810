"""Per-batch augmentation on tensors (on the GPU when there is one), images and landmarks by the same matrices.

Each sample gets one affine map ``M`` (``[3, 3]``, pixels, package convention) from *output crop* pixels to *cache*
pixels: an optional horizontal flip (``x -> S - x``), rotation and scale about the crop centre, a translation, and
the cache's border offset ``pad``. Images are resampled with ``torch.nn.functional.grid_sample`` (bilinear,
``align_corners=False``, whose normalised coordinates ``u = 2 x / W - 1`` match continuous pixels exactly), and
landmarks are mapped by ``M^-1``; a flipped sample's landmarks are then re-indexed by the mirror permutation
(``symmetry.estimate_mirror_permutation``). Without augmentation ``M`` is the integer shift by ``pad`` and the crop
is sliced out exactly.

Photometric jitter (brightness, contrast, saturation; one factor each per sample) follows torchvision's
``ColorJitter`` definitions (``torchvision.transforms.v2.functional.adjust_*``), drawn per sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_matrices(n: int, size: int, pad: int, generator: torch.Generator, rotate_deg: float = 0.0,
                    scale_jitter: float = 0.0, translate_frac: float = 0.0, flip: bool = False,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` augmentation maps.

    Args:
        size: output crop side ``S`` in pixels; ``pad``: the crop's offset inside the cache image.
        generator: a CPU ``torch.Generator`` (so draws do not depend on the device).
        rotate_deg: uniform in ``[-rotate_deg, rotate_deg]``; scale_jitter: zoom factor uniform in
            ``[1 - s, 1 + s]``; translate_frac: shift uniform in ``[-t, t] * S`` per axis; flip: with probability 1/2.
    Returns:
        ``(M float64 [n, 3, 3], flipped bool [n])``; ``M`` maps output crop pixels to cache pixels.
    """
    u = torch.rand((n, 5), generator=generator, dtype=torch.float64).numpy()
    ang = (u[:, 0] * 2 - 1) * math.radians(rotate_deg)
    zoom = 1 + (u[:, 1] * 2 - 1) * scale_jitter
    tx = (u[:, 2] * 2 - 1) * translate_frac * size
    ty = (u[:, 3] * 2 - 1) * translate_frac * size
    flipped = (u[:, 4] < 0.5) if flip else np.zeros(n, dtype=bool)
    c = size / 2.0
    # output -> cache: p_cache = A (D p_out + o) + t, with the flip D = diag(+-1, 1), o = (S or 0, 0) - c,
    # A = R(ang) / zoom and t = c + (tx, ty) + pad. (numpy on the CPU: a few [n] vectors, no per-op dispatch cost)
    cos, sin = np.cos(ang) / zoom, np.sin(ang) / zoom
    d = np.where(flipped, -1.0, 1.0)
    ox = np.where(flipped, float(size), 0.0) - c
    m = np.zeros((n, 3, 3))
    m[:, 0, 0], m[:, 0, 1] = cos * d, -sin
    m[:, 1, 0], m[:, 1, 1] = sin * d, cos
    m[:, 0, 2] = cos * ox - sin * -c + tx + c + pad
    m[:, 1, 2] = sin * ox + cos * -c + ty + c + pad
    m[:, 2, 2] = 1
    return torch.from_numpy(m), torch.from_numpy(flipped)


def warp_images(images: torch.Tensor, m: torch.Tensor, size: int) -> torch.Tensor:
    """Resample cache images by output->cache maps.

    Args:
        images: ``[B, 3, Sc, Sc]`` float (any range).
        m: ``[B, 3, 3]`` output->cache pixel maps (``random_matrices``).
        size: output side ``S``.
    Returns:
        ``[B, 3, S, S]``, zeros outside the cache image.
    """
    b, _, h, w = images.shape
    # theta maps normalised output coords to normalised input coords: N_in M N_out^-1, N(p) = 2 p / W - 1.
    n_in = torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1], [0, 0, 1]], dtype=torch.float64)
    n_out_inv = torch.tensor([[size / 2.0, 0, size / 2.0], [0, size / 2.0, size / 2.0], [0, 0, 1]],
                             dtype=torch.float64)
    theta = (n_in @ m.cpu() @ n_out_inv)[:, :2, :].to(images.device, images.dtype)
    return F.grid_sample(images, affine_grid(theta, size), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, [B, C, S, S], align_corners=False)`` built from its two separable parts: the sampling
    position of output pixel ``(i, j)`` is ``theta @ (u_j, u_i, 1)`` with ``u_k = (2 k + 1) / S - 1``, so each
    coordinate is an outer sum of a row term and a column term (one broadcast add into planar ``[B, 2, S, S]``
    storage instead of a batched matmul against a materialised base grid; equal to ``F.affine_grid`` up to float
    rounding).

    Args:
        theta: ``[B, 2, 3]`` normalised output -> input maps. size: output side ``S``.
    Returns:
        ``[B, S, S, 2]`` (x, y) normalised input coordinates, dtype and device of ``theta``: a permuted view of planar
        storage (``grid_sample`` reads any strides).
    """
    u = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    row = theta[:, :, 1, None] * u + theta[:, :, 2, None]  # [B, 2, S]: the part that varies with output row i
    col = theta[:, :, 0, None] * u  # [B, 2, S]: the part that varies with output column j
    return (row[:, :, :, None] + col[:, :, None, :]).permute(0, 2, 3, 1)


def affine_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverses of ``[B, 3, 3]`` affine maps (last row ``0 0 1``) in closed form: ``A^-1 = adj(A) / det(A)``,
    ``t' = -A^-1 t`` (a handful of elementwise ops instead of a batched LU solve, in numpy, where these ``[B]``-sized
    ops cost a fraction of torch's per-op dispatch). Singular maps give inf/nan.

    Returns:
        ``[B, 3, 3]``, dtype and device of ``m``.
    """
    a = m.detach().cpu().numpy()
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    inv = np.zeros_like(a)
    inv[:, 0, 0], inv[:, 0, 1] = a[:, 1, 1] / det, -a[:, 0, 1] / det
    inv[:, 1, 0], inv[:, 1, 1] = -a[:, 1, 0] / det, a[:, 0, 0] / det
    inv[:, :2, 2] = -np.einsum("bij,bj->bi", inv[:, :2, :2], a[:, :2, 2])
    inv[:, 2, 2] = 1
    return torch.from_numpy(inv).to(m.device)


def warp_points(points: torch.Tensor, m: torch.Tensor, flipped: torch.Tensor | None = None,
                perm: torch.Tensor | None = None) -> torch.Tensor:
    """Map landmarks from cache pixels to output crop pixels (``M^-1``) and re-index flipped samples.

    Args:
        points: ``[B, K, 2]`` cache pixels. m: ``[B, 3, 3]``. flipped: ``bool [B]``. perm: ``int64 [K]``.
    Returns:
        ``[B, K, 2]`` output crop pixels, dtype of ``points`` (computed in it; the inverse in float64).
    """
    inv = affine_inverse(m.to(torch.float64)).to(points.device, points.dtype)
    p = torch.einsum("bkj,bij->bki", points, inv[:, :2, :2]) + inv[:, None, :2, 2]
    if flipped is not None and perm is not None and bool(flipped.any()):
        k = points.shape[1]
        order = torch.where(flipped.to(points.device)[:, None], perm.to(points.device)[None, :],
                            torch.arange(k, device=points.device)[None, :])  # [B, K]: new point i <- old order[i]
        p = torch.gather(p, 1, order[..., None].expand(-1, -1, 2))
    return p


def color_normalize(images: torch.Tensor, mean, std, strength: float = 0.0, generator: torch.Generator | None = None,
                    value_scale: float = 1.0) -> torch.Tensor:
    """Photometric jitter and input normalisation of ``[B, 3, H, W]`` images in one pass.

    Computes ``normalize(jitter(images * value_scale, strength), mean, std)``, where the jitter draws per sample a
    brightness, contrast and saturation factor uniform in ``[1 - strength, 1 + strength]`` (definitions as
    torchvision's ``adjust_brightness`` (scale), ``adjust_contrast`` (blend with the mean grey level) and
    ``adjust_saturation`` (blend with greyscale)) and clamps to ``[0, 1]``. With ``value_scale=1/255`` the input may
    be raw ``0..255`` values (a float view of the uint8 cache), so the conversion to ``[0, 1]``, the jitter, its
    clamp and the ``(x - mean) / std`` of ``loading.network_input`` become one batched matmul and one clamp instead of
    five
    full-size passes. ``strength=0`` (or no ``generator``) only scales and normalises (no clamp, as
    ``loading.network_input``).

    Returns:
        ``float [B, 3, H, W]`` contiguous, normalised.
    """
    b, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    std_t = torch.as_tensor(std, dtype=dt, device=dev)
    mean_t = torch.as_tensor(mean, dtype=dt, device=dev)
    if strength <= 0 or generator is None:
        a = (value_scale / std_t).view(1, 3, 1, 1)
        return torch.addcmul((-mean_t / std_t).view(1, 3, 1, 1), images, a)
    f = (1 + (torch.rand((b, 3), generator=generator) * 2 - 1) * strength).to(dev, dt)
    br, co, sa = f[:, 0], f[:, 1], f[:, 2]
    # The three steps, x1 = br x, x2 = co x1 + (1 - co) mean(grey(x1)), x3 = sa x2 + (1 - sa) grey(x2), make one
    # affine colour map per sample (grey weights sum to 1): x3 = co br S x + (1 - co) br mean(grey(x)), with
    # S = sa I + (1 - sa) 1 g^T. Then clamp to [0, 1] and normalise: both folded into the map and the clamp bounds.
    g = torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt)
    s = sa[:, None, None] * torch.eye(3, device=dev, dtype=dt) + (1 - sa)[:, None, None] * g
    grey_mean = images.mean(dim=(2, 3)) @ g * value_scale
    mat = ((co * br * value_scale)[:, None, None] * s) / std_t[None, :, None]
    offset = (((1 - co) * br * grey_mean)[:, None] - mean_t[None, :]) / std_t[None, :]
    x = torch.baddbmm(offset[:, :, None], mat, images.reshape(b, 3, h * w)).view(b, 3, h, w)
    lo, hi = (-mean_t / std_t).tolist(), ((1 - mean_t) / std_t).tolist()
    for c in range(3):  # scalar bounds per channel: several times faster than tensor bounds
        x[:, c].clamp_(lo[c], hi[c])
    return x
