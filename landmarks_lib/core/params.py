"""The parameter spec and its one resolver, shared by the notebooks, the YAML profiles in ``params/``, the runner
(``landmarks_lib.pipeline``), ``landmarks_lib.train`` and the benchmarks.

Each entry of ``SPEC`` (a ``Param``) has a name, a type (``bool``, ``int``, ``float`` or ``str``), a default, a help
text, allowed choices or a range, and a **scope**, the part of a run that reads it:

- ``data``: which images and labels, and the split (``seed`` too: it draws the split and every random draw);
- ``localizer``: the face localizer stage, which places the face crop;
- ``train``: the face model's geometry, optimisation and augmentation (the ``train`` stage; ``finetune`` continues
  from it, so it reads this scope too);
- ``finetune``: label-noise finding and the finetune stage;
- ``inference``: test-time settings, ensembles and the submission;
- ``figures``: what the figures show;
- ``runtime``: where and how fast a run works (folders, device, threads); it may change freely on resume.

The defaults are the embedded demo (``params/demo.yaml``, a test checks it), so each notebook opened in Jupyter runs
top to bottom in minutes. ``resolve`` applies, in order: spec defaults < the run's ``params.yaml`` if it exists, else
the profile file < overrides (``-p NAME VALUE``, a notebook's ``overrides = {...}``, papermill-injected names) <
``data_dir`` / ``run_dir``. Every value is typed and checked by the spec on every resolve (YAML files and ``-p`` text
alike: ``1e-3`` is a number; a text parameter keeps its text as written: ``007``, ``0123``, ``1:30``, ``no``), so a
bad value is refused at the start with ``ParamError`` (exit status 2 on the command line).

``landmarks params`` lists every parameter with its default, scope and help (``--markdown``: the table of
docs/parameters.md).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from .files import MARKER, atomic_open

SCOPES = ("data", "localizer", "train", "finetune", "inference", "figures", "runtime")

CHOICES_BAD_ROWS = ("error", "skip")


class ParamError(ValueError):
    """An unknown parameter name, a value of the wrong type, or a value outside its choices or range."""


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` is ``bool``, ``int``, ``float`` or ``str``; ``choices`` (text) or ``low``/``high``
    (inclusive numeric range) restrict it; ``check`` names an extra check in ``_CHECKS``."""

    name: str
    default: object
    scope: str
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    check: str | None = None

    @property
    def kind(self) -> type:
        return type(self.default)


def _p(name, default, scope, help, **kw) -> Param:
    return Param(name, default, scope, help, **kw)


