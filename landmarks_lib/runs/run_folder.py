"""The run folder: every path of a run in one object, its marker, its lock, and what the notebooks read back.

A run folder is any folder that holds the marker ``.thousand-landmarks-run.json`` (``MARKER``): ``{"format":
"thousand-landmarks-run/1", "created_by": ..., "created_at": ..., "manifest": [...]}``. Whatever entry point creates
a run folder (the runner, a notebook in Jupyter, ``landmarks_lib.train``) writes it; only folders with it count as
run folders, and ``--force`` removes nothing but the paths its manifest declares (``RunFolder.clear``).

The manifest, ``MANIFEST``, is the one place that names the files of a run (each declared once, as ploomber declares a
step's products):

=========================  ==========================================================================================
``params.yaml``            the resolved parameters (``params.dump``)
``run_info.json``          commit, package versions, CPU, data fingerprint, device, OpenMP wait policy
``pipeline_state.json``    the notebooks run, with the parameters each ran with
``checkpoints/``           ``<stage>_best.pt`` and, while a stage runs, ``<stage>_last.pt`` (``checkpoint`` module)
``model.pt``               the run's final model: localizer + face model + inference settings
``export/``                its ONNX export (``model.json``, ``face.onnx``, ``localizer.onnx``), made from ``model.pt``
``history.csv``            one row per epoch and stage
``noise.csv``              per-image error of the trained model on its own training labels, flags and weights
``metrics.json``           validation metrics and the test count
``val_predictions.npy``    ``float32 [n_val, K, 2]`` original pixels, validation order
``test_predictions.npy``   ``float32 [n_test, K, 2]`` original pixels, ``test_points.csv`` order
``test_faces.csv``         each test image's face crop, confidence and number of faces found
``submission.csv``         the contest submission (``submission_partial.csv`` for runs with ``max_test_images``)
``figures/``               PNG figures; ``notebooks/`` executed notebooks; ``reports/`` their HTML
``data/``                  the embedded synthetic dataset (runs without ``data_dir``)
``.lock``                  held (``flock``) by the process working on the run
=========================  ==========================================================================================

Nothing is written, read back or removed outside the run folder through a link: a path this project writes there
(the marker, a manifest entry, a file of ``OWN_FILES`` in its folder) that is a symbolic link is refused with one line
(``check_links``; a run folder received by tar or rsync may hold any), the lock is opened without following links,
and ``clear`` never follows one. Temporary files belong to their writer (``files.tmp_writer``): only those whose
writer is no longer running are removed.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import fnmatch
import json
import os
import re
import stat

import numpy as np
import pandas as pd

from ..core.files import MARKER, atomic_write_json, pid_alive, read_json, tmp_writer

FORMAT = "thousand-landmarks-run/1"
MANIFEST = ("params.yaml", "run_info.json", "pipeline_state.json", "checkpoints/", "model.pt", "history.csv",
            "noise.csv", "metrics.json", "val_predictions.npy", "test_predictions.npy", "test_faces.csv",
            "submission.csv",
            "submission_partial.csv", "export/", "figures/", "notebooks/", "reports/", "data/", ".lock")


LOCK_ENV = "LANDMARKS_RUN_LOCK"
SYNTHETIC_MARKER = "synthetic_dataset.json"  # synthetic.MARKER: the embedded dataset written into data/
# The files this project writes: top-level names, and patterns inside the manifest's folders.
OWN_FILES = {"": {e for e in MANIFEST if not e.endswith("/")},
             "checkpoints": ("*_best.pt", "*_last.pt"), "figures": ("[0-9][0-9]_*.png",),
             "export": ("model.json", "face.onnx", "localizer.onnx"),
             "notebooks": ("[0-9][0-9]_*.ipynb", ".[0-9][0-9]_*.running.ipynb"), "reports": ("[0-9][0-9]_*.html",)}
# The embedded synthetic dataset's files (synthetic.write_dataset), by folder: the project's own in data/ only when
# data/ holds the synthetic marker.
SYNTHETIC_FILES = {"data": (SYNTHETIC_MARKER, "test_truth.csv"), "data/train": ("landmarks.csv", "groups.csv"),
                   "data/test": ("test_points.csv",), "data/train/images": ("*.jpg",), "data/test/images": ("*.jpg",)}
FOLDERS = tuple(e.rstrip("/") for e in MANIFEST if e.endswith("/"))
# Where files.atomic_open writes temporary files in a run folder.
TMP_FOLDERS = ("", *FOLDERS, "data/train", "data/test")


class RunFolderError(RuntimeError):
    """A folder that is not a run folder where one is needed, or a run held by another process."""


def now() -> str:
    """The current UTC time, ISO 8601, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _refuse_link(path) -> None:
    """Raise ``RunFolderError`` when ``path`` is a symbolic link (one line: where it points, what to do)."""
    try:
        target = os.readlink(path)
    except OSError:  # not a link (or missing): nothing to refuse
        return
    what = "folder" if path.rstrip(os.sep).rsplit(os.sep, 1)[-1] in FOLDERS else "file"
    raise RunFolderError(f"{path}: a symbolic link (to {target}) where this project keeps its own {what}; nothing is "
                         f"written, read back or removed through links: replace the link with a real {what} (or "
                         f"remove it), or use another run folder")


