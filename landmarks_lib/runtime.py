"""Torch-free inference: onnxruntime networks and the numpy steps around them.

``predictor.Predictor(backend="onnx")`` runs every network pass through this module: the network input
(``network_input``: ``uint8`` NHWC crops -> normalised ``float32`` NCHW), the landmark regressors' pass with flip
TTA (``predict_crops``), the face-box localizer's pass and decoding (``detect_crops``, ``decode_faceboxes``,
``choose``), and the ``onnxruntime`` session (``OnnxNetwork``). Reading an export folder (``read_export``) needs
nothing else, so a process that predicts from an export folder never imports torch (about 1.2 s of start-up on a
2-core CPU, and its memory). The torch backend's functions (``predict.predict_crops``, ``localizer.detect_crops``)
compute the same values with torch; the two agree within 2e-3 px (``tests/test_export.py``).

Coordinates: crop pixels of the network's ``S x S`` input (continuous convention: pixel ``i`` spans ``[i, i + 1)``,
a flip maps ``x -> S - x``); ``predictor.Predictor`` maps them to original pixels.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from .files import read_json

# The face-box localizer's output grid and the contest's face rule (``localizer`` re-exports these).
STRIDE = 16
HEAD = "facebox"
MIN_SCORE = 0.1  # a local maximum below this is not a face (unless it is the image's best)
RELATIVE_SCORE = 0.5  # ``choose`` considers the detections scoring at least this share of the best one

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

    A call takes ``float32 [N, 3, S, S]`` as a numpy array (returns a numpy ``float32`` array) or as a torch tensor
    (returns a ``float32`` tensor on the input's device). The session uses ``num_threads()`` intra-op threads (one
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

    def __call__(self, x):
        if isinstance(x, np.ndarray):
            return self.run(x)
        import torch

        y = self.run(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(y).to(x.device)

    def eval(self) -> "OnnxNetwork":
        return self


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


# --------------------------------------------------------------------------------------------------- network passes
def network_input(crops_u8: np.ndarray, mean, std) -> np.ndarray:
    """``uint8 [B, H, W, 3]`` crops -> ``float32 [B, 3, H, W]`` (C-contiguous): ``x * a + b`` per channel with
    ``a = 1 / (255 std)``, ``b = -mean / std`` (the same two float32 operations as ``data.network_input``)."""
    x = np.ascontiguousarray(np.asarray(crops_u8).transpose(0, 3, 1, 2), dtype=np.float32)
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    a = (1.0 / (255.0 * s)).astype(np.float32).reshape(1, 3, 1, 1)
    b = (-m / s).astype(np.float32).reshape(1, 3, 1, 1)
    x *= a
    x += b
    return x


def to_crop_pixels(out: np.ndarray, size: int, normalize_targets: bool) -> np.ndarray:
    """Model output (target units) -> crop pixels (``models.to_crop_pixels``)."""
    return (out + np.float32(0.5)) * np.float32(size) if normalize_targets else out


def predict_crops(net, meta: dict, crops, batch_size: int = 16, tta_flip: bool = False) -> np.ndarray:
    """A landmark regressor on ready crops (``predict.predict_crops`` without torch).

    Args:
        net: a callable ``float32 [n, 3, S, S]`` numpy -> ``float32 [n, K, 2]`` target units (``OnnxNetwork``).
        crops: ``uint8 [N, S, S, 3]``, ``S = meta["crop_size"]``.
        tta_flip: also predict on the mirrored crop, map back (``x -> S - x``, points re-indexed by
            ``meta["flip_perm"]``; points in ``meta["flip_unmatched"]`` keep the unflipped prediction) and average.
    Returns:
        ``float32 [N, K, 2]`` crop pixels.
    Raises:
        ValueError: ``tta_flip`` without ``meta["flip_perm"]``.
    """
    size = int(meta["crop_size"])
    if tta_flip and meta.get("flip_perm") is None:
        raise ValueError("tta_flip needs a checkpoint with a mirror permutation (trained with flip estimation)")
    perm = np.asarray(meta["flip_perm"], np.int64) if tta_flip else None
    unmatched = np.asarray(meta.get("flip_unmatched") or [], np.int64)
    out = np.zeros((len(crops), int(meta["num_points"]), 2), np.float32)
    for s in range(0, len(crops), batch_size):
        x = network_input(crops[s: s + batch_size], meta["input_mean"], meta["input_std"])
        y = to_crop_pixels(net(x), size, meta["normalize_targets"])
        if tta_flip:
            yf = to_crop_pixels(net(np.ascontiguousarray(x[..., ::-1])), size, meta["normalize_targets"])
            yf[..., 0] = size - yf[..., 0]
            yf = yf[:, perm]
            if len(unmatched):
                yf[:, unmatched] = y[:, unmatched]
            y = (y + yf) / np.float32(2)
        out[s: s + len(x)] = y
    return out


def _max_pool3(a: np.ndarray) -> np.ndarray:
    """3x3 max over each cell's neighbourhood (stride 1, edges padded with -inf) of ``[B, G, G]``."""
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    g1, g2 = a.shape[1:]
    return np.max([p[:, i: i + g1, j: j + g2] for i in range(3) for j in range(3)], axis=0)