_SPEC = [
    # data
    _p("data_dir", "", "data", "data folder: the contest's layout (train/, test/), a folder of images with iBUG .pts "
                               "files, a WFLW annotation file or a COCO keypoints JSON (docs/data.md); empty = the "
                               "embedded synthetic default", check="data_dir"),
    _p("data_format", "auto", "data", "the format of data_dir: 'auto' (detected), 'contest', 'pts', 'wflw', 'coco'",
       choices=("auto", "contest", "pts", "wflw", "coco")),
    _p("synthetic_train", 240, "data", "embedded default: number of synthetic training images", low=2),
    _p("synthetic_test", 40, "data", "embedded default: number of synthetic test images", low=1),
    _p("synthetic_points", 971, "data", "embedded default: landmarks per face", low=8),
    _p("max_train_images", 0, "data", "use at most this many training images (0 = all)", low=0),
    _p("bad_rows", "error", "data", "landmarks.csv rows with missing/NaN values: 'error' stops, 'skip' drops and "
                                    "reports", choices=CHOICES_BAD_ROWS),
    _p("val_fraction", 0.1, "data", "share of training images held out for validation", low=0.0, high=0.9),
    _p("val_split", "auto", "data", "'groups' (train/groups.csv), 'random', or 'auto' (groups when the file exists)",
       choices=("auto", "groups", "random")),
    _p("seed", 0, "data", "random seed: the split and every random draw of training", low=0),
    # localizer
    _p("localizer_backbone", "resnet18", "localizer", "torchvision backbone of the face localizer",
       check="backbone"),
    _p("localizer_pretrained", False, "localizer", "ImageNet weights for the localizer's backbone"),
    _p("localizer_head", "facebox", "localizer", "'facebox': a heatmap detector of face boxes trained on re-framed "
                                                 "images; 'landmarks': the older global regression of all points",
       choices=("facebox", "landmarks")),
    _p("localizer_crop_size", 64, "localizer", "side in pixels of the letterboxed whole image the localizer sees "
                                               "(a multiple of 16)", low=16, high=1024,
       check="localizer_size"),
    _p("localizer_epochs", 16, "localizer", "epochs of the localizer stage (crop_mode 'face' only)", low=0),
    _p("localizer_max_images", 0, "localizer", "the localizer stage trains and validates on a seeded sample of at "
                                               "most this many images, each on its side of the split (0 = all): one "
                                               "face box per image needs far fewer than 971 points, and its "
                                               "letterbox cache costs crop_size^2 x 3 bytes per image", low=0),
    _p("localizer_batch_size", 32, "localizer", "images per optimisation step of the localizer", low=1),
    _p("localizer_lr", 1e-3, "localizer", "learning rate of the localizer stage", low=0.0),
    _p("localizer_warmup_epochs", 0.5, "localizer", "linear warm-up of the localizer's learning rate, in epochs",
       low=0.0),
    # train: the face model
    _p("backbone", "resnet18", "train", "torchvision backbone: resnet18/34/50, resnext50_32x4d, mobilenet_v2, ...",
       check="backbone"),
    _p("pretrained", False, "train", "ImageNet weights through torchvision's weights API (offline via TORCH_HOME)"),
    _p("crop_size", 64, "train", "crop side in pixels fed to the network", low=16, high=1024),
    _p("crop_mode", "face", "train", "'center' (course baseline), 'letterbox' (whole image), 'face' (two-stage)",
       choices=("center", "letterbox", "face")),
    _p("face_scale", 1.25, "train", "face crop side over the landmarks' bounding-box longer side", low=0.5,
       high=4.0),
    _p("input_norm", "weights", "train", "'weights' (the backbone weights' mean/std, ImageNet) or 'half' (mean = "
                                         "std = 0.5)", choices=("weights", "half")),
    _p("normalize_targets", True, "train", "regress coordinates divided by the crop size, head bias at the mean "
                                           "shape"),
    _p("dropout", 0.0, "train", "dropout before the regression head", low=0.0, high=0.95),
    _p("head", "linear", "train", "'linear' (pooled features), 'spatial' (the feature grid, flattened) or "
                                  "'softargmax'", choices=("linear", "spatial", "softargmax")),
    _p("epochs", 12, "train", "training epochs", low=0),
    _p("batch_size", 32, "train", "images per optimisation step", low=1),
    _p("lr", 1e-3, "train", "learning rate of the training stage", low=0.0),
    _p("optimizer", "adamw", "train", "adam, adamw or sgd", choices=("adam", "adamw", "sgd")),
    _p("amsgrad", False, "train", "AMSGrad variant for adam/adamw"),
    _p("weight_decay", 1e-4, "train", "weight decay", low=0.0),
    _p("scheduler", "cosine", "train", "plateau, cosine, cosine_restarts, onecycle or none",
       choices=("plateau", "cosine", "cosine_restarts", "onecycle", "none")),
    _p("plateau_factor", 0.25, "train", "ReduceLROnPlateau factor", low=0.0, high=1.0),
    _p("plateau_patience", 4, "train", "ReduceLROnPlateau patience in epochs", low=0),
    _p("restart_epochs", 5, "train", "first cycle length of cosine_restarts, in epochs", low=0.01),
    _p("warmup_epochs", 0.5, "train", "linear warm-up at the start of cosine schedules, in epochs", low=0.0),
    _p("loss", "smooth_l1", "train", "mse, l1, smooth_l1 or wing", choices=("mse", "l1", "smooth_l1", "wing")),
    _p("grad_clip", 0.0, "train", "clip the gradient norm to this value (0 = off)", low=0.0),
    _p("augment", True, "train", "geometric and photometric augmentation while training"),
    _p("rotate_deg", 10.0, "train", "max rotation, degrees", low=0.0, high=180.0),
    _p("scale_jitter", 0.15, "train", "max relative scale change", low=0.0, high=0.9),
    _p("translate_frac", 0.1, "train", "max translation, share of the crop", low=0.0, high=0.5),
    _p("flip", True, "train", "horizontal flips with the mirror permutation estimated from the data"),
    _p("photometric", 0.2, "train", "strength of brightness/contrast/saturation jitter (0 = off)", low=0.0,
       high=1.0),
    _p("cache_margin", 0.125, "train", "extra border kept in the cache around each crop, share of the crop, for "
                                       "augmentation", low=0.0, high=1.0),
    # finetune and label noise
    _p("finetune_epochs", 2, "finetune", "epochs of the finetune stage (0 = skip)", low=0),
    _p("finetune_lr", 1e-4, "finetune", "learning rate of the finetune stage", low=0.0),
    _p("noise_action", "drop", "finetune", "what finetuning does with flagged noisy labels: keep, drop or "
                                           "downweight", choices=("keep", "drop", "downweight")),
    _p("noise_threshold", 6.0, "finetune", "flag a label when its error exceeds median + threshold * MAD of all "
                                           "errors", low=0.0),
    # inference and the submission
    _p("tta_flip", True, "inference", "average predictions on the image and its mirror"),
    _p("refine_steps", 1, "inference", "face crops: how often the face model re-places its own crop at inference",
       low=0, high=10),
    _p("tta_scales", "1.0", "inference", "face crops: comma-separated crop scales (times face_scale) of the last "
                                         "pass, averaged", check="scales"),
    _p("max_test_images", 0, "inference", "predict at most this many test images (0 = all; partial runs write "
                                          "submission_partial.csv)", low=0),
    _p("submission_decimals", 2, "inference", "decimals of submission coordinates (0 = integers, halves up)",
       low=0, high=6),
    _p("ensemble_runs", "", "inference", "comma-separated run folders whose final models are averaged with this "
                                         "run's", check="runs"),
    # figures
    _p("num_figures", 8, "figures", "images per gallery figure", low=1, high=64),
    # runtime
    _p("run_dir", "runs/default", "runtime", "the run folder: executed notebooks, checkpoints, metrics, submission, "
                                             "figures"),
    _p("cache_dir", "", "runtime", "folder of preprocessed caches; empty = $LANDMARKS_CACHE or "
                                   "~/.cache/thousand-landmarks"),
    _p("device", "auto", "runtime", "auto, cpu, cuda, cuda:N or mps", check="device"),
    _p("inference_backend", "auto", "runtime", "networks at evaluation, noise finding and test prediction: torch, onnx "
                                               "(onnxruntime) or auto (onnx on the CPU when onnxruntime is "
                                               "installed, else torch); the points agree within 2e-3 px",
       choices=("auto", "torch", "onnx")),
    _p("num_workers", -1, "runtime", "DataLoader workers (-1 = chosen for the device)", low=-1),
    _p("threads", 1, "runtime", "torch CPU threads (0 = all cores)", low=0),
    _p("allow_links_outside", False, "runtime", "read tables and images that are symbolic links resolving outside the "
       "data folder (by default the validator reports them as fatal and the loaders refuse them); a data folder or "
       "images folder that is itself a link is always fine"),
    _p("adaptive_threads", False, "runtime", "while other processes keep the CPU busy, let OpenMP's waiting threads "
                                             "sleep (for a CPU shared with other jobs)"),
    _p("amp", True, "runtime", "bf16 autocast on CUDA (ignored on CPU)"),
    _p("channels_last", True, "runtime", "channels-last memory format for training (CUDA and CPU)"),
    _p("time_budget_min", 0.0, "runtime", "stop a training stage after this many minutes (0 = off)", low=0.0),
]

