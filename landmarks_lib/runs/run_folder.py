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
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import fnmatch
import os
import re

import numpy as np
import pandas as pd

from ..core.files import MARKER, TMP_SUFFIX, atomic_write_json, read_json

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
_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")  # tempfile.mkstemp's names


class RunFolderError(RuntimeError):
    """A folder that is not a run folder where one is needed, or a run held by another process."""


def now() -> str:
    """The current UTC time, ISO 8601, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
        """
        for entry in MANIFEST:
            if entry.rstrip("/") == name.rstrip("/"):
                return os.path.join(self.path, entry.rstrip("/"))
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
        refused, so nothing is ever written into (or later removed from) someone else's folder.

        Raises:
            RunFolderError: the path is a file, or a non-empty folder that is not a run folder.
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderError(f"{self.path}: exists and is not a folder")
        if not self.is_run():
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
            RunFolderError: no marker, or a marker of another format.
        """
        m = read_json(self.marker)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise RunFolderError(f"{self.path}: not a run folder (no {MARKER} of format {FORMAT})")
        return list(m.get("manifest") or [])

    def _ours(self, rel: str) -> bool:
        """Whether ``rel`` (a path below the run folder) is a file this project writes there (``OWN_FILES``)."""
        top, _, rest = rel.partition(os.sep)
        if top == "data":  # the synthetic dataset: every file of it, when it is ours
            return os.path.isfile(os.path.join(self.path, "data", SYNTHETIC_MARKER))
        if not rest:
            return top in OWN_FILES[""] or bool(_TMP.match(top))
        return any(fnmatch.fnmatch(rest, pat) for pat in OWN_FILES.get(top, ())) or _TMP.match(os.path.basename(rest))

    def clear(self, log=print) -> list:
        """Remove what this project wrote in the run folder (``--force``): the manifest's files, and inside its
        folders only the files of the project's own patterns (``OWN_FILES``); anything else is kept and listed. The
        marker stays.

        Returns:
            the removed paths.
        Raises:
            RunFolderError: not a run folder.
        """
        self.manifest()
        removed, kept = [], []
        for root, _, files in os.walk(self.path):
            for n in files:
                full = os.path.join(root, n)
                rel = os.path.relpath(full, self.path)
                if rel in (MARKER, ".lock"):
                    continue
                (removed if self._ours(rel) else kept).append(full)
        for p in removed:
            os.remove(p)
        folders = {e.rstrip("/") for e in MANIFEST if e.endswith("/")}
        for root, _dirs, _ in sorted(os.walk(self.path), key=lambda w: -len(w[0])):  # our empty folders, deepest first
            rel = os.path.relpath(root, self.path)
            if rel.split(os.sep)[0] in folders and not os.listdir(root):
                os.rmdir(root)
        log(f"[run] removed {len(removed)} file(s) this project wrote in {self.path}")
        for p in kept:
            log(f"[run] kept {p} (not written by this project)")
        return removed

    # ---------------------------------------------------------------------------------------------- lock
    def lock(self, owner: str = "", shared: bool = False) -> RunFolder:
        """Take the run's lock, an ``flock`` on ``.lock`` held until ``unlock`` or the process ends: exclusive for a
        runner or ``landmarks_lib.train`` (then stale temporary files are removed), shared for a notebook kernel in
        Jupyter (several notebooks may be open on one run, but no runner while any is). Kernels started by a runner
        skip it (``LANDMARKS_RUN_LOCK`` names the run folder their runner holds).

        Raises:
            RunFolderError: another process holds the lock (the message names the last exclusive holder's pid).
        """
        if self._lock_fd is not None or os.environ.get(LOCK_ENV) == self.path:
            return self
        fd = os.open(self.file(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a notebook kernel"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"{self.path}: in use by another process ({holder}, or a notebook kernel "
                                     f"open on it); wait for it or stop it") from None
            raise
        self._lock_fd = fd
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} {owner}".strip().encode(), 0)
            self.remove_stale_tmp()
        return self

    def unlock(self) -> None:
        """Release the lock taken by ``lock``."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove_stale_tmp(self) -> list:
        """Remove ``files.atomic_open``'s temporary files (``.<name>.<8 random characters>.tmp``) below the run
        folder; call only while holding the exclusive lock. Returns the removed paths."""
        out = []
        for root, _dirs, files in os.walk(self.path):
            for n in files:
                if _TMP.match(n):
                    os.remove(os.path.join(root, n))
                    out.append(os.path.join(root, n))
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
        """``test_faces.csv``: ``file_name, x0, y0, x1, y1, confidence, faces`` per test image, in
        ``test_points.csv`` order (original pixels).

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
