"""Preprocessed crop cache: each image decoded and resampled once, stored as a memory-mapped ``uint8`` array.

A cache folder ``<cache_dir>/crops-<key>/`` holds

- ``images.npy``: ``uint8 [N, Sc, Sc, 3]`` crops of each image's box *expanded* by ``margin`` on every side
  (``Sc = size + 2 * round(margin * size)``), so augmentation can rotate and shift without black borders;
- ``frames.npy``: ``float64 [N, 4]``, each image's (unexpanded) crop frame ``(x0, y0, side, size)``
  (``geometry.CropFrame``), the exact map back to original pixels;
- no landmarks: ``CropCache.points`` (when labels were given) computes them in crop pixels of each frame where
  indexed (``CropPoints``), from the labels the caller holds (memory-mapped ``int16``), so a cache costs its crops
  alone (3 GB less per cache at contest size than storing ``float32`` points);
- ``meta.json``: names, key inputs, shapes; written last, so a folder without it is incomplete and rebuilt.

The key is a SHA-1 of the cache format, the image folder resolved (``realpath``: the data folder a path points to,
not the path typed), each image's name, real path (for a link), size, modification time, inode and change time (one
``lstat`` per image, no reads), the geometry parameters and, when given, the label and frame arrays; anything that
changes rebuilds the cache (a re-pointed data folder, a file replaced with the same name, size and time), and the
same inputs reuse it across epochs, notebooks and runs. An image that is a symbolic link resolving outside its data
folder is refused (``tables.link_outside``) unless ``allow_links_outside``. ``clean_cache`` removes caches;
``cache_size`` reports sizes.
``python -m landmarks_lib.cache --info|--clean [DIR]`` does both from the shell.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import stat
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..core import geometry
from ..core.files import fingerprint, pid_alive
from ..core.images import ImageError, load_image
from ..core.params import default_cache_dir
from .tables import link_outside

FORMAT = "crops-v4"


@dataclass
class CropCache:
    """An opened cache (arrays memory-mapped read-only). ``pad`` = ``(Sc - size) // 2``: the crop frame's origin in
    cache pixels."""

    path: str
    names: list
    images: np.ndarray
    frames: np.ndarray
    points: CropPoints | None
    size: int
    pad: int

    def __len__(self):
        return len(self.names)


class CropPoints:
    """``float32 [N, K, 2]`` landmarks in crop pixels of each cached frame (``geometry.frames_to_crop`` in float64,
    then float32), computed where indexed from the original-pixel ``points`` (an array or an ``coords.PointsView``) and
    the cache's ``frames``: ``view[i]``, ``view[a:b]``, ``view[index_array]``; ``np.asarray(view)`` converts all."""

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(self, points, frames: np.ndarray):
        if len(points) != len(frames):
            raise ValueError(f"{len(points)} faces of points for {len(frames)} cached frames")
        self.points, self.frames = points, frames

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple:
        return (len(self),) + tuple(self.points.shape[1:])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if not isinstance(key, slice):
            key = np.asarray(key)
        p = np.asarray(self.points[key], dtype=np.float64)
        return geometry.frames_to_crop(p, self.frames[key]).astype(np.float32)

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)


def cache_key(image_dir, names, crop_mode, size, margin, face_scale, points=None, frames=None) -> str:
    """``files.fingerprint`` (20 hex digits) of everything the cached crops depend on (see the module docstring):
    the format, the image folder resolved (``realpath``), the crop geometry, each image's identity
    (``image_identities``), and the points and frames that place the crops."""
    return _key(image_dir, image_identities(image_dir, names), crop_mode, size, margin, face_scale, points, frames)


