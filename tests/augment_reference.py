"""Reference pieces of augmentation that only the tests use: the exact crop shift, the photometric jitter alone, and
the unfused input conversion (``to_input`` then ``normalize``) that ``data.network_input`` and
``augment.color_normalize`` fuse."""

import torch

from landmarks_lib.data import augment


def identity_matrices(n: int, pad: int) -> torch.Tensor:
    """``float64 [n, 3, 3]``: the exact shift from output crop pixels to cache pixels."""
    m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    m[:, 0, 2] = pad
    m[:, 1, 2] = pad
    return m


def photometric(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """The photometric jitter alone on ``[B, 3, H, W]`` images in ``[0, 1]``: ``augment.color_normalize`` with mean 0
    and std 1 (images unchanged when ``strength`` is 0)."""
    if strength <= 0:
        return images
    return augment.color_normalize(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), strength, generator)


def to_input(images_u8: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` -> ``float32 [B, 3, H, W]`` in ``[0, 1]`` on ``device``."""
    x = images_u8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Channel-wise ``(x - mean) / std`` of ``[B, 3, H, W]``."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
