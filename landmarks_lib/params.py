"""One flat set of parameters shared by the notebooks, the YAML profiles in ``params/`` and the runner.

The defaults are the embedded demo (``params/demo.yaml``): synthetic data, a ResNet-18 from scratch, no download, so
each notebook opened in Jupyter runs top to bottom in minutes; ``params/cpu.yaml`` and ``params/gpu.yaml`` set the
real recipes.

Resolution order: ``DEFAULTS`` < profile file (``--params``) < ``-p NAME VALUE`` overrides. ``-p`` values of
non-text parameters are read as YAML scalars (``5`` int, ``1e-3`` float, ``true`` bool, ``null`` None); text
parameters keep the text as typed. Unknown names are errors
that list the known ones. Values derived from parameters are computed after the notebooks' ``parameters`` cell.
"""

from __future__ import annotations

import os

import yaml

# name: (default, description)
SPEC = {
    # data and folders
    "data_dir": ("", "contest-format data folder (train/, test/); empty = the embedded synthetic default"),
    "run_dir": ("runs/default", "the run folder: executed notebooks, checkpoints, metrics, submission, figures"),
    "cache_dir": ("", "folder of preprocessed caches; empty = $LANDMARKS_CACHE or ~/.cache/thousand-landmarks"),
    "synthetic_train": (240, "embedded default: number of synthetic training images"),
    "synthetic_test": (40, "embedded default: number of synthetic test images"),
    "synthetic_points": (971, "embedded default: landmarks per face"),
    "max_train_images": (0, "use at most this many training images (0 = all)"),
    "max_test_images": (0, "predict at most this many test images (0 = all; partial runs write "
                           "submission_partial.csv)"),
    "bad_rows": ("error", "landmarks.csv rows with missing/NaN values: 'error' stops, 'skip' drops and reports"),
    "val_fraction": (0.1, "share of training images held out for validation"),
    "val_split": ("auto", "'groups' (train/groups.csv), 'random', or 'auto' (groups when the file exists)"),
    # model and geometry
    "backbone": ('resnet18', "torchvision backbone: resnet18/34/50, resnext50_32x4d, mobilenet_v2, ..."),
    "pretrained": (False, "ImageNet weights through torchvision's weights API (offline via TORCH_HOME)"),
    "crop_size": (64, "crop side in pixels fed to the network"),
    "crop_mode": ("face", "'centre' (course baseline), 'letterbox' (whole image), 'face' (two-stage)"),
    "face_scale": (1.25, "face crop side over the landmarks' bounding-box longer side"),
    "coarse_crop_size": (64, "crop side of the coarse letterbox model that places face crops"),
    "coarse_epochs": (16, "epochs of the coarse model (crop_mode 'face' only)"),
    "input_norm": ("weights", "'weights' (the backbone weights' mean/std, ImageNet) or 'half' (mean = std = 0.5)"),
    "normalize_targets": (True, "regress coordinates divided by the crop size, head bias at the mean shape"),
    "dropout": (0.0, "dropout before the regression head"),
    "head": ("linear", "'linear' (pooled features), 'spatial' (the feature grid, flattened) or 'softargmax'"),
    # optimisation
    "epochs": (12, "training epochs"),
    "batch_size": (32, "images per optimisation step"),
    "lr": (1e-3, "learning rate of the training stage"),
    "optimizer": ("adamw", "adam, adamw or sgd"),
    "amsgrad": (False, "AMSGrad variant for adam/adamw"),
    "weight_decay": (1e-4, "weight decay"),
    "scheduler": ("cosine", "plateau, cosine, cosine_restarts, onecycle or none"),
    "plateau_factor": (0.25, "ReduceLROnPlateau factor"),
    "plateau_patience": (4, "ReduceLROnPlateau patience in epochs"),
    "restart_epochs": (5, "first cycle length of cosine_restarts, in epochs"),
    "warmup_epochs": (0.5, "linear warm-up at the start of cosine schedules, in epochs"),
    "loss": ("smooth_l1", "mse, l1, smooth_l1 or wing"),
    "grad_clip": (0.0, "clip the gradient norm to this value (0 = off)"),
    "time_budget_min": (0.0, "stop a training stage after this many minutes (0 = off)"),
    # finetuning and label noise
    "finetune_epochs": (2, "epochs of the finetune stage (0 = skip)"),
    "finetune_lr": (1e-4, "learning rate of the finetune stage"),
    "noise_action": ("drop", "what finetuning does with flagged noisy labels: keep, drop or downweight"),
    "noise_threshold": (6.0, "flag a label when its error exceeds median + threshold * MAD of all errors"),
    # augmentation and TTA
    "augment": (True, "geometric and photometric augmentation while training"),
    "rotate_deg": (10.0, "max rotation, degrees"),
    "scale_jitter": (0.15, "max relative scale change"),
    "translate_frac": (0.1, "max translation, share of the crop"),
    "flip": (True, "horizontal flips with the mirror permutation estimated from the data"),
    "photometric": (0.2, "strength of brightness/contrast/saturation jitter (0 = off)"),
    "cache_margin": (0.125, "extra border kept in the cache around each crop, share of the crop, for augmentation"),
    "tta_flip": (True, "average predictions on the image and its mirror"),
    "refine_steps": (1, "face crops: how often the face model re-places its own crop at inference"),
    "tta_scales": ("1.0", "face crops: comma-separated crop scales (times face_scale) of the last pass, averaged"),
    # runtime
    "seed": (0, "random seed"),
    "device": ("auto", "auto, cpu, cuda or mps"),
    "num_workers": (-1, "DataLoader workers (-1 = chosen for the device)"),
    "threads": (0, "torch CPU threads (0 = all cores)"),
    "amp": (True, "bf16 autocast on CUDA (ignored on CPU)"),
    "channels_last": (True, "channels-last memory format for training (CUDA and CPU)"),
    "num_figures": (8, "images per gallery figure"),
    "submission_decimals": (2, "decimals of submission coordinates (0 = integers, halves up)"),
    "ensemble_runs": ("", "comma-separated run folders whose predictions are averaged into this run's submission"),
}

