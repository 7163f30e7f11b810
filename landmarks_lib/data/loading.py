"""Batches from a ``cache.CropCache``: a map-style dataset whose items are whole batches, and its sampler.

Reading a batch is one fancy-index of the memory-mapped cache (no per-sample decode), so on a CPU the main process
does it (``num_workers=0``); on CUDA, workers, pinned memory and persistent workers overlap it with the GPU
(``loader_settings``). Batch order is a permutation drawn from ``(seed, epoch)`` alone, so a resumed run sees the same
batches as an
uninterrupted one; with ``world_size > 1`` each rank takes every ``world_size``-th sample of that permutation (as
``torch.utils.data.DistributedSampler`` does).
"""

from __future__ import annotations

import os

import numpy as np
import torch


class BatchSampler(torch.utils.data.Sampler):
    """Yields sorted ``int64`` index arrays (one per batch) over ``indices``, with
    ``torch.utils.data.DistributedSampler``'s
    contract (``set_epoch``; with ``world_size > 1`` each rank takes every ``world_size``-th sample of the epoch's
    permutation, padded by wrapping unless ``drop_last``). The permutation is numpy's, drawn from
    ``default_rng([seed, epoch])``, so every recorded run reproduces exactly.

    Args:
        indices: dataset positions to draw from.
        batch_size: per-rank batch size.
        shuffle: permute per epoch with ``numpy.random.default_rng([seed, epoch])``.
        drop_last: drop a final partial batch (training).
        rank, world_size: shard of the permutation this process takes.
    """

    def __init__(self, indices, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _shard(self):
        idx = self.indices
        if self.shuffle:
            idx = idx[np.random.default_rng([self.seed, self.epoch]).permutation(len(idx))]
        if self.world_size > 1:
            per = len(idx) // self.world_size if self.drop_last else -(-len(idx) // self.world_size)
            if not self.drop_last and per * self.world_size > len(idx):  # pad by wrapping, as DistributedSampler
                idx = np.concatenate([idx, idx[: per * self.world_size - len(idx)]])
            idx = idx[self.rank: per * self.world_size: self.world_size]
        return idx

    def __iter__(self):
        idx = self._shard()
        n = len(idx)
        stop = n - n % self.batch_size if self.drop_last else n
        for s in range(0, stop, self.batch_size):
            yield np.sort(idx[s: s + self.batch_size])

    def __len__(self):
        n = len(self._shard())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class CacheBatches(torch.utils.data.Dataset):
    """``dataset[index_array]`` -> ``{"images": uint8 [B, Sc, Sc, 3], "points": float32 [B, K, 2] cache pixels
    (absent without labels), "weights": float32 [B], "index": int64 [B]}``."""

    def __init__(self, cache, weights=None):
        self.cache = cache
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        out = {"images": torch.from_numpy(np.ascontiguousarray(self.cache.images[idx])),
               "index": torch.from_numpy(idx)}
        if self.cache.points is not None:
            pts = np.asarray(self.cache.points[idx], dtype=np.float32)  # fancy indexing: already a copy
            pts += np.float32(self.cache.pad)
            out["points"] = torch.from_numpy(pts)
        w = np.ones(len(idx), np.float32) if self.weights is None else self.weights[idx]
        out["weights"] = torch.from_numpy(w)
        return out


def loader_settings(device: torch.device, num_workers: int = -1) -> dict:
    """DataLoader keyword arguments for a device: CPU -> no workers (the main process slices the memmap faster
    than workers can ship batches); CUDA -> ``min(4, cores)`` persistent workers with pinned memory."""
    if num_workers < 0:
        num_workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    kw = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return kw


def make_loader(cache, sampler: BatchSampler, device: torch.device, num_workers: int = -1, weights=None):
    """A ``torch.utils.data.DataLoader`` over whole batches (``batch_size=None``)."""
    return torch.utils.data.DataLoader(CacheBatches(cache, weights), sampler=sampler, batch_size=None,
                                       **loader_settings(device, num_workers))


def network_input(crops_u8, mean, std, device) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` crops (array or tensor) -> the network's ``float32 [B, 3, H, W]`` input on ``device``,
    in channels-last memory (the pixels' own order, which torch's CPU convolutions run fastest on):
    ``(x / 255 - mean) / std`` per channel as one in-place multiply-add (``x * a + b``)."""
    u8 = torch.as_tensor(np.ascontiguousarray(crops_u8)).to(device, non_blocking=True)
    x = u8.permute(0, 3, 1, 2).float()
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64)
    a = (1.0 / (255.0 * s)).to(x.dtype).to(x.device).view(1, 3, 1, 1)
    b = (-m / s).to(x.dtype).to(x.device).view(1, 3, 1, 1)
    return x.mul_(a).add_(b)