def image_identities(image_dir, names) -> list:
    """``"<name>|<real path of a link, else empty>|<size>|<mtime ns>|<inode>|<ctime ns>"`` (or ``"<name>|missing"``)
    of each image: what it contributes to the cache key without being read. One ``lstat`` per image, in the image
    folder resolved once (a link is followed: a ``realpath`` and a ``stat`` more)."""
    real_dir = os.path.realpath(os.fspath(image_dir))
    ids = []
    for n in names:
        p = os.path.join(real_dir, n)
        try:
            st, real = os.lstat(p), ""
            if stat.S_ISLNK(st.st_mode) or os.sep in n or (os.altsep and os.altsep in n) or n in (".", ".."):
                real = os.path.realpath(p)
                st = os.stat(real)
            ids.append(f"{n}|{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}")
        except OSError:
            ids.append(f"{n}|missing")
    return ids


def _key(image_dir, ids, crop_mode, size, margin, face_scale, points, frames) -> str:
    geometry_ = [FORMAT, os.path.realpath(os.fspath(image_dir)), crop_mode, int(size), float(margin),
                 float(face_scale)]
    # A lazy io.PointsView is hashed block by block (the same key as the array it converts to).
    arrays = [a if a is None or hasattr(a, "chunks") else np.asarray(a) for a in (points, frames)]
    return fingerprint(geometry_, "\n".join(ids), *arrays, digits=20)


def check_links(image_dir, names, ids, data_dir=None) -> None:
    """Refuse images that are symbolic links resolving outside the data folder (``tables.link_outside``); ``ids``
    (``image_identities``) tell which images are links, so only those are looked at.

    Args:
        data_dir: the data folder; default the folder two levels above ``image_dir`` (``<data>/train/images``).
    Raises:
        images.ImageError: one line naming the first such image, its target, how many there are, what to do.
    """
    image_dir = os.path.abspath(os.fspath(image_dir))
    data_dir = data_dir if data_dir is not None else os.path.dirname(os.path.dirname(image_dir))
    bad = []
    for n, i in zip(names, ids):
        why = link_outside(os.path.join(image_dir, n), data_dir) if i.split("|", 2)[1] else None
        if why:
            bad.append((n, why))
    if bad:
        more = f" ({len(bad) - 1} more image(s) like it)" if len(bad) > 1 else ""
        raise ImageError(f"{os.path.join(image_dir, bad[0][0])}: {bad[0][1]}{more}")


def _crop_one(args):
    path, mode, size, margin, face_scale, pts, frame_row = args
    image = load_image(path)
    h, w = image.shape[:2]
    if frame_row is not None:
        frame = geometry.CropFrame.from_array(frame_row)
    else:
        frame = geometry.make_frame(mode, w, h, size, points=pts, face_scale=face_scale)
    big = frame.expand(margin)
    return geometry.crop_image(image, big), frame.as_array()


def _windowed_map(pool, jobs, window: int = 4096, chunksize: int = 32):
    """``pool.map(_crop_one, jobs)`` in order, a window of jobs at a time: ``Executor.map`` submits its whole input
    at once, which at contest size would hold every image's job (its points) in memory."""
    it = iter(jobs)
    while True:
        part = list(itertools.islice(it, window))
        if not part:
            return
        yield from pool.map(_crop_one, part, chunksize=chunksize)