SPEC: dict[str, Param] = {p.name: p for p in _SPEC}
DEFAULTS = {k: p.default for k, p in SPEC.items()}
PATH_PARAMS = ("data_dir", "run_dir", "cache_dir")
RUN_PARAMS_FILE = "params.yaml"


def names_in(*scopes) -> list:
    """The parameter names of the given scopes, in spec order.

    Raises:
        ParamError: an unknown scope.
    """
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ParamError(f"unknown scope(s) {bad}; scopes are {', '.join(SCOPES)}")
    return [k for k, p in SPEC.items() if p.scope in scopes]


def check_names(names) -> None:
    """Raise ``ParamError`` naming any unknown parameter and listing the known ones."""
    unknown = [n for n in names if n not in SPEC]
    if unknown:
        raise ParamError(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(SPEC))}")


# ------------------------------------------------------------------------------------------------- typing
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _from_text(p: Param, text: str):
    """Text (YAML scalar as written, or ``-p`` text) -> a value of ``p.kind``; text parameters keep the text."""
    t = text.strip()
    if p.kind is str:
        return text
    if p.kind is bool:
        if t.lower() in _TRUE | _FALSE:
            return t.lower() in _TRUE
        raise ParamError(f"parameter {p.name!r} must be true or false, got {text!r}")
    if p.kind is int and re.fullmatch(r"[+-]?\d+", t.replace("_", "")):
        return int(t.replace("_", ""), 10)  # exact, whatever its size (leading zeros are decimal)
    try:
        v = float(t.replace("_", ""))
    except ValueError:
        raise ParamError(f"parameter {p.name!r} must be {'an integer' if p.kind is int else 'a number'}, "
                         f"got {text!r}") from None
    return _typed(p, v)


