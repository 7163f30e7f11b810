"""Reference pieces of augmentation that only the tests use: the exact crop shift and the photometric jitter alone."""

import torch

from landmarks_lib import augment


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
