"""Files written safely and identified cheaply: the one atomic-write helper and the one fingerprint helper.

- ``atomic_open(path, mode)``: a temporary file beside ``path`` renamed over it only when the block ends without
  error, so a reader sees the old file or the complete new one, never a partial one. ``atomic_save_npy``,
  ``atomic_write_json`` and ``viz.save_figure`` write through it. Temporary files are named
  ``.<name>.<pid>.<random>.tmp`` (``TMP_SUFFIX``): they belong to their writer, and ``tmp_writer`` reads the pid
  back, so a run folder's stale ones (their writer killed) are told from those of a live writer.
- ``outside_link(path, roots)``: the target of a symbolic link that resolves outside every one of ``roots``.
- ``derived_seed(*parts)``: the seeds of training's random draws.
- ``fingerprint(*parts)``: a short SHA-1 of strings, bytes, numbers, ``None``, numpy arrays (dtype, shape and
  bytes) and nested lists/tuples/dicts of them (dicts by sorted key). Every key of this package (cache keys, stage
  keys, data keys, data fingerprints) is made with it; ``file_identity`` gives the ``path|size|mtime`` text a file
  contributes without reading its content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile

import numpy as np

TMP_SUFFIX = ".tmp"

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """Open a temporary file beside ``path`` and rename it over ``path`` only when the block finishes without error.

    The temporary file is ``.<name>.<pid>.<random>.tmp`` (``tmp_writer``). The folder is created. The file gets the
    usual permissions (``0666 & ~umask``), is flushed and fsync'ed before the rename, and is removed on any error (the
    previous file at ``path``, if any, is left untouched).

    Raises:
        OSError: the folder cannot be created or written (e.g. ``ENOSPC``, a full disk).
    """
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=d)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise no_space(d) from e
        raise


_TMP_NEW = re.compile(r"^\..+\.([0-9]+)\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")
_TMP_OLD = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")


def tmp_writer(name: str) -> int | None:
    """The pid of the process writing ``atomic_open``'s temporary file ``name`` (a base name,
    ``.<name>.<pid>.<random>.tmp``); ``0`` for the format of earlier versions (``.<name>.<random>.tmp``, no pid);
    ``None`` for a name that is not such a temporary file."""
    m = _TMP_NEW.match(name)
    if m:
        return int(m.group(1))
    return 0 if _TMP_OLD.match(name) else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's live process counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def outside_link(path, roots) -> str | None:
    """The real path of ``path`` when it is a symbolic link (followed to the end) that resolves outside every folder
    of ``roots`` (real paths, ``os.path.realpath``); ``None`` for a file that is not a link or a link that stays
    inside one of them. One ``lstat`` for a file that is not a link."""
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    real = os.path.realpath(path)
    return None if any(inside(real, r) for r in roots) else real


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both absolute and normalised, as ``realpath`` gives them)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def no_space(path) -> OSError:
    """The error for a full disk: ``OSError(ENOSPC, "no space left on <path>")``."""
    return OSError(errno.ENOSPC, f"no space left on {path}")


def atomic_save_npy(path, array) -> None:
    """``np.save`` through ``atomic_open``."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(array))


def atomic_write_json(path, obj) -> None:
    """Write JSON (indented, keys sorted; numpy scalars and arrays as plain values) through ``atomic_open``."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")


def read_json(path, default=None):
    """``json.load`` of ``path``, or ``default`` when the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _feed(h, part) -> None:
    if part is None:
        h.update(b"\x00none")
    elif isinstance(part, np.ndarray):
        a = np.ascontiguousarray(part)
        h.update(f"\x00array|{a.dtype}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    elif hasattr(part, "chunks") and hasattr(part, "dtype") and hasattr(part, "shape"):
        # A lazy array (io.PointsView): the same bytes as the array it converts to, hashed block by block.
        h.update(f"\x00array|{np.dtype(part.dtype)}|{tuple(part.shape)}|".encode())
        for _, block in part.chunks():
            h.update(memoryview(np.ascontiguousarray(block)).cast("B"))
    elif isinstance(part, (bytes, bytearray, memoryview)):
        h.update(b"\x00bytes|" + bytes(part))
    elif isinstance(part, dict):
        h.update(b"\x00dict")
        for k in sorted(part, key=str):
            _feed(h, str(k))
            _feed(h, part[k])
    elif isinstance(part, (list, tuple)):
        h.update(f"\x00seq{len(part)}".encode())
        for p in part:
            _feed(h, p)
    else:
        h.update(("\x00" + type(part).__name__ + "|" + repr(part)).encode())


def fingerprint(*parts, digits: int = 16) -> str:
    """SHA-1 (first ``digits`` hex digits) of ``parts``: text, bytes, numbers, bools, ``None``, numpy arrays (dtype,
    shape and bytes) and lists/tuples/dicts of them. Equal inputs give equal keys in every process and Python
    version (no ``hash()``); ``1`` and ``1.0`` and ``"1"`` differ."""
    h = hashlib.sha1()
    for p in parts:
        _feed(h, p)
    return h.hexdigest()[:digits]


def derived_seed(*parts) -> int:
    """A 56-bit random seed derived from ``parts`` (``repr`` of the tuple, SHA-1, first 7 bytes little-endian): the
    seed of every random draw of training, from ``(seed, stage, epoch, ...)``. Its definition is fixed, so runs
    reproduce across versions."""
    return int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:7], "little")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, hex (read in ``chunk``-byte blocks: bounded memory).

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(path) -> str:
    """``"<real path>|<size>|<mtime ns>"`` of a file (links followed), or ``"<path>|missing"``: what a file
    contributes to a fingerprint without reading its content."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"

MARKER = ".thousand-landmarks-run.json"