def _typed(p: Param, value):
    """A Python value -> ``p.kind`` (ints accepted for floats, integral floats for ints, text parsed)."""
    if isinstance(value, str):
        return _from_text(p, value)
    if p.kind is str:
        raise ParamError(f"parameter {p.name!r} is text; got {value!r} ({type(value).__name__}); quote it")
    if p.kind is bool:
        if isinstance(value, bool):
            return value
        raise ParamError(f"parameter {p.name!r} must be true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"parameter {p.name!r} must be a number, got {value!r}")
    if p.kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ParamError(f"parameter {p.name!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _check_value(p: Param, v):
    if p.choices is not None and v not in p.choices:
        raise ParamError(f"parameter {p.name!r} is {v!r}; choose one of {', '.join(map(str, p.choices))}")
    if p.kind in (int, float):
        if not math.isfinite(v):
            raise ParamError(f"parameter {p.name!r} must be finite, got {v!r}")
        if (p.low is not None and v < p.low) or (p.high is not None and v > p.high):
            rng = f"[{p.low if p.low is not None else '-inf'}, {p.high if p.high is not None else 'inf'}]"
            raise ParamError(f"parameter {p.name!r} is {v!r}, outside its range {rng}")
    if p.check:
        _CHECKS[p.check](p, v)
    return v


def _check_backbone(p, v):
    import torchvision

    if v not in BACKBONES and v not in torchvision.models.list_models(torchvision.models):
        raise ParamError(f"parameter {p.name!r} is {v!r}, not a torchvision classification model; tested: "
                         f"{', '.join(BACKBONES)}")


def _check_scales(p, v):
    try:
        parse_scales(v)
    except ValueError as e:
        raise ParamError(f"parameter {p.name!r}: {e}") from None


def _check_device(p, v):
    head, _, idx = v.partition(":")
    if head not in ("auto", "cpu", "cuda", "mps") or (idx and (head != "cuda" or not idx.isdigit())):
        raise ParamError(f"parameter {p.name!r} is {v!r}; choose auto, cpu, cuda, cuda:N or mps")


def _check_data_dir(p, v):
    if v and not os.path.isdir(os.path.expanduser(v)):
        raise ParamError(f"parameter 'data_dir': {v}: no such folder; data_dir must be a folder holding the contest "
                         f"layout (train/images, train/landmarks.csv, test/images, test/test_points.csv) or labelled "
                         f"images in another format (docs/data.md)")


def _check_runs(p, v):

    for r in split_list(v):
        if not os.path.isfile(os.path.join(os.path.expanduser(r), MARKER)):
            raise ParamError(f"parameter 'ensemble_runs': {r}: not a run folder (no {MARKER})")


def _check_localizer_size(p, v):
    if v % 16:
        raise ParamError(f"parameter {p.name!r} is {v!r}; the localizer's grid needs a multiple of 16")


_CHECKS = {"backbone": _check_backbone, "scales": _check_scales, "device": _check_device,
           "data_dir": _check_data_dir, "runs": _check_runs, "localizer_size": _check_localizer_size}


def parse_scales(text) -> tuple:
    """``"0.92, 1.0"`` (or a number, or a sequence of numbers) -> ``(0.92, 1.0)``: crop scales of scale TTA.

    Raises:
        ValueError: an empty list, or a value that is not a positive finite number.
    """
    items = [text] if isinstance(text, (int, float)) else (
        str(text).replace(";", ",").split(",") if isinstance(text, str) else list(text))
    out = []
    for v in items:
        if isinstance(v, str) and not v.strip():
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"crop scale {v!r} is not a number (in {text!r})") from None
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"crop scale {v!r} must be a positive number (in {text!r})")
        out.append(f)
    if not out:
        raise ValueError(f"no crop scale in {text!r}")
    return tuple(out)


