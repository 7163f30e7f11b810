"""The run folder: every path of a run in one object, its marker, its lock, and what the notebooks read back.

A run folder is any folder that holds the marker ``.thousand-landmarks-run.json`` (``MARKER``): ``{"format":
"thousand-landmarks-run/1", "created_by": ..., "created_at": ..., "manifest": [...]}``. Whatever entry point creates
a run folder (the runner, a notebook in Jupyter, ``landmarks_lib.train``) writes it; only folders with it count as
run folders, and ``--force`` removes nothing but the paths its manifest declares (``RunFolder.clear``).

The manifest, ``MANIFEST``, is the one place that names the files of a run (each declared once, as ploomber declares a
step's products):

=========================  ==========================================================================================
``params.yaml``            the resolved parameters (``params.dump``)
``run_info.json``          commit, package versions, data fingerprint, device
``pipeline_state.json``    the notebooks run, with the parameters each ran with
``checkpoints/``           ``<stage>_best.pt`` and, while a stage runs, ``<stage>_last.pt`` (``checkpoint`` module)
``model.pt``               the run's final model: localizer + face model + inference settings
``history.csv``            one row per epoch and stage
``noise.csv``              per-image error of the trained model on its own training labels, flags and weights
``metrics.json``           validation metrics and the test count
``val_predictions.npy``    ``float32 [n_val, K, 2]`` original pixels, validation order
``test_predictions.npy``   ``float32 [n_test, K, 2]`` original pixels, ``test_points.csv`` order
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
import os
import shutil

import numpy as np
import pandas as pd

from .files import TMP_SUFFIX, atomic_write_json, read_json

MARKER = ".thousand-landmarks-run.json"
FORMAT = "thousand-landmarks-run/1"
MANIFEST = ("params.yaml", "run_info.json", "pipeline_state.json", "checkpoints/", "model.pt", "history.csv",
            "noise.csv", "metrics.json", "val_predictions.npy", "test_predictions.npy", "submission.csv",
            "submission_partial.csv", "figures/", "notebooks/", "reports/", "data/", ".lock")


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

    def create(self, created_by: str) -> "RunFolder":
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

    def clear(self, log=print) -> list:
        """Remove the manifest's paths (``--force``), printing what is removed and what is kept; the marker stays.

        Returns:
            the removed paths.
        Raises:
            RunFolderError: not a run folder.
        """
        declared = {e.rstrip("/") for e in self.manifest()} - {".lock"}
        removed = []
        for name in sorted(os.listdir(self.path)):
            p = os.path.join(self.path, name)
            if name in declared:
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
                removed.append(p)
            elif name not in (MARKER, ".lock"):
                log(f"[run] kept {p} (not written by this project)")
        for p in removed:
            log(f"[run] removed {p}")
        return removed

    # ---------------------------------------------------------------------------------------------- lock
    def lock(self, owner: str = "") -> "RunFolder":
        """Take the run's lock (an ``flock`` on ``.lock``, held until ``unlock`` or the process ends; a notebook
        kernel started by a runner that holds it shares it through ``LANDMARKS_RUN_LOCK``), then remove stale
        temporary files (``.*.tmp``) left in the run folder by a killed process.

        Raises:
            RunFolderError: another process holds the lock (the message names its pid).
        """
        if self._lock_fd is not None or os.environ.get("LANDMARKS_RUN_LOCK") == self.path:
            return self
        path = self.file(".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"{self.path}: in use by another process ({holder}); wait for it or stop "
                                     f"it") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} {owner}".strip().encode(), 0)
        self._lock_fd = fd
        self.remove_stale_tmp()
        return self

    def unlock(self) -> None:
        """Release the lock taken by ``lock``."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove_stale_tmp(self) -> list:
        """Remove ``.<name>.<random>.tmp`` files (``files.atomic_open``'s) below the run folder; call only while
        holding the lock. Returns the removed paths."""
        out = []
        for root, _dirs, files in os.walk(self.path):
            for n in files:
                if n.startswith(".") and n.endswith(TMP_SUFFIX):
                    os.remove(os.path.join(root, n))
                    out.append(os.path.join(root, n))
        return out

    # ---------------------------------------------------------------------------------------------- state
    def state(self) -> dict:
        """``pipeline_state.json``: ``{"notebooks": {name: {"params": {...}, "at": ..., "seconds": ...}}}``."""
        s = read_json(self.file("pipeline_state.json"), {}) or {}
        s.setdefault("notebooks", {})
        return s

    def record_notebook(self, name: str, params: dict, seconds: float | None = None) -> None:
        """Record that notebook ``name`` finished with ``params`` (atomically)."""
        s = self.state()
        entry = {"params": dict(params), "at": now()}
        if seconds is not None:
            entry["seconds"] = round(float(seconds), 1)
        s["notebooks"][name] = entry
        atomic_write_json(self.file("pipeline_state.json"), s)

    # ---------------------------------------------------------------------------------------------- reading
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

    def read_noise(self) -> pd.DataFrame:
        """``noise.csv``: ``file_name, split, nme, flagged, weight`` per training image."""
        return pd.read_csv(self.file("noise.csv"), dtype={"file_name": str}, keep_default_na=False)

    def submission(self) -> str | None:
        """``submission.csv``, else ``submission_partial.csv`` (a run with ``max_test_images``), else None."""
        for name in ("submission.csv", "submission_partial.csv"):
            if os.path.exists(self.file(name)):
                return self.file(name)
        return None
