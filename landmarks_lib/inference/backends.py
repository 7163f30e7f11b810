"""The inference backends: one interface, ``net(x)`` with ``x`` the ``float32 [N, 3, S, S]`` numpy input and the
network's ``float32`` numpy output (batch on axis 0), so that the passes around the networks (``passes``: input
normalisation, flip TTA, face-box decoding, crop placement) are written once, in numpy, for both:

- ``OnnxNetwork``: an ONNX model run by onnxruntime (``onnx_file_network``; export folders: ``read_export``). A
  process that predicts from an export folder never imports torch (its start-up and memory).
- ``TorchNetwork``: an eval-mode torch module on its device (channels-last input, bf16 autocast on CUDA with ``amp``);
  only the network runs on the device, the passes run on the CPU in numpy.

``as_backend(model, device, amp)`` wraps a torch module and passes a backend through.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from ..core.files import read_json, sha256_file
from ..models.checkpoint import CheckpointError

# Export folders (``export.export`` writes them).
EXPORT_FORMAT = "thousand-landmarks-onnx/1"
PARTS = ("localizer", "face")
MODEL_JSON = "model.json"
INSTALL = "pip install onnx onnxruntime (the versions pinned in pyproject.toml)"


def ort():
    """The ``onnxruntime`` module.

    Raises:
        RuntimeError: onnxruntime is not installed (the message says what to install).
    """
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError(f"the onnx backend needs onnxruntime, which is not installed: {INSTALL}") from e
    return onnxruntime


def num_threads() -> int:
    """Intra-op threads for an onnxruntime session: torch's current count when torch is already imported (so both
    backends follow one limit), else ``OMP_NUM_THREADS`` when it is a positive integer, else the CPU count."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    v = os.environ.get("OMP_NUM_THREADS", "")
    return int(v) if v.isdigit() and int(v) > 0 else (os.cpu_count() or 1)


class OnnxNetwork:
    """An ONNX model run by onnxruntime, called like an eval-mode network (``export.onnx_network`` builds one).

    A call takes ``float32 [N, 3, S, S]`` as a numpy array and returns a numpy ``float32`` array. The session uses
    ``num_threads()`` intra-op threads (one
    inter-op thread) and is rebuilt when that count changes, so thread limits always agree with torch's.

    Attributes:
        model: the serialised ONNX model (``bytes``).
        providers: the onnxruntime execution providers, in order of preference.
    """

    def __init__(self, model: bytes, providers: list):
        self.model, self.providers = model, list(providers)
        self._session, self._threads = None, None

    def session(self):
        """The ``onnxruntime.InferenceSession``, built for the current thread count."""
        threads = num_threads()
        if self._session is None or threads != self._threads:
            rt = ort()
            so = rt.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            so.log_severity_level = 3
            self._session = rt.InferenceSession(self.model, so, providers=self.providers)
            self._threads = threads
        return self._session

    def run(self, x: np.ndarray) -> np.ndarray:
        """``float32 [N, 3, S, S]`` numpy -> the network's ``float32`` output (numpy, batch on axis 0)."""
        y = self.session().run(["output"], {"image": np.ascontiguousarray(x, np.float32)})[0]
        return np.asarray(y, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)

    def eval(self) -> OnnxNetwork:
        return self


class TorchNetwork:
    """An eval-mode torch module called with numpy: ``float32 [N, 3, S, S]`` in, its ``float32`` output out.

    The input goes to ``device`` in channels-last memory (what torch's CPU convolutions run fastest on); with
    ``amp`` the module runs under bf16 autocast on CUDA. No gradients are kept.

    Attributes:
        module: the ``torch.nn.Module`` (put in eval mode); device: its ``torch.device``; amp: bf16 autocast on CUDA.
    """

    def __init__(self, module, device="cpu", amp: bool = False):
        import torch

        self.module, self.device = module.eval(), torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, non_blocking=True)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            y = self.module(t.contiguous(memory_format=torch.channels_last))
        return y.float().cpu().numpy()

    def eval(self) -> TorchNetwork:
        return self


def as_backend(model, device="cpu", amp: bool = False):
    """A backend for ``model``: an ``OnnxNetwork``, a ``TorchNetwork`` or any callable on numpy input as it is; a
    torch module (anything with ``parameters``) wrapped in a ``TorchNetwork`` on ``device``."""
    if hasattr(model, "parameters") and callable(model.parameters):
        return TorchNetwork(model, device, amp)
    return model


def onnx_file_network(src, device: str = "cpu") -> OnnxNetwork:
    """An ``OnnxNetwork`` of an ONNX file (path) or of its bytes; ``device`` ``"cuda"`` uses onnxruntime's CUDA
    provider when it is available (the CPU provider as fallback).

    Raises:
        FileNotFoundError: a named ONNX file that does not exist. RuntimeError: onnxruntime not installed.
    """
    rt = ort()
    if isinstance(src, (bytes, bytearray)):
        model = bytes(src)
    else:
        if not os.path.exists(src):
            raise FileNotFoundError(f"{src}: ONNX file is missing")
        with open(src, "rb") as f:
            model = f.read()
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in rt.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return OnnxNetwork(model, providers)


