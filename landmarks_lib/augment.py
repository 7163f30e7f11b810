"""Per-batch augmentation on tensors (on the GPU when there is one), images and landmarks by the same matrices.

Each sample gets one affine map ``M`` (``[3, 3]``, pixels, package convention) from *output crop* pixels to *cache*
pixels: an optional horizontal flip (``x -> S - x``), rotation and scale about the crop centre, a translation, and
the cache's border offset ``pad``. Images are resampled with ``torch.nn.functional.grid_sample`` (bilinear,
``align_corners=False``, whose normalised coordinates ``u = 2 x / W - 1`` match continuous pixels exactly), and
landmarks are mapped by ``M^-1``; a flipped sample's landmarks are then re-indexed by the mirror permutation
(``geometry.estimate_mirror_permutation``). Without augmentation ``M`` is the integer shift by ``pad`` and the crop
is sliced out exactly.

Photometric jitter (brightness, contrast, saturation; one factor each per sample) follows torchvision's
``ColorJitter`` definitions (``torchvision.transforms.v2.functional.adjust_*``), drawn per sample.
"""

from __future__ import annotations

import math

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
    u = torch.rand((n, 5), generator=generator, dtype=torch.float64)
    ang = (u[:, 0] * 2 - 1) * math.radians(rotate_deg)
    zoom = 1 + (u[:, 1] * 2 - 1) * scale_jitter
    tx = (u[:, 2] * 2 - 1) * translate_frac * size
    ty = (u[:, 3] * 2 - 1) * translate_frac * size
    flipped = (u[:, 4] < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    c = size / 2.0
    # output -> cache: p_cache = A (D p_out + o) + t, with the flip D = diag(+-1, 1), o = (S or 0, 0) - c,
    # A = R(ang) / zoom and t = c + (tx, ty) + pad.
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    a = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    d = torch.ones((n, 2), dtype=torch.float64)
    d[:, 0] = torch.where(flipped, -1.0, 1.0)
    o = torch.stack([torch.where(flipped, float(size), 0.0).to(torch.float64) - c,
                     torch.full((n,), -c, dtype=torch.float64)], 1)
    t = torch.stack([tx + c + pad, ty + c + pad], 1)
    m = torch.zeros((n, 3, 3), dtype=torch.float64)
    m[:, :2, :2] = a * d[:, None, :]
    m[:, :2, 2] = torch.einsum("nij,nj->ni", a, o) + t
    m[:, 2, 2] = 1
    return m, flipped


def identity_matrices(n: int, pad: int) -> torch.Tensor:
    """``float64 [n, 3, 3]``: the exact shift from output crop pixels to cache pixels."""
    m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    m[:, 0, 2] = pad
    m[:, 1, 2] = pad
    return m


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
    n_out = torch.tensor([[2.0 / size, 0, -1], [0, 2.0 / size, -1], [0, 0, 1]], dtype=torch.float64)
    n_in = torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1], [0, 0, 1]], dtype=torch.float64)
    theta = (n_in @ m.cpu() @ torch.linalg.inv(n_out))[:, :2, :].to(images.device, images.dtype)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_points(points: torch.Tensor, m: torch.Tensor, flipped: torch.Tensor | None = None,
                perm: torch.Tensor | None = None) -> torch.Tensor:
    """Map landmarks from cache pixels to output crop pixels (``M^-1``) and re-index flipped samples.

    Args:
        points: ``[B, K, 2]`` cache pixels. m: ``[B, 3, 3]``. flipped: ``bool [B]``. perm: ``int64 [K]``.
    Returns:
        ``[B, K, 2]`` output crop pixels, dtype of ``points``.
    """
    inv = torch.linalg.inv(m.to(torch.float64)).to(points.device)
    p = points.to(torch.float64) @ inv[:, :2, :2].transpose(1, 2) + inv[:, None, :2, 2]
    if flipped is not None and perm is not None and bool(flipped.any()):
        fl = flipped.to(points.device)
        p[fl] = p[fl][:, perm.to(points.device)]
    return p.to(points.dtype)


def photometric(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation jitter of ``[B, 3, H, W]`` images in ``[0, 1]``.

    Each factor is uniform in ``[1 - strength, 1 + strength]``; definitions as torchvision's ``adjust_brightness``
    (scale), ``adjust_contrast`` (blend with the mean grey level) and ``adjust_saturation`` (blend with greyscale).
    Returns images clamped to ``[0, 1]``.
    """
    if strength <= 0:
        return images
    b, _, h, w = images.shape
    f = (1 + (torch.rand((b, 3), generator=generator) * 2 - 1) * strength).to(images.device, images.dtype)
    br, co, sa = f[:, 0], f[:, 1], f[:, 2]
    # The three steps, x1 = br x, x2 = co x1 + (1 - co) mean(grey(x1)), x3 = sa x2 + (1 - sa) grey(x2), make one
    # affine colour map per sample (grey weights sum to 1): x3 = co br S x + (1 - co) br mean(grey(x)), with
    # S = sa I + (1 - sa) 1 g^T; applied in one pass (one batched matmul) instead of a dozen full-size passes.
    g = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    s = sa[:, None, None] * torch.eye(3, device=images.device, dtype=images.dtype) + (1 - sa)[:, None, None] * g
    offset = ((1 - co) * br * (images.mean(dim=(2, 3)) @ g))[:, None, None].expand(b, 3, 1)
    x = torch.baddbmm(offset, (co * br)[:, None, None] * s, images.reshape(b, 3, h * w))
    return x.view(b, 3, h, w).clamp_(0, 1)
