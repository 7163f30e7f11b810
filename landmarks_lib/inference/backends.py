"""The inference backends: one interface, ``net(x)`` with ``x`` the ``float32 [N, 3, S, S]`` numpy input and the
network's ``float32`` numpy output (batch on axis 0), so that the passes around the networks (``passes``: input
normalisation, flip TTA, face-box decoding, crop placement) are written once, in numpy, for both:

- ``OnnxNetwork``: an ONNX model run by onnxruntime (``onnx_file_network``; export folders: ``read_export``). A
  process that predicts from an export folder never imports torch (its start-up and memory).
- ``TorchNetwork``: an eval-mode torch module on its device (channels-last input, bf16 autocast on CUDA with ``amp``);
  only the network runs on the device, the passes run on the CPU in numpy.

``as_backend(model, device, amp)`` wraps a torch module and passes a backend through. ``read_export`` reads an
export folder and checks it against its schema (``check_export``: types and ranges of every setting, the ONNX files'
input and output shapes); ``load_model`` loads a ``model.pt`` with a one-line message for a file refused on purpose.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from ..core.files import read_json, sha256_file
from ..core.geometry import CROP_MODES
from ..core.params import parse_scales
from ..models import codecs
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
    ``model.pt`` (a missing, stale, partial or malformed export gives ``None``: the caller loads ``model.pt``
    instead).
    """
    path = os.fspath(path)
    if is_export(path):
        return path
    folder, model = os.path.join(path, RUN_EXPORT), os.path.join(path, "model.pt")
    if not (os.path.isdir(path) and is_export(folder) and os.path.isfile(model)):
        return None
    try:
        doc = read_json(os.path.join(folder, MODEL_JSON))
    except (OSError, ValueError):  # malformed or unreadable: a partial export, bypassed
        return None
    recorded = doc.get("model_sha256") if isinstance(doc, dict) else None
    return folder if recorded and recorded == _sha256_of(model) else None


_SHA256_SEEN: dict = {}  # (path, size, mtime_ns, inode, ctime_ns) -> sha256: one hash of a model.pt per process


def _sha256_of(path) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = sha256_file(path)
    return _SHA256_SEEN[key]


# ------------------------------------------------------------------------------------------- the export's schema
MAX_REFINE_STEPS = 10