def _open(path, points=None) -> CropCache:
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    images = np.load(os.path.join(path, "images.npy"), mmap_mode="r")
    frames = np.load(os.path.join(path, "frames.npy"))
    size = int(meta["size"])
    crop_points = None if points is None else CropPoints(points, frames)
    return CropCache(path, meta["names"], images, frames, crop_points, size, (images.shape[1] - size) // 2)


def get_cache(image_dir, names, crop_mode: str, size: int, cache_dir, margin: float = 0.0,
              face_scale: float = 1.25, points=None, frames=None, num_workers: int = 0,
              progress: bool = True, desc: str = "caching crops", allow_links_outside: bool = False,
              data_dir=None) -> CropCache:
    """Open the cache for these inputs, building it first if needed.

    Args:
        image_dir: folder of the images.
        names: ``N`` file names in ``image_dir``.
        crop_mode: ``center``, ``letterbox`` or ``face`` (``geometry.make_frame``); ignored where ``frames`` is given.
        size: crop side in pixels.
        cache_dir: parent folder of caches (created).
        margin: extra border kept around each crop, as a share of the crop.
        points: optional ``[N, K, 2]`` landmarks in original pixels (an array or an ``coords.PointsView``): they place
            ``face`` crops, and ``CropCache.points`` gives them in crop pixels (``CropPoints``, not stored).
        frames: optional ``float64 [N, 4]`` frames to use instead of ``crop_mode`` (e.g. face boxes placed by a
            localizer's predictions).
        num_workers: processes decoding images (0 = ``min(4, cores)``; 1 = in this process).
        allow_links_outside: read images that are symbolic links resolving outside the data folder (refused
            otherwise: ``check_links``).
        data_dir: the data folder those links are checked against (default: two levels above ``image_dir``).
    Returns:
        ``CropCache``.
    Raises:
        images.ImageError: an image cannot be read, or is a link out of the data folder (the message names it).
        ValueError: ``face`` mode without points or frames.
    """
    if crop_mode == "face" and points is None and frames is None:
        raise ValueError("crop_mode 'face' needs landmarks or frames to place the crops")
    names = list(names)
    ids = image_identities(image_dir, names)
    if not allow_links_outside:
        check_links(image_dir, names, ids, data_dir)
    key = _key(image_dir, ids, crop_mode, size, margin, face_scale, points, frames)
    path = os.path.join(cache_dir, f"crops-{key}")
    if points is not None and not hasattr(points, "shape"):
        points = np.asarray(points, dtype=np.float64)
    if os.path.exists(os.path.join(path, "meta.json")):
        return _open(path, points)
    os.makedirs(cache_dir, exist_ok=True)
    remove_orphans(cache_dir)
    tmp = tempfile.mkdtemp(prefix=f".crops-{key}.{os.getpid()}.", dir=cache_dir)
    try:
        _build(tmp, key, image_dir, names, crop_mode, size, margin, face_scale, points, frames,
               workers=num_workers if num_workers > 0 else min(4, os.cpu_count() or 1), desc=desc,
               progress=progress)
        try:
            os.replace(tmp, path)
        except OSError:
            # Another process finished the same cache first: use theirs.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _open(path, points)


def _build(tmp, key, image_dir, names, crop_mode, size, margin, face_scale, points, frames, workers, desc,
           progress) -> None:
    """Write a complete cache into the folder ``tmp``: ``images.npy`` (``uint8 [N, Sc, Sc, 3]``, written through a
    memory map), ``frames.npy`` (``float64 [N, 4]``), then ``meta.json``. Arguments as ``get_cache``'s (``points``
    an array or an ``coords.PointsView``, ``key`` its ``cache_key``); ``workers`` processes decode the images (1, or
    under 64 images: in this process)."""
    n = len(names)
    sc = int(size) + 2 * int(round(margin * size))
    images = np.lib.format.open_memmap(os.path.join(tmp, "images.npy"), mode="w+", dtype=np.uint8,
                                       shape=(n, sc, sc, 3))
    out_frames = np.zeros((n, 4), np.float64)
    jobs = _crop_jobs(image_dir, names, crop_mode, size, margin, face_scale, points, frames)
    nbytes = n * sc * sc * 3
    bar = _progress(n, f"{desc} ({nbytes / 1e9:.2f} GB on disk)", progress)
    _crop_all(jobs, n, workers, images, out_frames, bar)
    images.flush()
    del images
    np.save(os.path.join(tmp, "frames.npy"), out_frames)
    meta = {"format": FORMAT, "key": key, "image_dir": os.path.realpath(image_dir), "names": names,
            "crop_mode": crop_mode if frames is None else "frames", "size": int(size), "margin": float(margin),
            "face_scale": float(face_scale), "shape": [n, sc, sc, 3]}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)