DEFAULTS = {k: v[0] for k, v in SPEC.items()}

# Parameters the trained models do not depend on: where a run reads its caches and writes, on what and how fast it
# runs, what it shows, and what it predicts and submits after training.
RUNTIME_PARAMS = ("run_dir", "device", "num_workers", "num_figures", "ensemble_runs", "max_test_images", "threads",
                  "cache_dir")


class ParamError(ValueError):
    """An unknown parameter name or a value of the wrong type."""


def parse_scalar(text: str):
    """Read ``-p`` text as a YAML scalar: ``5`` -> 5, ``1e-3`` -> 0.001, ``true`` -> True, ``null`` -> None,
    otherwise the text itself (YAML 1.1 would read ``1e-3`` as text; we accept it as a float)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in "eE.") and v.strip() == text.strip() else v
        except ValueError:
            return v
    if isinstance(v, (dict, list)):
        return text
    return v


def _check_type(name, value):
    default = DEFAULTS[name]
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamError(f"parameter {name!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ParamError(f"parameter {name!r} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(f"parameter {name!r} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        return str(value)
    return value


def check_names(names) -> None:
    """Raise ``ParamError`` naming any unknown parameter and listing the known ones."""
    unknown = [n for n in names if n not in SPEC]
    if unknown:
        raise ParamError(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(SPEC))}")


def load_profile(path) -> dict:
    """Read a YAML profile (a flat mapping of parameter names to values); names are checked."""
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise ParamError(f"{path}: a profile must be a mapping of parameter names to values")
    check_names(d)
    return d


def resolve(profile: str | os.PathLike | None = None, overrides=None, **kwargs) -> dict:
    """Resolve parameters: defaults < profile file < ``overrides`` (a dict or ``(name, text)`` pairs from ``-p``,
    text read by ``parse_scalar``) < keyword arguments.

    Returns:
        a new dict with every name in ``SPEC``, values type-checked against the defaults.
    Raises:
        ParamError: unknown name or wrong type.
    """
    out = dict(DEFAULTS)
    if profile:
        out.update(load_profile(profile))
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else overrides
        for name, value in items:
            check_names([name])
            if isinstance(value, str) and not isinstance(DEFAULTS[name], str):
                value = parse_scalar(value)  # text parameters keep the text as typed ("0123" stays "0123")
            out[name] = value
    check_names(kwargs)
    out.update(kwargs)
    return {k: _check_type(k, v) for k, v in out.items()}


def training_params(params: dict, base=None) -> dict:
    """The parameters a run's trained models depend on: every entry of ``params`` but ``RUNTIME_PARAMS``, with a
    non-empty ``data_dir`` as its real absolute path (``~`` expanded, taken relative to ``base``, default the current
    directory, links resolved: ``os.path.realpath``), so one folder spelled relative, absolute or through a link
    gives equal values, and two folders differ. An empty ``data_dir`` stays empty."""
    out = {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}
    if out.get("data_dir"):
        out["data_dir"] = os.path.realpath(os.path.join(base or os.getcwd(), os.path.expanduser(str(out["data_dir"]))))
    return out


def default_cache_dir(params: dict | None = None) -> str:
    """The cache folder: ``params['cache_dir']`` if set, else ``$LANDMARKS_CACHE``, else
    ``~/.cache/thousand-landmarks``."""
    if params and params.get("cache_dir"):
        return os.path.expanduser(str(params["cache_dir"]))
    return os.path.expanduser(os.environ.get("LANDMARKS_CACHE", "~/.cache/thousand-landmarks"))


def dump(params: dict, path) -> None:
    """Write resolved parameters as YAML, atomically."""
    from .io import atomic_open

    with atomic_open(path, "w") as f:
        yaml.safe_dump(dict(params), f, sort_keys=True)
