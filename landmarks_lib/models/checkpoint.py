"""Checkpoints: format, save, load and the networks they hold (format ``thousand-landmarks/2``).

Two kinds of file, both plain dicts of tensors and primitives, loaded with ``torch.load(weights_only=True)`` (no code
from a file is ever run):

- a **stage checkpoint** (``<run>/checkpoints/<stage>_best.pt``; ``RunFolder.checkpoint``): ``format``, ``kind =
  "stage"``, ``stage``, ``meta`` (``model_meta``: backbone, number of points, crop geometry, normalisation, target
  units, head, mirror permutation), ``state_dict``, ``params`` (the values of the scopes the stage reads),
  ``scope_key`` (their fingerprint), ``data_key`` (``TrainData.data_key``), ``finished``, ``val_mse``, ``epoch``.
  ``<stage>_last.pt`` adds ``optimizer``, ``scheduler``, ``history``, ``elapsed_s`` and ``best_val_mse``; it exists
  only while its stage runs. Stage checkpoints never embed each other.
- the run's **final model** (``<run>/model.pt``; ``RunFolder.model``): ``format``, ``kind = "model"``,
  ``localizer`` (``{"meta", "state_dict"}`` or None for crop modes without one), ``face`` (``{"meta",
  "state_dict"}``), ``inference`` (the settings it was validated with: ``tta_flip``, ``refine_steps``,
  ``tta_scales``), ``val_mse`` and ``source`` (the stage it comes from). Prediction, ensembles and export load it.

Files of format ``thousand-landmarks/1`` (earlier releases) are refused with a message naming the format.

torch is imported by the functions that need it, so that ``CheckpointError`` and ``num_points`` serve the torch-free
onnx backend (``runtime``).
"""

from __future__ import annotations

import os
import re

from ..core.files import atomic_open, no_space

FORMAT = "thousand-landmarks/2"
OLD_FORMATS = ("thousand-landmarks/1",)
INFERENCE_KEYS = ("tta_flip", "refine_steps", "tta_scales")


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this package, of another format, or of the wrong kind."""


def save(path, obj: dict) -> None:
    """``torch.save`` through ``files.atomic_open``: a crash leaves the previous file intact.

    Raises:
        OSError: the folder cannot be written; a full disk is reported as ``no space left on <path>``.
    """
    import torch

    try:
        with atomic_open(path, "wb") as f:
            torch.save(dict(obj, format=FORMAT), f)
    except RuntimeError as e:  # torch reports ENOSPC as "enforce fail at inline_container.cc"
        if "inline_container" in str(e) or "No space" in str(e):
            raise no_space(os.path.dirname(os.path.abspath(path))) from None
        raise


def load(path, kind: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        kind: ``"stage"`` or ``"model"`` to require that kind (None accepts both).
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not loadable, another format (``/1`` is named as such), or another kind.
    """
    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: checkpoint is missing")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a checkpoint of ours"
        msg = str(e)
        if "weights_only" in msg or "Weights only load failed" in msg:  # refused on purpose: no torch advice
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and plain "
                                  f"values{what}, and checkpoints are loaded without running code from the file; "
                                  f"use a checkpoint written by this package") from None
        first = msg.splitlines()[0] if msg else ""
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {first})") from e
    fmt = ck.get("format") if isinstance(ck, dict) else None
    if fmt in OLD_FORMATS:
        raise CheckpointError(f"{path}: checkpoint format {fmt!r} is no longer supported (this version reads "
                              f"{FORMAT!r}); retrain, or predict with the release that wrote it")
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format {fmt!r})")
    if kind is not None and ck.get("kind") != kind:
        raise CheckpointError(f"{path}: a {ck.get('kind')!r} checkpoint where a {kind!r} one is needed"
                              + (" (a run's final model is <run>/model.pt)" if kind == "model" else ""))
    return ck


def load_model(path_or_run_dir, map_location="cpu") -> dict:
    """A run's final model: ``<dir>/model.pt`` for a run folder, else the file itself (``kind = "model"``).

    Raises:
        FileNotFoundError: no ``model.pt`` (run the finetune notebook first), CheckpointError.
    """
    p = os.fspath(path_or_run_dir)
    if os.path.isdir(p):
        p = os.path.join(p, "model.pt")
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: the run has no final model yet; run the finetune notebook (03) first")
    return load(p, "model", map_location)


def make_model(face: dict, localizer: dict | None, inference: dict, source: str) -> dict:
    """The final model dict from two stage checkpoints (``localizer`` None for crop modes without one)."""
    def part(ck):
        return {"meta": ck["meta"], "state_dict": ck["state_dict"]}

    return {"kind": "model", "face": part(face), "localizer": part(localizer) if localizer else None,
            "inference": {k: inference[k] for k in INFERENCE_KEYS}, "val_mse": face.get("val_mse"),
            "source": source}


def num_points(ck: dict) -> int:
    """The number of landmarks a stage checkpoint or model predicts."""
    return int((ck["face"] if ck.get("kind") == "model" else ck)["meta"]["num_points"])
