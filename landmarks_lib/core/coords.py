"""The coordinate convention at the files' boundary: integer labels (pixel indices) <-> continuous points."""

from __future__ import annotations

import numpy as np

#: The contest's label convention: a label value ``v`` is a pixel *index* coordinate (``v = i`` is the centre of pixel
#: ``i``), i.e. the continuous coordinate of the package convention (``landmarks_lib``) is ``v + LABEL_OFFSET``, and a
#: horizontal mirror maps labels ``v -> W - 1 - v`` (why: docs/evidence.md). Files in label convention:
#: ``landmarks.csv``, submissions, the predict CLI's points file; everything else is continuous.
LABEL_OFFSET = 0.5


def labels_to_points(labels) -> np.ndarray:
    """Label-convention coordinates (``LABEL_OFFSET``; any numeric dtype, any shape ``[..., 2]``) -> continuous
    pixels, ``float32``: ``labels + 0.5``."""
    return np.asarray(labels, dtype=np.float32) + np.float32(LABEL_OFFSET)


#: Images per block wherever every training row is visited (statistics, caches, noise finding): 8,192 faces of 971
#: points are about 64 MB of float32 (128 MB of float64), whatever the dataset's size.
POINT_CHUNK = 8192


class PointsView:
    """Continuous-pixel landmarks ``float32 [n, K, 2]`` of a label table, converted (``labels_to_points``) only
    where indexed: memory stays at the labels (``int16``, often memory-mapped) at any dataset size.

    ``view[i]`` (``[K, 2]``), ``view[a:b]`` and ``view[index_array]`` (``[m, K, 2]``) return ``float32`` arrays;
    ``chunks(size)`` yields ``(start, block)`` in order; ``len``, ``shape``, ``dtype`` and ``ndim`` are those of the
    converted array. ``np.asarray(view)`` converts everything (correct, but the memory of the whole array: code
    that must scale goes by ``chunks``).

    Args:
        labels: ``[N, K, 2]`` label-convention coordinates (``LandmarksTable.points``).
        idx: optional ``int64 [n]`` rows of ``labels`` this view holds, in that order (default all).
    """

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(self, labels, idx=None):
        self.labels = labels
        self.idx = None if idx is None else np.asarray(idx, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.labels) if self.idx is None else len(self.idx)

    @property
    def shape(self) -> tuple:
        return (len(self),) + tuple(self.labels.shape[1:])

    def _rows(self, key):
        if self.idx is not None:
            return self.labels[self.idx[key]]
        if isinstance(key, (slice, int, np.integer)):
            return self.labels[key]
        return self.labels[np.asarray(key)]

    def __getitem__(self, key) -> np.ndarray:
        return labels_to_points(self._rows(key))

    def __array__(self, dtype=None, copy=None):
        a = self[:] if len(self) else np.zeros(self.shape, np.float32)
        return a if dtype is None else a.astype(dtype)

    def chunks(self, size: int = POINT_CHUNK):
        """Yield ``(start, float32 [m, K, 2])`` blocks of at most ``size`` faces, in order."""
        for s in range(0, len(self), max(1, int(size))):
            yield s, self[s:s + size]


def point_blocks(points, size: int = POINT_CHUNK):
    """Yield ``(start, float64 [m, K, 2])`` blocks of at most ``size`` faces of ``points`` (an array, a memmap or a
    ``PointsView``), in order: how chunked statistics visit every face with bounded memory."""
    for s in range(0, len(points), max(1, int(size))):
        yield s, np.asarray(points[s:s + size], dtype=np.float64)


def points_to_labels(points) -> np.ndarray:
    """Continuous pixels ``[..., 2]`` -> label-convention coordinates, ``float64`` (not rounded): ``points - 0.5``."""
    return np.asarray(points, dtype=np.float64) - LABEL_OFFSET


def round_half_up(values) -> np.ndarray:
    """Round to the nearest integer, halves up (``floor(v + 0.5)``); ``int64``."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)
