"""ONNX export of a final model and the onnxruntime networks that ``predictor.Predictor(backend="onnx")`` runs.

- ``onnx_network(part, device)``: a callable that stands in for the eval-mode torch module
  ``networks.network(part, device)`` at inference: ``float32 [N, 3, S, S]`` torch tensor in, the module's output
  (same shape, ``float32`` torch tensor on the input's device) out. The part's network is exported to ONNX in memory
  (``torch.onnx.export``, the TorchScript exporter: about a second for a MobileNetV2; the ``torch.export``-based one,
  which needs ``onnxscript``, only if that fails) and run by an ``onnxruntime.InferenceSession``. ``part`` may also
  name a ready ``.onnx`` file (an export folder's), then no torch weights are needed. The session and the export
  folder's reader live in ``runtime`` (no torch), re-exported here.
- ``export(model, out_dir)``: writes ``face.onnx``, ``localizer.onnx`` (when the model has a localizer) and
  ``model.json`` (format ``thousand-landmarks-onnx/1``: each part's ``meta``, the inference settings, the source
  model's path), atomically file by file, ``model.json`` last. ``read_export(out_dir)`` turns a folder back into a
  model dict (``state_dict`` None, ``onnx`` the file's path) that ``Predictor`` accepts with ``backend="onnx"``.

Every ONNX file has one input ``image``: ``float32 [N, 3, S, S]`` (N free, ``S = meta["crop_size"]``), RGB scaled to
``[0, 1]`` then normalised channel-wise, ``(x - meta["input_mean"]) / meta["input_std"]``; and one output ``output``:
the network's output with the batch on axis 0 (for the landmark regressors ``[N, K, 2]`` in target units,
``codecs.to_crop_pixels`` with ``meta["normalize_targets"]`` maps them to crop pixels).

``python -m landmarks_lib.export --checkpoint RUN_DIR_OR_MODEL --out DIR`` writes an export folder (one line and exit
2 for a usage error, exit 1 when the folder cannot be written, no tracebacks).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import warnings

import numpy as np
import torch

from ..core.files import atomic_open, atomic_write_json, sha256_file
from ..models import checkpoint, networks
from .backends import (
    EXPORT_FORMAT,
    INSTALL,
    MODEL_JSON,
    PARTS,
    OnnxNetwork,
    is_export,
    onnx_file_network,
    ort,
)

FORMAT = EXPORT_FORMAT
OPSET = 17


class ExportError(ValueError):
    """An output folder that must not be written, or a folder that is not an export of this format."""


def to_onnx(net: torch.nn.Module, crop_size: int) -> bytes:
    """The serialised ONNX model (opset ``OPSET``) of ``net`` (put in eval mode on the CPU) taking ``float32
    [N, 3, S, S]`` with ``S = crop_size`` pixels and returning one tensor: input ``image`` and output ``output``, both
    with a free batch axis 0.

    Raises:
        RuntimeError: ``onnx`` (or, for the fallback exporter, ``onnxscript``) is not installed, or the network
            cannot be exported.
    """
    try:
        import onnx  # noqa: F401  (the exporters need it)
    except ImportError as e:
        raise RuntimeError(f"ONNX export needs the onnx package, which is not installed: {INSTALL}") from e
    net = net.to("cpu").eval()
    x = torch.zeros(2, 3, int(crop_size), int(crop_size))  # batch 2: a batch of 1 may be traced as a constant
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        try:
            torch.onnx.export(net, (x,), buf, input_names=["image"], output_names=["output"], opset_version=OPSET,
                              dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
        except Exception as first:  # noqa: BLE001 - e.g. a torch without the TorchScript exporter: try the other
            buf = io.BytesIO()
            try:
                prog = torch.onnx.export(net, (x,), input_names=["image"], output_names=["output"],
                                         opset_version=max(OPSET, 18), dynamo=True, verbose=False,
                                         dynamic_shapes=({0: torch.export.Dim("batch")},))
                prog.save(buf)
            except ImportError as e:
                raise RuntimeError(f"the TorchScript ONNX exporter failed ({type(first).__name__}: {first}) and the "
                                   f"torch.export-based one needs onnxscript: pip install onnxscript") from e
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"cannot export {type(net).__name__} to ONNX: {type(first).__name__}: {first}; "
                                   f"{type(e).__name__}: {e}") from e
    return buf.getvalue()


def onnx_network(part, device="cpu") -> OnnxNetwork:
    """An onnxruntime network that behaves like ``networks.network(part, device)`` at inference.

    Args:
        part: a model part or stage checkpoint (``{"meta", "state_dict"}``: its network is rebuilt and exported
            in memory, ``to_onnx``), a part with ``"onnx"`` (a file path or the bytes of an ONNX model;
            ``state_dict`` may be None: ``read_export``'s parts), or that path or those bytes alone.
        device: where outputs are expected (``torch.device`` or name); on ``cuda`` with onnxruntime's CUDA provider
            available it runs there (CPU provider as fallback), otherwise on the CPU.
    Returns:
        ``backends.OnnxNetwork``: ``float32 [N, 3, S, S]`` numpy -> the network's ``float32`` output (``[N, K, 2]``
        target units for the landmark regressors).
    Raises:
        RuntimeError: onnx / onnxruntime not installed (the message says what to install), export failed.
        FileNotFoundError: a named ONNX file that does not exist.
    """
    ort()  # onnxruntime first: its message says what to install
    src = part.get("onnx") if isinstance(part, dict) else part
    if src is None:
        src = to_onnx(networks.network(part, "cpu"), part["meta"]["crop_size"])
    return onnx_file_network(src, "cuda" if torch.device(device).type == "cuda" else "cpu")


def _plain(v):
    """``v`` as JSON values (tensors and arrays as lists, tuples as lists), or ``_SKIP`` when it has none."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        out = [_plain(x) for x in v]
        return _SKIP if any(x is _SKIP for x in out) else out
    if isinstance(v, dict):
        out = {str(k): _plain(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x is not _SKIP}
    return _SKIP


_SKIP = object()


def export(model_path_or_run_dir, out_dir) -> dict:
    """Export a final model to ``out_dir``: ``face.onnx``, ``localizer.onnx`` (when the model has a localizer) and
    ``model.json`` (written last), each atomically; a previous export there is replaced (a stale
    ``localizer.onnx`` removed).

    ``model.json``: ``format`` (``FORMAT``), ``source`` (absolute path of the ``model.pt``), ``model_sha256`` (its
    SHA-256: a run folder's ``export/`` serves only the ``model.pt`` it was made from), ``files`` (each ONNX file's
    ``size`` and ``sha256``, checked on load), ``inference`` (the
    model's validated settings), ``val_mse``, ``opset`` and ``parts``: ``{"face": {"file", "meta"}, "localizer":
    {"file", "meta"} or null}`` with each part's JSON-serialisable ``meta`` (crop geometry ``crop_size`` /
    ``crop_mode`` / ``face_scale`` in pixels and shares of the face, ``input_mean`` / ``input_std``,
    ``normalize_targets``, ``num_points``, ``flip_perm`` / ``flip_unmatched``, backbone, head ...).

    Returns:
        the ``model.json`` dict.
    Raises:
        FileNotFoundError, checkpoint.CheckpointError: no final model at ``model_path_or_run_dir`` (one line; a file
            refused on purpose: ``checkpoint.load``).
        ExportError: ``out_dir`` is a file, or a non-empty folder without ``model.json`` (not a previous export).
        RuntimeError: onnx / onnxruntime missing, or a network that cannot be exported.
        OSError: the folder cannot be written.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not is_export(out_dir):
        raise ExportError(f"{out_dir}: folder is not empty and is not a previous export (no {MODEL_JSON}); "
                          f"choose a new or empty folder")
    src = os.fspath(model_path_or_run_dir)
    model = checkpoint.load_model(src)
    source = os.path.abspath(os.path.join(src, "model.pt") if os.path.isdir(src) else src)
    model_sha256 = sha256_file(source)
    parts = {}
    for name in PARTS:
        part = model.get(name)
        if part is None:
            parts[name] = None
            continue
        data = to_onnx(networks.network(part, "cpu"), part["meta"]["crop_size"])
        with atomic_open(os.path.join(out_dir, f"{name}.onnx"), "wb") as f:
            f.write(data)
        parts[name] = {"file": f"{name}.onnx", "meta": _plain(dict(part["meta"]))}
    files = {p["file"]: {"size": os.path.getsize(os.path.join(out_dir, p["file"])),
                         "sha256": sha256_file(os.path.join(out_dir, p["file"]))} for p in parts.values() if p}
    doc = {"format": FORMAT, "source": source, "model_sha256": model_sha256, "files": files,
           "inference": _plain(dict(model["inference"])),
           "val_mse": _plain(model.get("val_mse")), "opset": OPSET, "parts": parts,
           "input": {"name": "image", "dtype": "float32", "shape": ["N", 3, "crop_size", "crop_size"],
                     "values": "RGB / 255, then (x - input_mean) / input_std per channel"},
           "output": {"name": "output", "values": "the network's output, batch on axis 0 ([N, K, 2] target units)"}}
    atomic_write_json(os.path.join(out_dir, MODEL_JSON), doc)
    for name in PARTS:
        stale = os.path.join(out_dir, f"{name}.onnx")
        if parts[name] is None and os.path.exists(stale):
            os.remove(stale)
    return doc


def _one_line(e: BaseException) -> str:
    """An error's message on one line (line breaks of a library's message become spaces)."""
    return " ".join(str(e).splitlines()).strip()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="landmarks export",
                                 description="Export a run's final model to ONNX (face.onnx, localizer.onnx, "
                                             "model.json) for the onnx backend of the predictor.")
    ap.add_argument("--checkpoint", required=True, help="a run folder or its model.pt")
    ap.add_argument("--out", required=True, help="output folder (new, empty, or a previous export)")
    return ap


def main(argv=None) -> int:
    """The export CLI: one line on stderr and exit 2 for a usage error (no model, a folder that is not an export,
    onnx not installed), exit 1 when the folder cannot be written; no tracebacks."""
    a = build_parser().parse_args(argv)
    try:
        doc = export(a.checkpoint, a.out)
    except (FileNotFoundError, checkpoint.CheckpointError, ExportError, RuntimeError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, an unwritable folder
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    files = [p["file"] for p in doc["parts"].values() if p is not None] + [MODEL_JSON]
    print(f"wrote {', '.join(files)} to {a.out}")
    return 0