def _crop_jobs(image_dir, names, crop_mode, size, margin, face_scale, points, frames):
    """``_crop_one``'s argument tuples, one per image, made as they are consumed: points (``float64 [K, 2]``,
    original pixels) and frame rows (``[4]``) are read per image (an ``coords.PointsView`` converts only the rows it is
    asked for), so memory stays at one image's points plus the crops' memory map, at any dataset size."""
    return ((os.path.join(image_dir, names[i]), crop_mode, int(size), float(margin), float(face_scale),
             None if points is None else np.asarray(points[i], dtype=np.float64),
             None if frames is None else np.asarray(frames[i])) for i in range(len(names)))


def _crop_all(jobs, n: int, workers: int, images: np.ndarray, out_frames: np.ndarray, bar) -> None:
    """Run the ``n`` crop ``jobs`` in order, in this process (``workers == 1`` or ``n < 64``) or in a pool of
    ``workers`` processes, writing crop ``i`` to ``images[i]`` (``uint8 [Sc, Sc, 3]``) and its frame to
    ``out_frames[i]`` (``float64 [4]``), advancing the progress ``bar``; the bar is closed and the pool shut down
    (pending jobs cancelled) whatever happens."""
    if workers == 1 or n < 64:
        results = map(_crop_one, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers)
        results = _windowed_map(pool, jobs)
    try:
        for i, (crop, frame) in enumerate(results):
            images[i] = crop
            out_frames[i] = frame
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def remove_orphans(cache_dir) -> list:
    """Remove the half-built cache folders (``.crops-<key>.<pid>.<random>``) whose building process is gone (a
    killed build); folders of live processes, and anything else, are left alone. Returns the removed paths."""
    out = []
    for name in os.listdir(cache_dir) if os.path.isdir(cache_dir) else ():
        parts = name.split(".")
        if name.startswith(".crops-") and len(parts) >= 4 and parts[2].isdigit() and not pid_alive(int(parts[2])):
            shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)
            out.append(os.path.join(cache_dir, name))
    return out


def _progress(total, desc, enabled):
    """A tqdm bar of ``total`` steps (hidden unless ``enabled``), redrawn at most once a second."""
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=1.0)


def cache_size(cache_dir) -> dict:
    """``{folder name: bytes}`` of every cache under ``cache_dir`` (empty if it does not exist)."""
    out = {}
    if not os.path.isdir(cache_dir):
        return out
    for name in sorted(os.listdir(cache_dir)):
        p = os.path.join(cache_dir, name)
        if os.path.isdir(p):
            out[name] = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)
        else:
            out[name] = os.path.getsize(p)
    return out


def clean_cache(cache_dir) -> int:
    """Remove every cache (crop caches, parsed landmark tables, temporary folders) under ``cache_dir``; returns the
    bytes freed. Only entries this package writes (``crops-*``, ``.crops-*``, ``landmarks-*``) are touched."""
    freed = 0
    for name, size in cache_size(cache_dir).items():
        if name.startswith(("crops-", ".crops-", "landmarks-")):
            p = os.path.join(cache_dir, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
            freed += size
    return freed


def main(argv=None) -> int:
    """``python -m landmarks_lib.cache [--info|--clean] [DIR]``: list the caches and their sizes, or remove them."""
    ap = argparse.ArgumentParser(prog="landmarks cache", description=__doc__.split("\n")[0])
    ap.add_argument("cache_dir", nargs="?", default=None,
                    help="default: $LANDMARKS_CACHE or ~/.cache/thousand-landmarks")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--info", action="store_true", help="list caches and their sizes (the default)")
    g.add_argument("--clean", action="store_true", help="remove all caches")
    a = ap.parse_args(argv)
    d = a.cache_dir or default_cache_dir()
    if a.clean:
        print(f"removed {clean_cache(d) / 2**20:.1f} MiB from {d}")
        return 0
    sizes = cache_size(d)
    for name, size in sizes.items():
        print(f"{size / 2**20:10.1f} MiB  {name}")
    print(f"{sum(sizes.values()) / 2**20:10.1f} MiB  total in {d}")
    return 0