def split_list(text) -> list:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (comma-separated text parameters such as ``ensemble_runs``)."""
    return [s.strip() for s in str(text or "").split(",") if s.strip()]


def coerce(name: str, value):
    """Type and check one value by the spec (text is parsed for non-text parameters).

    Raises:
        ParamError: unknown name, wrong type, outside its choices or range, or a failed check (a path that must
            exist, a backbone torchvision does not have, ...).
    """
    check_names([name])
    p = SPEC[name]
    return _check_value(p, _typed(p, value))


# ------------------------------------------------------------------------------------------------- files
def read_yaml_text(path) -> dict:
    """A flat YAML mapping with every scalar as the text written in the file (so the spec, not YAML 1.1, types it:
    ``0123`` stays ``"0123"`` for a text parameter, ``1e-3`` is a number for a numeric one). A value written as
    ``null``, ``~`` or nothing is the empty text.

    Raises:
        ParamError: not a mapping of names to scalars (names the file and line), or YAML syntax errors.
    """
    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.compose(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ParamError(f"{path}: not readable as YAML ({e})") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ParamError(f"{path}: a profile must be a mapping of parameter names to values")
    out = {}
    for k, v in node.value:
        if not isinstance(v, yaml.ScalarNode) or not isinstance(k, yaml.ScalarNode):
            raise ParamError(f"{path}:{k.start_mark.line + 1}: {k.value!r} must be a single value")
        if k.value in out:
            raise ParamError(f"{path}:{k.start_mark.line + 1}: {k.value!r} is given twice")
        plain_null = v.style is None and v.value in ("", "~", "null", "Null", "NULL")
        out[k.value] = "" if plain_null else v.value
    return out


def load_profile(path) -> dict:
    """Read a YAML profile (or a run's ``params.yaml``): a flat mapping of parameter names to values, typed and
    checked by the spec.

    Raises:
        ParamError: unknown names (listing the known ones), bad values (naming the file), or a missing file.
    """
    if not os.path.isfile(path):
        raise ParamError(f"{path}: parameter profile not found")
    raw = read_yaml_text(path)
    unknown = [k for k in raw if k not in SPEC]
    if unknown:
        close = {k: difflib.get_close_matches(k, SPEC, 1) for k in unknown}
        hint = "; ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items())
        raise ParamError(f"{path}: unknown parameter(s) {hint}; `python -m landmarks_lib.params` lists them")
    out = {}
    for k, v in raw.items():
        try:
            out[k] = _check_value(SPEC[k], _typed(SPEC[k], v)) if SPEC[k].check in (None, "scales") else \
                _typed(SPEC[k], v)
        except ParamError as e:
            raise ParamError(f"{path}: {e}") from None
    return out


def read_values(path) -> dict:
    """A parameter file for reading, not for running: known names typed by the spec (not checked), other names kept
    as the text written (e.g. a run folder of an earlier version). Values that do not type are kept as text too."""
    out = {}
    for k, v in read_yaml_text(path).items():
        try:
            out[k] = _typed(SPEC[k], v) if k in SPEC else v
        except ParamError:
            out[k] = v
    return out


def dump(params: Mapping, path) -> None:
    """Write parameters as YAML (every spec name, sorted), atomically; ``load_profile`` reads it back equal."""

    with atomic_open(path, "w") as f:
        yaml.safe_dump({k: params[k] for k in sorted(params) if k in SPEC}, f, sort_keys=True)


# ------------------------------------------------------------------------------------------------- resolve
def _absolute(value: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def absolute_paths(params: dict, base=None) -> dict:
    """A copy with the folder parameters (``data_dir``, ``run_dir``, ``cache_dir`` when not empty, every entry of
    ``ensemble_runs``) made absolute relative to ``base`` (default the current directory)."""
    base = os.path.abspath(base or os.getcwd())
    out = dict(params)
    for k in PATH_PARAMS:
        if out.get(k):
            out[k] = _absolute(out[k], base)
    if out.get("ensemble_runs"):
        out["ensemble_runs"] = ",".join(_absolute(r, base) for r in split_list(out["ensemble_runs"]))
    return out


def resolve(run_dir=None, profile=None, overrides=None, data_dir=None, base=None,
            use_run_params: bool = True) -> dict:
    """The one resolver: spec defaults < ``<run_dir>/params.yaml`` if it exists (and ``use_run_params``), else
    ``profile`` < ``overrides`` < ``data_dir`` / ``run_dir``.

    Args:
        run_dir: the run folder (``None`` keeps the default or what the files say).
        profile: a YAML profile path, used only for a run folder without ``params.yaml``.
        overrides: a mapping or ``(name, value)`` pairs (``-p`` text, a notebook's ``overrides`` dict, papermill's
            injected names); text is typed by the spec.
        data_dir: the data folder (``None`` keeps the resolved one).
        base: folder that relative paths count from (default the current directory); the result's folder
            parameters are absolute.
        use_run_params: read the run's ``params.yaml`` (``False``: a run started over with ``--force``).
    Returns:
        a new dict with every name in ``SPEC``, typed and checked.
    Raises:
        ParamError: unknown name, bad value, or a missing profile.
    """
    base = os.path.abspath(base or os.getcwd())
    out = dict(DEFAULTS)
    run_file = os.path.join(_absolute(run_dir, base), RUN_PARAMS_FILE) if run_dir else None
    if use_run_params and run_file and os.path.isfile(run_file):
        out.update(load_profile(run_file))
    elif profile:
        out.update(load_profile(_absolute(str(profile), base)))
    items = overrides.items() if isinstance(overrides, Mapping) else (overrides or ())
    for name, value in items:
        check_names([name])
        out[name] = _typed(SPEC[name], value)
    if data_dir is not None:
        out["data_dir"] = str(data_dir)
    if run_dir is not None:
        out["run_dir"] = str(run_dir)
    return {k: coerce(k, v) for k, v in absolute_paths(out, base).items()}


def same_value(name: str, a, b) -> bool:
    """Whether two values of parameter ``name`` are the same: ``data_dir`` by the folder it names (links resolved),
    everything else by equality."""
    if name == "data_dir" and a and b:
        return os.path.realpath(os.path.expanduser(str(a))) == os.path.realpath(os.path.expanduser(str(b)))
    return a == b


def scoped(params: Mapping, *scopes) -> dict:
    """The values of ``params`` in ``scopes``: what a stage or a notebook reads, and what its key hashes."""
    return {k: params[k] for k in names_in(*scopes)}


def default_cache_dir(params: Mapping | None = None) -> str:
    """The cache folder: ``params['cache_dir']`` if set, else ``$LANDMARKS_CACHE``, else
    ``~/.cache/thousand-landmarks``."""
    if params and params.get("cache_dir"):
        return os.path.expanduser(str(params["cache_dir"]))
    return os.path.expanduser(os.environ.get("LANDMARKS_CACHE", "~/.cache/thousand-landmarks"))


def describe() -> str:
    """Every parameter with its default, scope and help, one per line, grouped by scope (the ``__main__`` text)."""
    lines = []
    for scope in SCOPES:
        lines.append(f"[{scope}]")
        for k in names_in(scope):
            p = SPEC[k]
            extra = f" (one of {', '.join(p.choices)})" if p.choices else ""
            lines.append(f"  {k} = {p.default!r}: {p.help}{extra}")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's parameter table: one row per parameter (name, scope, default, meaning), in spec order."""
    rows = ["| name | scope | default | meaning |", "|---|---|---|---|"]
    for k, p in SPEC.items():
        default = f'"{p.default}"' if p.kind is str else str(p.default).lower() if p.kind is bool else repr(p.default)
        rows.append(f"| `{k}` | {p.scope} | `{default}` | {p.help.replace('|', '/')} |")
    return "\n".join(rows)


def main(argv=None) -> int:

    ap = argparse.ArgumentParser(prog="landmarks params",
                                 description="List every parameter with its default, scope and help.")
    ap.add_argument("--markdown", action="store_true", help="the Markdown table of docs/parameters.md instead")
    a = ap.parse_args(argv)
    print(markdown_table() if a.markdown else describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())

# torchvision is imported where a network is built (about a second: its ops pull in torch._dynamo), so that
# predicting with an ONNX export folder never imports it.

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large",
             "efficientnet_b0", "convnext_tiny")