def resolve_backend(choice: str, device_type: str | None = None) -> str:
    """A backend choice resolved: ``"torch"``, ``"onnx"`` (onnxruntime must import), or ``"auto"``: onnx when the
    device type is ``"cpu"`` and onnxruntime imports, else torch (the ``inference_backend`` parameter and the predict
    CLI's ``--backend``).

    Raises:
        RuntimeError: ``"onnx"`` without onnxruntime installed (the message says what to install).
        ValueError: another choice.
    """
    if choice == "torch":
        return "torch"
    if choice == "onnx":
        ort()
        return "onnx"
    if choice != "auto":
        raise ValueError(f"backend must be auto, torch or onnx, got {choice!r}")
    if device_type != "cpu":
        return "torch"
    try:
        ort()
    except RuntimeError:
        return "torch"
    return "onnx"


def onnx_device(name: str = "auto") -> str:
    """The onnx backend's device without torch: ``"cuda"`` for ``auto`` or ``cuda[:N]`` when onnxruntime has its
    CUDA provider, else ``"cpu"`` (``auto``); any other name as given.

    Raises:
        RuntimeError: ``cuda`` named but onnxruntime has no CUDA provider.
    """
    if name == "auto":
        return "cuda" if "CUDAExecutionProvider" in ort().get_available_providers() else "cpu"
    if str(name).startswith("cuda") and "CUDAExecutionProvider" not in ort().get_available_providers():
        raise RuntimeError(f"device {name!r} requested but onnxruntime has no CUDA provider; use device=auto or cpu")
    return str(name)


# --------------------------------------------------------------------------------------------------- export folders
def is_export(path) -> bool:
    """Whether ``path`` is a folder holding ``model.json`` (an export folder)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_JSON))


RUN_EXPORT = "export"  # a run folder's export of its model.pt (``workflow.write_model`` writes it)


def run_export(path) -> str | None:
    """The export folder that may stand for the final model at ``path``: ``path`` itself when it is an export folder;
    for a run folder, its ``export/`` when that export's ``model.json`` records the SHA-256 of the run's current
    ``model.pt`` (a missing, stale or partial export gives ``None``: the caller loads ``model.pt`` instead).
    """
    path = os.fspath(path)
    if is_export(path):
        return path
    folder, model = os.path.join(path, RUN_EXPORT), os.path.join(path, "model.pt")
    if not (os.path.isdir(path) and is_export(folder) and os.path.isfile(model)):
        return None
    doc = read_json(os.path.join(folder, MODEL_JSON))
    recorded = doc.get("model_sha256") if isinstance(doc, dict) else None
    return folder if recorded and recorded == _sha256_of(model) else None


_SHA256_SEEN: dict = {}  # (path, size, mtime_ns, inode, ctime_ns) -> sha256: one hash of a model.pt per process


def _sha256_of(path) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = sha256_file(path)
    return _SHA256_SEEN[key]


def read_export(path) -> dict:
    """A model dict (as ``checkpoint.load_model`` returns, with ``state_dict`` None and ``onnx`` the part's file)
    from an export folder, for ``predictor.Predictor(..., backend="onnx")``.

    ``model.json`` lists every file of the export with its size and SHA-256 (written last); a file that differs
    (an export interrupted partway, or two exports mixed) is refused.

    Raises:
        FileNotFoundError: no ``model.json``, or a part's ONNX file is missing.
        checkpoint.CheckpointError: ``model.json`` of another format, or files that do not match it.
    """

    path = os.fspath(path)
    doc = read_json(os.path.join(path, MODEL_JSON))
    if doc is None:
        raise FileNotFoundError(f"{os.path.join(path, MODEL_JSON)}: not an export folder (no {MODEL_JSON})")
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise CheckpointError(f"{path}: not a {EXPORT_FORMAT} export (format {fmt!r})")
    model = {"kind": "model", "format": EXPORT_FORMAT, "inference": doc["inference"], "val_mse": doc.get("val_mse"),
             "source": doc.get("source")}
    for name in PARTS:
        p = doc["parts"].get(name)
        if p is not None:
            f = os.path.join(path, p["file"])
            if not os.path.exists(f):
                raise FileNotFoundError(f"{f}: ONNX file of the export is missing")
            want = (doc.get("files") or {}).get(p["file"])
            if want is not None and (os.path.getsize(f) != want["size"] or sha256_file(f) != want["sha256"]):
                raise CheckpointError(f"{f}: does not match {MODEL_JSON} (an interrupted or mixed export); "
                                      f"export again (landmarks export)")
            p = {"meta": p["meta"], "state_dict": None, "onnx": f}
        model[name] = p
    return model