def _show(v) -> str:
    """``repr(v)``, at most 60 characters, on one line."""
    r = repr(v).replace("\n", " ")
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Schema:
    """The checks of one ``model.json``: ``bad(key, value, want)`` raises the one-line ``CheckpointError``."""

    def __init__(self, json_path):
        self.json_path = json_path

    def bad(self, key: str, value, want: str):
        raise CheckpointError(f"{self.json_path}: {key} is {_show(value)}; {want}; export the model again "
                              f"(landmarks export)")

    def get(self, d: dict, name: str, key: str, check, want: str, required: bool = True):
        if name not in d:
            if required:
                raise CheckpointError(f"{self.json_path}: {key} is missing; {want}; export the model again "
                                      f"(landmarks export)")
            return None
        v = d[name]
        if not check(v):
            self.bad(key, v, want)
        return v

    def inference(self, doc: dict) -> None:
        inf = self.get(doc, "inference", "inference", lambda v: isinstance(v, dict), "must be an object")
        self.get(inf, "tta_flip", "inference.tta_flip", lambda v: isinstance(v, bool), "must be true or false")
        self.get(inf, "refine_steps", "inference.refine_steps",
                 lambda v: _is_int(v) and 0 <= v <= MAX_REFINE_STEPS,
                 f"must be an integer from 0 to {MAX_REFINE_STEPS}")

        def scales(v):
            if isinstance(v, bool) or (isinstance(v, list) and any(isinstance(x, bool) for x in v)):
                return False
            try:
                parse_scales(v)
            except (TypeError, ValueError):
                return False
            return True

        self.get(inf, "tta_scales", "inference.tta_scales", scales,
                 'must be positive numbers (a number, a list, or text such as "0.92,1.0")')

    def meta(self, name: str, meta, is_face: bool) -> dict:
        key = f"parts.{name}.meta"
        if not isinstance(meta, dict):
            self.bad(key, meta, "must be an object")
        head = self.get(meta, "head", f"{key}.head", lambda v: v is None or isinstance(v, str), "must be text",
                        required=False)
        boxes = not is_face and head == codecs.HEAD  # the face-box localizer: a grid, no points
        step = codecs.STRIDE if boxes else 1
        self.get(meta, "crop_size", f"{key}.crop_size", lambda v: _is_int(v) and v > 0 and v % step == 0,
                 "must be a positive integer" + (f" multiple of {step} (the face-box grid)" if step > 1 else ""))
        k = self.get(meta, "num_points", f"{key}.num_points", lambda v: _is_int(v) and v > 0,
                     "must be a positive integer", required=not boxes)
        for what in ("input_mean", "input_std"):
            self.get(meta, what, f"{key}.{what}", lambda v, w=what: isinstance(v, list) and len(v) == 3
                     and all(_is_number(x) for x in v) and (w == "input_mean" or min(v) > 0),
                     "must be 3 finite numbers" + (", each above 0" if what == "input_std" else ""))
        self.get(meta, "normalize_targets", f"{key}.normalize_targets", lambda v: isinstance(v, bool),
                 "must be true or false", required=not boxes)
        self.get(meta, "crop_mode", f"{key}.crop_mode", lambda v: v in CROP_MODES,
                 f"must be one of {', '.join(CROP_MODES)}")
        self.get(meta, "face_scale", f"{key}.face_scale", lambda v: _is_number(v) and v > 0,
                 "must be a positive number", required=is_face and meta.get("crop_mode") == "face")
        if k is not None:
            self.get(meta, "flip_perm", f"{key}.flip_perm", lambda v: v is None or (
                isinstance(v, list) and all(_is_int(x) for x in v) and sorted(v) == list(range(k))),
                f"must be null or a permutation of 0..{k - 1} (num_points {k})", required=False)
            self.get(meta, "flip_unmatched", f"{key}.flip_unmatched", lambda v: v is None or (
                isinstance(v, list) and all(_is_int(x) and 0 <= x < k for x in v)),
                f"must be a list of point indices 0..{k - 1}", required=False)
        self.get(meta, "face_rule", f"{key}.face_rule", lambda v: v is None or (
            isinstance(v, dict) and isinstance(v.get("weights"), list) and len(v["weights"]) == 4
            and all(_is_number(w) for w in v["weights"])), "must be null or an object with 4 numeric weights",
                 required=False)
        return meta

    def onnx_shapes(self, name: str, f: str, meta: dict) -> None:
        """The ONNX file's input ``image [N, 3, S, S]`` and output ``output`` agree with ``meta``."""
        rt = ort()
        try:
            so = rt.SessionOptions()
            so.log_severity_level = 3
            sess = rt.InferenceSession(f, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors (InvalidProtobuf, Fail, ...)
            raise CheckpointError(f"{f}: not a readable ONNX model ({_first_line(e)}); export the model again "
                                  f"(landmarks export)") from None
        ins, outs = sess.get_inputs(), sess.get_outputs()
        s = meta["crop_size"]
        if len(ins) != 1 or ins[0].name != "image" or not _dims_match(ins[0].shape, [None, 3, s, s]):
            got = [(i.name, i.shape) for i in ins]
            raise CheckpointError(f"{f}: input {_show(got)} does not agree with {self.json_path} "
                                  f"(parts.{name}.meta.crop_size {s}: image [N, 3, {s}, {s}]); export the model "
                                  f"again (landmarks export)")
        if meta.get("head") == codecs.HEAD and name == "localizer":
            want, what = [None, 4, s // codecs.STRIDE, s // codecs.STRIDE], f"[N, 4, {s // codecs.STRIDE}, " \
                f"{s // codecs.STRIDE}] (parts.{name}.meta.crop_size {s})"
        else:
            k = meta["num_points"]
            want, what = [None, k, 2], f"[N, {k}, 2] (parts.{name}.meta.num_points {k})"
        if len(outs) != 1 or outs[0].name != "output" or not _dims_match(outs[0].shape, want):
            got = [(o.name, o.shape) for o in outs]
            raise CheckpointError(f"{f}: output {_show(got)} does not agree with {self.json_path}: "
                                  f"output {what} expected; export the model again (landmarks export)")


def _dims_match(shape, want) -> bool:
    """An ONNX shape against ``want`` (``None``: any); a named (symbolic) dimension matches anything."""
    if shape is None or len(shape) != len(want):
        return False
    return all(w is None or not isinstance(d, int) or d == w for d, w in zip(shape, want))


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(e).__name__}: {text}"


def check_export(doc, path) -> None:
    """Check an export's ``model.json`` (already parsed) against its schema, before any of it is used.

    The inference settings: ``tta_flip`` bool, ``refine_steps`` an integer ``0..MAX_REFINE_STEPS``, ``tta_scales``
    positive numbers. Each part's ``meta``: ``crop_size`` a positive integer (pixels; a multiple of
    ``codecs.STRIDE`` for the face-box localizer), ``num_points`` a positive integer, ``input_mean`` /
    ``input_std`` 3 finite numbers (std above 0), ``normalize_targets`` bool, ``flip_perm`` null or a permutation of
    ``range(num_points)``, ``flip_unmatched`` point indices, ``crop_mode`` one of ``geometry.CROP_MODES``,
    ``face_scale`` a positive number; the ``face`` part is required, and a ``face`` crop mode needs the localizer.
    Each part's ``file`` is a plain file name inside the folder.

    Raises:
        checkpoint.CheckpointError: one line naming ``model.json``, the key and the value.
    """
    sc = _Schema(os.path.join(os.fspath(path), MODEL_JSON))
    sc.inference(doc)
    parts = sc.get(doc, "parts", "parts", lambda v: isinstance(v, dict), "must be an object")
    sc.get(doc, "files", "files", lambda v: v is None or (isinstance(v, dict) and all(
        isinstance(x, dict) and _is_int(x.get("size")) and isinstance(x.get("sha256"), str) for x in v.values())),
        "must map each file to its size and sha256", required=False)
    for name in PARTS:
        is_face = name == "face"
        p = sc.get(parts, name, f"parts.{name}", lambda v, f=is_face: isinstance(v, dict) or (v is None and not f),
                   "must be an object" if is_face else "must be an object or null", required=is_face)
        if p is None:
            continue
        sc.get(p, "file", f"parts.{name}.file", lambda v: isinstance(v, str) and v not in ("", ".", "..")
               and os.path.basename(v) == v and "\\" not in v, "must be a file name inside the export folder")
        sc.meta(name, p.get("meta"), is_face)
    face = parts["face"]["meta"]
    if face["crop_mode"] == "face" and parts.get("localizer") is None:
        sc.bad("parts.localizer", None, "a face model (parts.face.meta.crop_mode 'face') needs its localizer")


def read_export(path) -> dict:
    """A model dict (as ``checkpoint.load_model`` returns, with ``state_dict`` None and ``onnx`` the part's file)
    from an export folder, for ``predictor.Predictor(..., backend="onnx")``.

    ``model.json`` is checked against its schema (``check_export``) and lists every file of the export with its size
    and SHA-256 (written last); a file that differs (an export interrupted partway, or two exports mixed) is refused,
    and so is an ONNX file that onnxruntime cannot read or whose input ``image [N, 3, S, S]`` (``S`` the part's
    ``crop_size``) or output (``[N, K, 2]``, ``K`` its ``num_points``; ``[N, 4, S / 16, S / 16]`` for the face-box
    localizer) disagrees with ``model.json``.

    Raises:
        FileNotFoundError: no ``model.json``, or a part's ONNX file is missing.
        checkpoint.CheckpointError: a malformed ``model.json``, of another format, a value outside the schema,
            files that do not match it, or an unreadable ONNX file (one line naming the file, key and value).
        RuntimeError: onnxruntime not installed (the message says what to install).
    """

    path = os.fspath(path)
    json_path = os.path.join(path, MODEL_JSON)
    try:
        doc = read_json(json_path)
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        where = f" (line {e.lineno} column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        raise CheckpointError(f"{json_path}: not valid JSON{where}; export the model again (landmarks export)") \
            from None
    except OSError as e:
        raise CheckpointError(f"{json_path}: cannot be read ({e.strerror or e})") from None
    if doc is None:
        raise FileNotFoundError(f"{json_path}: not an export folder (no {MODEL_JSON})")
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise CheckpointError(f"{path}: not a {EXPORT_FORMAT} export (format {fmt!r})")
    check_export(doc, path)
    model = {"kind": "model", "format": EXPORT_FORMAT, "inference": doc["inference"], "val_mse": doc.get("val_mse"),
             "source": doc.get("source")}
    sc = _Schema(json_path)
    for name in PARTS:
        p = doc["parts"].get(name)
        if p is not None:
            f = os.path.join(path, p["file"])
            if not os.path.isfile(f):
                raise FileNotFoundError(f"{f}: ONNX file of the export is missing")
            want = (doc.get("files") or {}).get(p["file"])
            if want is not None and (os.path.getsize(f) != want["size"] or sha256_file(f) != want["sha256"]):
                raise CheckpointError(f"{f}: does not match {MODEL_JSON} (an interrupted or mixed export); "
                                      f"export again (landmarks export)")
            sc.onnx_shapes(name, f, p["meta"])
            p = {"meta": p["meta"], "state_dict": None, "onnx": f}
        model[name] = p
    return model