def _malformed(marker, why: str) -> str:
    """The one-line message for a malformed run marker."""
    return (f"{marker}: malformed run marker ({why}); nothing was changed: restore it from where the run folder came "
            f"from (it holds {{\"format\": \"{FORMAT}\", \"manifest\": [...], ...}}), or use another run folder")


def _marker_problem(m) -> str | None:
    """What is wrong with a parsed marker, or ``None``."""
    if not isinstance(m, dict):
        return f"a JSON {type(m).__name__}, not an object"
    if m.get("format") != FORMAT:
        return f"format {m.get('format')!r}, expected {FORMAT!r}" if "format" in m else "no 'format' field"
    if not isinstance(m.get("manifest"), list) or not all(isinstance(e, str) for e in m["manifest"]):
        return "'manifest' is not a list of file names" if "manifest" in m else "no 'manifest' field"
    bad = [k for k in ("created_by", "created_at") if k in m and not isinstance(m[k], str)]
    return f"{bad[0]!r} is not text" if bad else None


def _busy(text: str) -> str:
    """The refusal for a held lock, from the text in ``.lock`` (``pid <n> <owner>`` of the last exclusive holder,
    or empty): a holder whose process no longer runs is named as such (a stale record), never as active."""
    m = re.match(r"pid (\d+)\b\s*(.*)", text)
    if not m:
        return "in use by another process (a notebook kernel open on it); wait for it or stop it"
    pid, owner = int(m.group(1)), m.group(2)
    if pid_alive(pid):
        return f"in use by another process ({text}, or a notebook kernel open on it); wait for it or stop it"
    return (f"in use by another process, not by pid {pid}{' ' + owner if owner else ''} named in its lock file: that "
            f"process is not running on this machine (a stale lock record); a notebook kernel open on the run, or a "
            f"process left behind by pid {pid}, holds the lock: close that kernel or stop that process")