def decode_faceboxes(out: np.ndarray, size: int, stride: int = STRIDE, top: int = 8):
    """The localizer's detections per image (``localizer.FaceBoxCodec.decode`` without torch): the heatmap's local
    maxima (3x3), best first.

    Args:
        out: ``float32 [B, 4, G, G]`` network output (heatmap logit, x and y offset, log(extent / S)).
        size: the input side ``S`` in pixels.
    Returns:
        ``(boxes float64 [B, top, 3]`` ``(cx, cy, extent)`` input pixels, ``scores float64 [B, top]`` in ``[0, 1]``);
        rows past an image's maxima have score 0.
    """
    out = np.asarray(out, np.float32)
    b, _, g, _ = out.shape
    heat = np.float32(1) / (np.float32(1) + np.exp(-out[:, 0]))
    peak = heat * (_max_pool3(heat) == heat)
    k = min(top, g * g)
    flat = peak.reshape(b, -1)
    cell = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    score = np.take_along_axis(flat, cell, 1)
    at = np.take_along_axis(out[:, 1:].reshape(b, 3, -1), np.broadcast_to(cell[:, None, :], (b, 3, k)), 2)
    cx = ((cell % g).astype(np.float32) + np.float32(0.5) + at[:, 0]) * np.float32(stride)
    cy = ((cell // g).astype(np.float32) + np.float32(0.5) + at[:, 1]) * np.float32(stride)
    ext = np.exp(at[:, 2]) * np.float32(size)
    return np.stack([cx, cy, ext], -1).astype(np.float64), score.astype(np.float64)


def choose(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The face the contest's labels mark in each image: the largest among the detections scoring at least
    ``RELATIVE_SCORE`` of the best (and ``MIN_SCORE``); the best one when none passes. One detection is chosen; two
    faces are never averaged. (The labelled face is the dominant one; a pasted or background face often scores as
    high or higher, so the score alone is not the rule: on the stand-in's robustness set the highest score picked
    the wrong face in 38 of 480 images, the largest confident one in none.)

    Args:
        boxes: ``float [B, T, 3]``; scores: ``float [B, T]`` (``decode_faceboxes``).
    Returns:
        ``(box float64 [B, 3], score float64 [B], faces int64 [B]`` the number of detections that passed).
    """
    best = scores.max(axis=1, keepdims=True)
    ok = (scores >= np.maximum(RELATIVE_SCORE * best, MIN_SCORE))
    size = np.where(ok, boxes[..., 2], -np.inf)
    pick = np.where(ok.any(axis=1), size.argmax(axis=1), scores.argmax(axis=1))
    r = np.arange(len(boxes))
    return boxes[r, pick].astype(np.float64), scores[r, pick].astype(np.float64), ok.sum(1)


def detect_crops(net, meta: dict, crops, batch_size: int = 16, tta_flip: bool = False):
    """The chosen face of each ready letterboxed crop (``localizer.detect_crops`` without torch).

    Args:
        net: a callable ``float32 [n, 3, S, S]`` numpy -> ``float32 [n, 4, S/16, S/16]`` (``OnnxNetwork``).
        crops: ``uint8 [N, S, S, 3]``.
        tta_flip: average the output with that of the mirrored crop (mapped back: columns reversed, x offsets
            negated) before decoding.
    Returns:
        ``(boxes float64 [N, 3]`` input pixels, ``scores float64 [N]``, ``faces int64 [N]``); see ``choose``.
    """
    size = int(meta["crop_size"])
    if size % STRIDE:
        raise ValueError(f"localizer_crop_size must be a multiple of {STRIDE}, got {size}")
    out_b, out_s, out_n = [], [], []
    for s in range(0, len(crops), batch_size):
        x = network_input(crops[s: s + batch_size], meta["input_mean"], meta["input_std"])
        out = net(x)
        if tta_flip:
            mirrored = np.ascontiguousarray(net(np.ascontiguousarray(x[..., ::-1]))[..., ::-1])
            mirrored[:, 1] = -mirrored[:, 1]
            out = (out + mirrored) / np.float32(2)
        b, sc, n = choose(*decode_faceboxes(out, size))
        out_b.append(b), out_s.append(sc), out_n.append(n)
    if not out_b:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_n)


# --------------------------------------------------------------------------------------------------- export folders
def is_export(path) -> bool:
    """Whether ``path`` is a folder holding ``model.json`` (an export folder)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_JSON))


def read_export(path) -> dict:
    """A model dict (as ``checkpoint.load_model`` returns, with ``state_dict`` None and ``onnx`` the part's file)
    from an export folder, for ``predictor.Predictor(..., backend="onnx")``.

    Raises:
        FileNotFoundError: no ``model.json``, or a part's ONNX file is missing.
        checkpoint.CheckpointError: ``model.json`` of another format.
    """
    from .checkpoint import CheckpointError

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
            p = {"meta": p["meta"], "state_dict": None, "onnx": f}
        model[name] = p
    return model