class RunFolder:
    """Every path of one run (see the module docstring); nothing is created until ``create``.

    Args:
        path: the run folder (made absolute).
    """

    def __init__(self, path):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self._lock_fd = None

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def __fspath__(self) -> str:
        return self.path

    # ---------------------------------------------------------------------------------------------- paths
    def file(self, name: str) -> str:
        """The path of a manifest entry (``"metrics.json"``, ``"checkpoints/"``, ...).

        Raises:
            KeyError: a name the manifest does not declare.
            RunFolderError: a folder entry (``checkpoints/``, ``data/``, ...) that is a symbolic link.
        """
        for entry in MANIFEST:
            if entry.rstrip("/") == name.rstrip("/"):
                path = os.path.join(self.path, entry.rstrip("/"))
                if entry.endswith("/"):
                    _refuse_link(path)
                return path
        raise KeyError(f"{name!r} is not a run-folder file; declared: {', '.join(MANIFEST)}")

    def checkpoint(self, stage: str, kind: str = "best") -> str:
        """``checkpoints/<stage>_<kind>.pt`` (``kind`` ``best`` or ``last``)."""
        return os.path.join(self.file("checkpoints"), f"{stage}_{kind}.pt")

    def figure(self, name: str) -> str:
        """``figures/<name>`` (``.png`` added when missing)."""
        return os.path.join(self.file("figures"), name if name.endswith(".png") else name + ".png")

    @property
    def name(self) -> str:
        """The folder's own name (a label for figures and tables)."""
        return os.path.basename(self.path)

    @property
    def model(self) -> str:
        return self.file("model.pt")

    @property
    def marker(self) -> str:
        return os.path.join(self.path, MARKER)

    # ---------------------------------------------------------------------------------------------- marker
    def is_run(self) -> bool:
        """True when the folder holds the marker."""
        return os.path.isfile(self.marker)

    def create(self, created_by: str) -> RunFolder:
        """Create the folder (if needed) and write the marker once; an existing non-empty folder without it is
        refused, so nothing is ever written into (or later removed from) someone else's folder. An existing run
        folder's marker is checked (``manifest``), and so are its links (``check_links``).

        Raises:
            RunFolderError: the path is a file, or a non-empty folder that is not a run folder; a malformed marker;
                a symbolic link where the project writes.
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderError(f"{self.path}: exists and is not a folder")
        if self.is_run():
            self.check_links()
            self.manifest()
            return self
        if os.path.isdir(self.path) and os.listdir(self.path):
            raise RunFolderError(f"{self.path}: not empty and not a run folder (no {MARKER}); choose a new or "
                                 f"empty run folder")
        os.makedirs(self.path, exist_ok=True)
        atomic_write_json(self.marker, {"format": FORMAT, "created_by": created_by, "created_at": now(),
                                        "manifest": list(MANIFEST)})
        return self

    def manifest(self) -> list:
        """The manifest recorded in the marker.

        Raises:
            RunFolderError: no marker, or a malformed one (not JSON, another format, fields of the wrong type): one
                line naming the marker and what to do.
        """
        try:
            with open(self.marker, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise RunFolderError(f"{self.path}: not a run folder (no {MARKER} of format {FORMAT})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RunFolderError(_malformed(self.marker, f"cannot be read as text: {e}")) from None
        try:
            m = json.loads(text)
        except json.JSONDecodeError as e:
            raise RunFolderError(_malformed(self.marker, f"not JSON: {e.msg} at line {e.lineno}")) from None
        why = _marker_problem(m)
        if why:
            raise RunFolderError(_malformed(self.marker, why))
        return list(m["manifest"])

    def check_links(self) -> None:
        """Refuse symbolic links where this project writes: the marker, the manifest's entries (``.lock``, the
        files, the folders) and the files of ``OWN_FILES`` directly in its folders. Nothing is then written, read
        back or removed outside the run folder through them.

        Raises:
            RunFolderError: one line naming the first such link, where it points and what to do.
        """
        for name in (MARKER, *(e.rstrip("/") for e in MANIFEST)):
            _refuse_link(os.path.join(self.path, name))
        for folder, patterns in OWN_FILES.items():
            d = os.path.join(self.path, folder)
            if not folder or not os.path.isdir(d):
                continue
            with os.scandir(d) as it:
                for e in it:
                    if e.is_symlink() and any(fnmatch.fnmatch(e.name, p) for p in patterns):
                        _refuse_link(e.path)

    def _synthetic(self) -> bool:
        """Whether ``data/`` holds the embedded synthetic dataset (its marker, a plain file)."""
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self.path, "data", SYNTHETIC_MARKER)).st_mode)
        except OSError:
            return False

    def _entries(self):
        """``(folder relative to the run folder, "/"-separated, os.DirEntry)`` of everything below the run folder,
        sorted by name within a folder; a symbolic link is listed, never followed."""
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(os.path.join(self.path, rel)) as it:
                entries = sorted(it, key=lambda e: e.name)
            for e in entries:
                yield rel, e
            stack.extend(f"{rel}/{e.name}" if rel else e.name for e in reversed(entries)
                         if e.is_dir(follow_symlinks=False))

    def _own(self, folder: str, name: str, synthetic: bool) -> bool:
        """Whether ``folder/name`` is a file this project writes at that depth (``OWN_FILES``, and
        ``SYNTHETIC_FILES`` when ``synthetic``): ``checkpoints/train_best.pt``, never ``checkpoints/sub/x_best.pt``."""
        if folder == "":
            return name in OWN_FILES[""]
        patterns = OWN_FILES.get(folder, ())
        if synthetic:
            patterns = (*patterns, *SYNTHETIC_FILES.get(folder, ()))
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    def _why_kept(self, folder: str, e, synthetic: bool) -> str | None:
        """``None`` when ``clear`` removes the entry (a plain file this project wrote, or a temporary file whose
        writer has ended); else why it stays."""
        if e.is_symlink():
            return "a symbolic link, not followed; not written by this project"
        if not e.is_file(follow_symlinks=False):
            return "not a plain file; not written by this project"
        writer = tmp_writer(e.name) if folder in TMP_FOLDERS else None
        if writer:
            return None if not pid_alive(writer) else f"being written by process {writer}"
        if writer == 0 or self._own(folder, e.name, synthetic):
            return None
        return "not written by this project"

    def clear(self, log=print) -> list:
        """Remove what this project wrote in the run folder (``--force``): the manifest's files, and inside its
        folders only the files of the project's own patterns at the depth it writes them (``OWN_FILES``;
        ``SYNTHETIC_FILES`` in ``data/`` when it holds the synthetic dataset), plus temporary files whose writer
        has ended (``files.tmp_writer``). Links are never followed nor removed; anything else is kept and listed,
        one line per file. The marker and the lock stay, and so do folders that are not the project's own.

        Returns:
            the removed paths.
        Raises:
            RunFolderError: not a run folder, a malformed marker, or a symbolic link where the project writes
                (``check_links``; nothing is removed then).
        """
        self.manifest()
        self.check_links()
        synthetic = self._synthetic()
        removed, kept = [], []
        for folder, e in self._entries():
            if (folder == "" and e.name in (MARKER, ".lock")) or e.is_dir(follow_symlinks=False):
                continue
            why = self._why_kept(folder, e, synthetic)
            if why is None:
                removed.append(e.path)
            else:
                kept.append((e.path, why))
        for p in removed:
            os.remove(p)
        own_dirs = [*(d for d in SYNTHETIC_FILES if synthetic), *FOLDERS]
        for d in sorted(own_dirs, key=lambda d: -d.count("/")):  # our empty folders, deepest first
            path = os.path.join(self.path, d)
            if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
                os.rmdir(path)
        log(f"[run] removed {len(removed)} file(s) this project wrote in {self.path}")
        for p, why in kept:
            log(f"[run] kept {p} ({why})")
        return removed

    # ---------------------------------------------------------------------------------------------- lock
    def lock(self, owner: str = "", shared: bool = False) -> RunFolder:
        """Take the run's lock, an ``flock`` on ``.lock`` held until ``unlock`` or the process ends: exclusive for a
        runner or ``landmarks_lib.train`` (then stale temporary files are removed), shared for a notebook kernel in
        Jupyter (several notebooks may be open on one run, but no runner while any is). Kernels started by a runner
        skip it (``LANDMARKS_RUN_LOCK`` names the run folder their runner holds). ``.lock`` is opened without
        following links and must be a plain file of its own (one link), since the holder writes its pid into it.

        Raises:
            RunFolderError: another process holds the lock (the message names the last exclusive holder's pid, or
                says that process has ended: a stale record); ``.lock`` or another path the project writes is a
                symbolic link (``check_links``), or ``.lock`` is not a plain file of its own.
        """
        if self._lock_fd is not None or os.environ.get(LOCK_ENV) == self.path:
            return self
        self.check_links()
        fd = self._open_lock()
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            text = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"{self.path}: {_busy(text)}") from None
            raise
        self._lock_fd = fd
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} {owner}".strip().encode(), 0)
            self.remove_stale_tmp()
        return self

    def _open_lock(self) -> int:
        """``.lock`` opened for reading and writing (created when missing) without following a link.

        Raises:
            RunFolderError: ``.lock`` is a symbolic link, not a plain file, or a hard link shared with another name.
        """
        path = self.file(".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP or os.path.islink(path):
                _refuse_link(path)
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a plain file" if not stat.S_ISREG(st.st_mode) else f"a hard link ({st.st_nlink} names)"
            raise RunFolderError(f"{path}: the run's lock is {what}; the lock holder writes into it, so it must be "
                                 f"a file of its own: remove {path} (it is recreated) and retry")
        return fd

    def unlock(self) -> None:
        """Release the lock taken by ``lock``."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove_stale_tmp(self) -> list:
        """Remove ``files.atomic_open``'s temporary files whose writer has ended (``.<name>.<pid>.<random>.tmp``
        with no process ``pid`` running) where the project writes them (``TMP_FOLDERS``), and those of earlier
        versions (``.<name>.<random>.tmp``, no pid: no writer of this version makes them); links and anything
        else are left alone. Call only while holding the exclusive lock. Returns the removed paths."""
        out = []
        for folder in TMP_FOLDERS:
            d = os.path.join(self.path, folder)
            if os.path.islink(d) or not os.path.isdir(d):
                continue
            with os.scandir(d) as it:
                for e in it:
                    writer = tmp_writer(e.name)
                    if writer is not None and e.is_file(follow_symlinks=False) and not (writer and pid_alive(writer)):
                        os.remove(e.path)
                        out.append(e.path)
        return out

    # ---------------------------------------------------------------------------------------------- state
    def state(self) -> dict:
        """``pipeline_state.json``: ``{"notebooks": {name: {"params": {...}, "data_fingerprint": ..., "at": ...}}}``."""
        s = read_json(self.file("pipeline_state.json"), {}) or {}
        s.setdefault("notebooks", {})
        return s

    def record_notebook(self, name: str, params: dict, data_fingerprint: str | None = None) -> None:
        """Record that notebook ``name`` finished with ``params`` on data of ``data_fingerprint`` (atomically)."""
        s = self.state()
        s["notebooks"][name] = {"params": dict(params), "data_fingerprint": data_fingerprint, "at": now()}
        atomic_write_json(self.file("pipeline_state.json"), s)

    # ---------------------------------------------------------------------------------------------- reading
    def read_info(self) -> dict:
        """``run_info.json`` (what produced the run, as the last notebook's ``start`` wrote it) as a dict (empty when
        missing)."""
        return read_json(self.file("run_info.json"), {}) or {}

    def read_metrics(self) -> dict:
        """``metrics.json`` as a dict (empty when missing)."""
        return read_json(self.file("metrics.json"), {}) or {}

    def read_history(self) -> pd.DataFrame:
        """``history.csv`` (columns ``epoch, stage, train_loss, val_mse, lr, time_s``).

        Raises:
            FileNotFoundError: no training has run yet.
        """
        return pd.read_csv(self.file("history.csv"))

    def read_predictions(self, split: str) -> np.ndarray:
        """``float32 [N, K, 2]`` original-pixel predictions of ``split`` (``val`` or ``test``).

        Raises:
            FileNotFoundError: the finetune notebook has not written them yet.
        """
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return np.load(self.file(f"{split}_predictions.npy"))

    def read_test_faces(self) -> pd.DataFrame:
        """``test_faces.csv``: ``file_name, crop_x0, crop_y0, crop_x1, crop_y1, confidence, faces`` per test image,
        in ``test_points.csv`` order (original pixels).

        Raises:
            FileNotFoundError: the finetune notebook has not written it yet.
        """
        return pd.read_csv(self.file("test_faces.csv"), dtype={"file_name": str}, keep_default_na=False)

    def read_noise(self) -> pd.DataFrame:
        """``noise.csv``: ``file_name, split, nme, flagged, weight`` per training image."""
        return pd.read_csv(self.file("noise.csv"), dtype={"file_name": str}, keep_default_na=False)

    def submission(self) -> str | None:
        """``submission.csv``, else ``submission_partial.csv`` (a run with ``max_test_images``), else None."""
        for name in ("submission.csv", "submission_partial.csv"):
            if os.path.exists(self.file(name)):
                return self.file(name)
        return None
