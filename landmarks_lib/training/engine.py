"""Training: stages, their recipes and keys, resume, one epoch, validation in original pixels, ``history.csv``.

A run trains in named *stages* (``STAGES``), each reading only the parameter scopes of ``STAGE_SCOPES``:

- ``localizer`` (``crop_mode="face"`` only; scopes ``data``, ``localizer``): a letterbox model at
  ``localizer_crop_size`` whose points place the face crop; its recipe is ``LOCALIZER_RECIPE`` plus the
  ``localizer_*`` parameters, so a change of the face model's parameters never retrains it;
- ``train`` (``data``, ``train``): the face model, ``epochs`` at ``lr``;
- ``finetune`` (``data``, ``train``, ``finetune``): continues from ``train_best`` at ``finetune_lr`` for
  ``finetune_epochs``, optionally without (or down-weighting) the labels that ``noise`` flags.

``fit`` composes the pieces as torchvision's reference scripts do: ``build`` (model, loader, optimizer, scheduler),
``resume`` (from ``<stage>_last.pt``), ``train_one_epoch``, ``evaluate``, ``save_epoch``, ``finish``. Each stage
writes ``checkpoints/<stage>_last.pt`` (everything needed to resume) after every epoch and ``<stage>_best.pt`` (the
lowest validation MSE in original pixels); when the stage ends, ``best`` is marked ``finished`` and ``last`` is
removed. The resume rule: a stage's ``scope_key`` hashes the values of its scopes (``stage_key``) and its
``data_key`` the labels and split. A finished stage with equal keys is not trained again; one with other keys is
retrained only when asked (``retrain=True``), otherwise ``StageChanged`` lists ``name: old -> new``.

Every random draw of an epoch (batch order, augmentation, dropout) is seeded from ``(seed, stage, epoch)``, so a run
killed at any moment and resumed from its last checkpoint repeats the interrupted epoch exactly and ends with the
result of an uninterrupted run (on CPU with the same thread count).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core import geometry, logs
from ..core.coords import POINT_CHUNK, PointsView, labels_to_points
from ..core.devices import select_device
from ..core.files import atomic_open, derived_seed, fingerprint
from ..core.params import SPEC, default_cache_dir, names_in, scoped
from ..data import augment, formats, reframing, symmetry
from ..data import cache as cache_mod
from ..data.loading import BatchSampler, make_loader
from ..data.tables import DataFormatError, LandmarksTable
from ..evaluation import metrics
from ..inference import passes
from ..inference.passes import predict_cache
from ..models import checkpoint, codecs, facebox, landmark
from . import cpuload
from .distributed import Context

LOG = logs.logger(__name__)

STAGES = ("localizer", "train", "finetune")
STAGE_SCOPES = {"localizer": ("data", "localizer"), "train": ("data", "train"),
                "finetune": ("data", "train", "finetune")}
HISTORY_COLUMNS = ["epoch", "stage", "train_loss", "val_mse", "lr", "time_s"]
# The localizer's fixed training recipe (its own parameters are the localizer_* ones).
LOCALIZER_RECIPE = {"crop_mode": "letterbox", "face_scale": 1.25, "input_norm": "weights",
                    "normalize_targets": True, "dropout": 0.0, "head": "linear", "optimizer": "adamw",
                    "amsgrad": False, "weight_decay": 1e-4, "scheduler": "cosine", "plateau_factor": 0.25,
                    "plateau_patience": 4, "restart_epochs": 5, "loss": "smooth_l1", "grad_clip": 0.0,
                    "augment": True, "rotate_deg": 10.0, "scale_jitter": 0.15, "translate_frac": 0.1, "flip": True,
                    "photometric": 0.2, "cache_margin": 0.125}


class StageChanged(RuntimeError):
    """A stage's checkpoint was made with other parameters or data, and retraining was not asked for."""


@dataclass
class TrainData:
    """Training landmarks with their split.

    Attributes:
        data_dir: the dataset folder; ``image_dir``: the folder the table's names are relative to (the reader's,
            ``formats.Dataset.root``: ``data_dir/train/images`` for the contest's format).
        table: ``tables.LandmarksTable`` (original pixels).
        train_idx, val_idx: ``int64`` positions in ``table``.
        split: how the split was made (``groups`` or ``random``).
    """

    data_dir: str
    image_dir: str
    table: LandmarksTable
    train_idx: np.ndarray
    val_idx: np.ndarray
    split: str
    _perm: np.ndarray | None = field(default=None, repr=False)
    _unmatched: np.ndarray | None = field(default=None, repr=False)

    @property
    def names(self):
        return self.table.names

    def points(self, idx=None) -> np.ndarray:
        """``float32 [n, K, 2]`` continuous original pixels (all images, or ``idx``): the labels of
        ``landmarks.csv`` plus ``coords.LABEL_OFFSET`` (``coords.labels_to_points``)."""
        p = self.table.points if idx is None else self.table.points[np.asarray(idx)]
        return labels_to_points(p)

    def point_view(self, idx=None) -> PointsView:
        """The same points as ``points(idx)``, converted only where indexed (``coords.PointsView``): what code that
        visits every image at contest size takes, block by block."""
        return PointsView(self.table.points, idx)

    def data_key(self, sample_weights=None) -> str:
        """A hash of what training sees of the data: the file names, the labels, the train/validation split and,
        when given, per-image ``sample_weights`` (a resume on any other is refused). Hashes the whole label table:
        about a second for the contest's 394,000 rows."""
        w = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)
        return fingerprint("\n".join(self.table.names), np.asarray(self.table.points), self.train_idx,
                           self.val_idx, w)

    def flip_perm(self) -> np.ndarray:
        """The mirror permutation estimated from (up to 2,000) training shapes; computed once."""
        if self._perm is None:
            idx = self.train_idx
            if len(idx) > 2000:
                idx = np.sort(np.random.default_rng(0).choice(idx, 2000, replace=False))
            shapes = self.points(idx)
            self._perm = symmetry.estimate_mirror_permutation(shapes)
            self._unmatched = symmetry.mirror_unmatched(shapes, self._perm)
        return self._perm

    def flip_unmatched(self) -> np.ndarray:
        """``int64`` indices of the points without a mirror partner (``symmetry.mirror_unmatched``), from the same
        shapes as ``flip_perm``."""
        self.flip_perm()
        return self._unmatched


def split_indices(names, data_dir, val_fraction: float, seed: int, mode: str = "auto", groups=None,
                  groups_path=None):
    """Seeded train/validation split.

    ``groups`` keeps every group of ``groups_path`` (default ``train/groups.csv``: same person) on one side, so
    validation faces are unseen, as in the hidden test; ``random`` splits images; ``auto`` uses groups when the file
    exists or when ``groups`` (one label per name, e.g. ``formats.photo_groups``) is given. The file wins over
    ``groups``.

    Returns:
        ``(train_idx, val_idx, mode_used)``; ``int64`` positions into ``names``, sorted.
    Raises:
        FileNotFoundError: ``mode="groups"`` without the file. ValueError: names missing from it.
    """
    n = len(names)
    rng = np.random.default_rng([int(seed), 7])
    gpath = groups_path or os.path.join(data_dir, "train", "groups.csv")
    if mode == "auto":
        mode = "groups" if os.path.exists(gpath) or groups is not None else "random"
    if val_fraction <= 0:
        return np.arange(n), np.zeros(0, np.int64), mode
    if mode == "groups":
        groups = _file_groups(gpath, names) if os.path.exists(gpath) or groups is None else np.asarray(groups)
        uniq = np.unique(groups)
        rng.shuffle(uniq)
        val, count = set(), 0
        for u in uniq:
            if count >= val_fraction * n:
                break
            val.add(u)
            count += int((groups == u).sum())
        is_val = np.array([x in val for x in groups])
    elif mode == "random":
        is_val = np.zeros(n, bool)
        is_val[rng.permutation(n)[: max(1, int(round(val_fraction * n)))]] = True
    else:
        raise ValueError(f"val_split must be auto, groups or random, got {mode!r}")
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), mode




def _file_groups(gpath, names) -> np.ndarray:
    """The group of each name from a ``groups.csv`` (tab-separated ``file_name``, ``group``).

    Raises:
        FileNotFoundError: no file. ValueError: names missing from it.
    """
    g = pd.read_csv(gpath, sep="\t", dtype={"file_name": str})
    m = dict(zip(g["file_name"], g["group"]))
    missing = [x for x in names if x not in m]
    if missing:
        raise ValueError(f"{gpath}: {len(missing)} training images have no group, e.g. {missing[0]!r}")
    return np.array([m[x] for x in names])


def load_train_data(params: dict, progress: bool = True) -> TrainData:
    """Read the labelled faces of ``data_dir`` in its format (``data_format``; ``formats.read_dataset``: the
    contest's ``train/landmarks.csv`` is parsed once into the cache folder) and split them (``split_indices``).

    Faces of one photo stay on one side of the split: the contest's ``train/groups.csv``; in the other formats a
    ``groups.csv`` in the data folder when present, else ``formats.photo_groups`` (names that differ only in a final
    ``_k``). ``max_train_images`` > 0 keeps a seeded random subset before splitting.

    Raises:
        DataFormatError: the reader's (file and line), or no image left to train on.
    """
    data_dir = params["data_dir"]
    allow = params.get("allow_links_outside", False)
    ds = formats.read_dataset(data_dir, params.get("data_format", "auto"), allow_links_outside=allow,
                              bad_rows=params["bad_rows"], cache_dir=default_cache_dir(params))
    table = ds.table
    if params["max_train_images"] and params["max_train_images"] < len(table):
        keep = np.sort(np.random.default_rng([params["seed"], 3]).choice(len(table), params["max_train_images"],
                                                                           replace=False))
        table = LandmarksTable([table.names[i] for i in keep], np.asarray(table.points[keep]), table.skipped)
    groups, gpath = None, None
    if ds.format != "contest":
        gpath = os.path.join(data_dir, "groups.csv")
        groups = formats.photo_groups(table.names)
    tr, va, mode = split_indices(table.names, data_dir, params["val_fraction"], params["seed"], params["val_split"],
                                 groups=groups, groups_path=gpath)
    if not len(tr):
        raise DataFormatError(f"{ds.source}: {len(table)} usable row(s) leave no image to train on after a "
                              f"validation split of {params['val_fraction']}")
    return TrainData(data_dir, ds.root, table, tr, va, mode)


def stage_params(params: dict, stage: str) -> dict:
    """The values of the scopes ``stage`` reads (``STAGE_SCOPES``).

    Raises:
        ValueError: an unknown stage.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return scoped(params, *STAGE_SCOPES[stage])


def stage_recipe(params: dict, stage: str) -> dict:
    """What a stage's training reads, as one flat dict in the face model's names (``backbone``, ``crop_size``,
    ``epochs``, ``lr``, ``augment``, ...), built from ``stage_params`` alone: the localizer's from
    ``LOCALIZER_RECIPE`` and the ``localizer_*`` values, the finetune stage's with ``finetune_epochs`` /
    ``finetune_lr`` as its ``epochs`` / ``lr``."""
    sp = stage_params(params, stage)
    if stage == "localizer":
        r = dict(LOCALIZER_RECIPE, **{k[len("localizer_"):]: sp[k] for k in names_in("localizer")})
        if r["head"] == codecs.HEAD:  # re-framed on the fly from the whole letterboxed image
            r["cache_margin"] = 0.0
        else:  # "landmarks": the face model's linear regression of every point on the letterbox
            r["head"] = "linear"
    else:
        r = {k: sp[k] for k in names_in("train")}
        if stage == "finetune":
            r.update(epochs=sp["finetune_epochs"], lr=sp["finetune_lr"])
    r.update(stage=stage, seed=sp["seed"])
    return r


def stage_data(params: dict, data: TrainData, stage: str) -> TrainData:
    """The images a stage trains and validates on: ``data`` itself, except for the localizer under
    ``localizer_max_images`` (a seeded sample of that many rows, ``[seed, 17]``, sorted, each row on its side of
    ``data``'s split; the mirror permutation stays the one of ``data``)."""
    cap = int(params.get("localizer_max_images") or 0) if stage == "localizer" else 0
    if not cap or cap >= len(data.names):
        return data
    keep = np.sort(np.random.default_rng([int(params["seed"]), 17]).choice(len(data.names), cap, replace=False))
    pos = -np.ones(len(data.names), np.int64)
    pos[keep] = np.arange(len(keep))
    tr, va = pos[data.train_idx], pos[data.val_idx]
    lines = None if data.table.lines is None else np.asarray(data.table.lines)[keep]
    table = LandmarksTable([data.names[i] for i in keep], np.asarray(data.table.points[keep]), [], lines)
    return TrainData(data.data_dir, data.image_dir, table, tr[tr >= 0], va[va >= 0], data.split,
                     data.flip_perm(), data.flip_unmatched())


def stage_key(params: dict, stage: str) -> str:
    """The fingerprint of ``stage_params`` (``data_dir`` left out: the data's content counts, through
    ``TrainData.data_key``, not where it lies), so only a change in the scopes a stage reads changes its key."""
    sp = {k: v for k, v in stage_params(params, stage).items() if k != "data_dir"}
    return fingerprint(stage, sp)


def changed_names(old: dict, new: dict) -> list:
    """The names whose values differ between two parameter sets (``data_dir`` left out: the data's content counts,
    through ``TrainData.data_key``), sorted."""
    return [k for k in sorted(set(old) | set(new)) if k != "data_dir" and old.get(k) != new.get(k)]


def changed(old: dict, new: dict) -> list:
    """``["name: old -> new", ...]`` for the names whose values differ (``changed_names``)."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed_names(old, new)]


def stages_reading(names) -> list:
    """The stages whose scopes hold any of the parameter ``names``, in ``STAGES`` order."""
    scopes = {SPEC[k].scope for k in names if k in SPEC}
    return [s for s in STAGES if scopes & set(STAGE_SCOPES[s])]


def apply_threads(params: dict) -> int:
    """Set torch's CPU thread count for this process to ``params["threads"]`` exactly as set (0 leaves torch's
    default: all cores, or ``OMP_NUM_THREADS``), so training, prediction, noise finding and evaluation use the same
    count. With ``params["adaptive_threads"]`` true, also start ``cpuload.watch`` for it (OpenMP's waiting threads
    sleep while other processes keep the CPU busy; no result changes); otherwise no watcher runs and
    ``cpuload.STATE`` records why. Returns the count in use."""
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    n = torch.get_num_threads()
    cpuload.watch(n, adaptive=bool(params.get("adaptive_threads")))
    return n


def landmark_loss(pred_px: torch.Tensor, target_px: torch.Tensor, kind: str, weights=None) -> torch.Tensor:
    """Loss between ``[B, K, 2]`` predictions and targets in crop pixels, averaged per sample then weighted.

    ``mse``, ``l1``, ``smooth_l1`` (Huber with beta = 1 px) or ``wing`` (Feng et al., "Wing loss for robust facial
    landmark localisation with CNNs", CVPR 2018; w = 10 px, epsilon = 2 px) per coordinate. NaN targets (points
    whose position is unknown, e.g. unmatched points of a flipped sample) are left out of their sample's mean and
    give no gradient.
    """
    known = torch.isfinite(target_px)
    masked = not bool(known.all())
    if masked:
        target_px = torch.where(known, target_px, pred_px.detach())
    d = pred_px - target_px
    if kind == "mse":
        e = d ** 2
    elif kind == "l1":
        e = d.abs()
    elif kind == "smooth_l1":
        e = F.smooth_l1_loss(pred_px, target_px, reduction="none", beta=1.0)
    elif kind == "wing":
        w, eps = 10.0, 2.0
        c = w - w * math.log(1 + w / eps)
        a = d.abs()
        e = torch.where(a < w, w * torch.log1p(a / eps), a - c)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected mse, l1, smooth_l1 or wing")
    if masked:
        per = (e * known).flatten(1).sum(1) / known.flatten(1).sum(1).clamp_min(1)
    else:
        per = e.flatten(1).mean(1)
    if weights is None:
        return per.mean()
    w = weights.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1e-8)



def make_optimizer(recipe: dict, model, lr: float):
    """Adam / AdamW / SGD (momentum 0.9, Nesterov) with ``weight_decay`` (AdamW decoupled)."""
    kind, wd = recipe["optimizer"], recipe["weight_decay"]
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd, amsgrad=recipe["amsgrad"])
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, amsgrad=recipe["amsgrad"])
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    raise ValueError(f"unknown optimizer {kind!r}; expected adam, adamw or sgd")


def make_scheduler(recipe: dict, optimizer, lr: float, epochs: int, steps_per_epoch: int):
    """``(scheduler, per_step)``. ``cosine``: ``CosineAnnealingLR`` per step after a ``LinearLR`` warm-up of
    ``warmup_epochs`` (``SequentialLR``; the warm-up's step ``s`` runs at ``(s + 1) / warm`` of the rate);
    ``onecycle`` per step; cosine warm restarts (SGDR) per step with a first cycle of ``restart_epochs``;
    ``plateau`` (ReduceLROnPlateau) per epoch on validation MSE; ``none`` constant."""
    kind = recipe["scheduler"]
    sched = torch.optim.lr_scheduler
    total = max(1, epochs * steps_per_epoch)
    if kind == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=recipe["plateau_factor"],
                                       patience=recipe["plateau_patience"]), False
    if kind == "cosine":
        warm = min(int(recipe["warmup_epochs"] * steps_per_epoch), total - 1)
        cosine = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
        if warm <= 0:
            return cosine, True
        linear = sched.LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=max(1, warm - 1))
        return sched.SequentialLR(optimizer, [linear, cosine], milestones=[warm]), True
    if kind == "cosine_restarts":
        return sched.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(1, int(recipe["restart_epochs"] * steps_per_epoch)), T_mult=2), True
    if kind == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=lr, total_steps=total), True
    if kind == "none":
        return sched.LambdaLR(optimizer, lambda s: 1.0), True
    raise ValueError(f"unknown scheduler {kind!r}; expected plateau, cosine, cosine_restarts, onecycle or none")


def model_meta(recipe: dict, num_points: int, flip_perm, flip_unmatched=None) -> dict:
    """What prediction needs to rebuild and run a stage's model (stored in each checkpoint): backbone, number of
    points, crop geometry, input normalisation, target units, head, the mirror permutation and the points it cannot
    mirror (``TrainData.flip_perm``, ``TrainData.flip_unmatched``)."""
    mean, std = landmark.input_normalization(recipe["backbone"], recipe["input_norm"])
    return {"backbone": recipe["backbone"], "num_points": int(num_points), "crop_size": int(recipe["crop_size"]),
            "crop_mode": recipe["crop_mode"], "face_scale": float(recipe["face_scale"]),
            "input_mean": list(mean), "input_std": list(std), "normalize_targets": bool(recipe["normalize_targets"]),
            "dropout": float(recipe["dropout"]), "stage": recipe["stage"], "head": recipe["head"],
            "flip_perm": None if flip_perm is None else [int(v) for v in flip_perm],
            "flip_unmatched": [int(v) for v in (flip_unmatched if flip_unmatched is not None else [])]}


def write_history(run, stage: str, rows) -> None:
    """Replace ``stage``'s rows of ``history.csv`` by ``rows`` (stages in ``STAGES`` order), atomically."""
    path = run.file("history.csv")
    old = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame(columns=HISTORY_COLUMNS)
    old = old[old["stage"] != stage]
    new = pd.DataFrame([{k: r[k] for k in HISTORY_COLUMNS} for r in rows], columns=HISTORY_COLUMNS)
    df = pd.concat([old, new], ignore_index=True) if len(old) else new
    order = {s: i for i, s in enumerate(STAGES)}
    df = df.sort_values(["stage", "epoch"], key=lambda c: c.map(order) if c.name == "stage" else c, kind="stable")
    with atomic_open(path, "w", newline="") as f:
        df.to_csv(f, index=False)


# The seed tag of each stage: the localizer keeps the tag it had as the "coarse" stage, so runs reproduce the
# results recorded before it was renamed.
SEED_TAGS = {"localizer": "coarse", "train": "train", "finetune": "finetune"}


def _seed(seed: int, stage: str, *parts) -> int:
    return derived_seed(seed, SEED_TAGS[stage], *parts)


def stage_cache(recipe: dict, data: TrainData, runtime: dict, progress: bool = True):
    """The crop cache of all training images for a stage's geometry (built once, then reused)."""
    margin = recipe["cache_margin"] if recipe["augment"] else 0.0
    return cache_mod.get_cache(data.image_dir, data.names, recipe["crop_mode"], recipe["crop_size"],
                               default_cache_dir(runtime), margin=margin, face_scale=recipe["face_scale"],
                               points=data.point_view(), num_workers=0, progress=progress,
                               desc=f"caching {recipe['crop_mode']} crops", data_dir=data.data_dir,
                               allow_links_outside=runtime.get("allow_links_outside", False))


def prepare_batch(batch: dict, recipe: dict, device, size: int, pad: int, mean, std, generator=None, perm=None,
                  channels_last: bool = False, unmatched=None):
    """A cache batch (``loading.CacheBatches``) -> network input and targets, as training sees them.

    With ``recipe["augment"]`` and a ``generator``: one random affine map per sample (``augment.random_matrices``,
    flips only when ``perm`` is given), images warped and points mapped by it, photometric jitter; otherwise the crop
    is sliced exactly out of the cache border. Then ``/ 255`` and ``(x - mean) / std`` as ``loading.network_input``
    defines them, fused with the jitter into one pass (``augment.color_normalize``). In flipped
    samples the ``unmatched`` points (``int64`` indices, ``TrainData.flip_unmatched``) have no known position and
    become NaN, which ``landmark_loss`` leaves out.

    Returns:
        ``(x float32 [B, 3, S, S], points float32 [B, K, 2] crop pixels, NaN where unknown)`` on ``device``.
    """
    u8 = batch["images"].to(device, non_blocking=True)  # [B, Sc, Sc, 3]
    pts = batch["points"].to(device)
    if recipe["augment"] and generator is not None:
        m, flipped = augment.random_matrices(len(u8), size, pad, generator, recipe["rotate_deg"],
                                             recipe["scale_jitter"], recipe["translate_frac"],
                                             recipe["flip"] and perm is not None)
        # a float view of the raw 0..255 values (channels-last strides, no copy of layout); /255, the photometric
        # jitter and the normalisation then happen in one pass (augment.color_normalize)
        x = augment.warp_images(u8.permute(0, 3, 1, 2).float(), m, size)
        pts = augment.warp_points(pts, m, flipped, perm)
        if unmatched is not None and len(unmatched) and bool(flipped.any()):
            fl = torch.nonzero(flipped.to(pts.device)).flatten()
            pts[fl[:, None], unmatched.to(pts.device)[None, :]] = float("nan")
        x = augment.color_normalize(x, mean, std, recipe["photometric"], generator, value_scale=1 / 255.0)
    else:
        x = u8[:, pad: pad + size, pad: pad + size].permute(0, 3, 1, 2).contiguous().float()
        pts = pts - pad
        x = augment.color_normalize(x, mean, std, value_scale=1 / 255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, pts


def train_step(model, optimizer, scheduler, x, points, weights, recipe: dict, size: int, amp: bool = False) -> float:
    """One optimisation step: forward (bf16 autocast on CUDA with ``amp``), ``landmark_loss`` in crop pixels against
    ``points`` (``[B, K, 2]`` crop pixels), backward, optional gradient-norm clipping, optimizer step and, when
    given, a per-step ``scheduler`` step. Returns the loss as a float."""
    unit = size if recipe["normalize_targets"] else 1.0
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and x.device.type == "cuda"):
        out = model(x)
    target = codecs.LandmarkCodec(size, recipe["normalize_targets"]).encode(points)
    return optimise(landmark_loss(out.float() * unit, target * unit, recipe["loss"], weights), optimizer, scheduler,
                    recipe)


def optimise(loss: torch.Tensor, optimizer, scheduler, recipe: dict) -> float:
    """The step after a loss (every stage's): backward, optional gradient-norm clipping (``grad_clip``), optimizer
    step and, when given, a per-step ``scheduler`` step. Returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], recipe["grad_clip"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


@dataclass
class Stage:
    """Everything ``build`` makes for one stage's training; ``fit`` passes it to the other steps."""

    name: str
    recipe: dict
    runtime: dict
    run: object
    data: TrainData
    dist: Context
    device: torch.device
    model: torch.nn.Module
    train_model: torch.nn.Module
    cache: object
    sampler: BatchSampler
    loader: object
    optimizer: object
    scheduler: object
    per_step: bool
    meta: dict
    key: str
    data_key: str
    params: dict
    perm: torch.Tensor | None = None
    unmatched: torch.Tensor | None = None
    epoch: int = 0
    history: list = field(default_factory=list)
    best: float = float("inf")
    elapsed: float = 0.0
    stopped: bool = False

    @property
    def size(self) -> int:
        return int(self.recipe["crop_size"])


def _nanmean_rows(points, rows, chunk: int = POINT_CHUNK) -> np.ndarray:
    """``np.nanmean(points[rows], axis=0)`` (``float32 [K, 2]``) without the copy of ``points[rows]``: one block
    (the same float32 result) when the rows fit in ``chunk``, else float64 sums over blocks of rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= chunk:
        return np.nanmean(np.asarray(points[rows]), axis=0)
    total = np.zeros(points.shape[1:], np.float64)
    count = np.zeros(points.shape[1:], np.int64)
    for s in range(0, len(rows), chunk):
        block = np.asarray(points[rows[s:s + chunk]], dtype=np.float64)
        ok = np.isfinite(block)
        total += np.where(ok, block, 0.0).sum(axis=0)
        count += ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32)


def _initial_model(recipe: dict, data: TrainData, cache, init_checkpoint) -> torch.nn.Module:
    """The stage's starting network: ``init_checkpoint``'s weights (finetune), else ImageNet or scratch with the
    regression head's bias at the mean training shape (``normalize_targets``)."""
    if recipe["head"] == codecs.HEAD:
        return facebox.build_localizer(recipe["backbone"], recipe["pretrained"])
    kw = dict(dropout=recipe["dropout"], head=recipe["head"], crop_size=recipe["crop_size"])
    k = data.table.num_points
    if init_checkpoint:
        model = landmark.build_model(recipe["backbone"], k, pretrained=False, **kw)
        model.load_state_dict(checkpoint.load(init_checkpoint, "stage")["state_dict"])
        return model
    init_shape = None
    if recipe["normalize_targets"]:
        ms = _nanmean_rows(cache.points, data.train_idx)
        init_shape = codecs.LandmarkCodec(recipe["crop_size"], True).encode(torch.as_tensor(ms))
    return landmark.build_model(recipe["backbone"], k, recipe["pretrained"], init_shape=init_shape, **kw)


def build(params: dict, data: TrainData, run, stage: str, init_checkpoint=None, sample_weights=None,
          progress: bool = True, dist: Context | None = None) -> Stage:
    """Build a stage's model, crop cache, loader, optimizer and scheduler from ``stage_recipe`` and the runtime
    parameters (device, threads, workers, channels-last)."""
    dist = dist or Context(device=select_device(params["device"]))
    data = stage_data(params, data, stage)
    recipe, runtime = stage_recipe(params, stage), scoped(params, "runtime")
    if recipe["head"] == "softargmax" and not recipe["normalize_targets"]:
        raise ValueError("head 'softargmax' predicts normalised crop coordinates: set normalize_targets true")
    apply_threads(runtime)
    device = dist.device
    perm, unmatched = data.flip_perm(), data.flip_unmatched()
    cache = stage_cache(recipe, data, runtime, progress and dist.is_main)
    torch.manual_seed(_seed(recipe["seed"], stage, "init") % 2**63)  # same initial weights on 1 or N processes
    model = _initial_model(recipe, data, cache, init_checkpoint).to(device)
    if runtime["channels_last"]:  # CUDA and CPU alike: oneDNN's depthwise convolutions (MobileNet) gain most
        model = model.to(memory_format=torch.channels_last)
    train_model = model
    if dist.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    idx = data.train_idx
    if sample_weights is not None:
        idx = idx[np.asarray(sample_weights)[idx] > 0]
    per_rank = max(1, recipe["batch_size"] // dist.world_size)
    sampler = BatchSampler(idx, per_rank, shuffle=True, seed=_seed(recipe["seed"], stage) % 2**32,
                           drop_last=len(idx) >= per_rank * dist.world_size, rank=dist.rank,
                           world_size=dist.world_size)
    loader = make_loader(cache, sampler, device, runtime["num_workers"], sample_weights)
    opt = make_optimizer(recipe, model, recipe["lr"])
    sched, per_step = make_scheduler(recipe, opt, recipe["lr"], recipe["epochs"], max(1, len(sampler)))
    return Stage(stage, recipe, runtime, run, data, dist, device, model, train_model, cache, sampler, loader, opt,
                 sched, per_step, model_meta(recipe, data.table.num_points, perm, unmatched),
                 stage_key(params, stage), data.data_key(sample_weights), stage_params(params, stage),
                 torch.as_tensor(perm, dtype=torch.long), torch.as_tensor(unmatched, dtype=torch.long))


def check_keys(ck: dict, path, stage: str, key: str, data_key: str, params: dict, retrain: bool) -> bool:
    """Whether checkpoint ``ck`` of ``stage`` may be used: True with equal keys; False (train again from the
    start) with other keys and ``retrain``.

    Raises:
        StageChanged: other keys and not ``retrain``; the message lists ``name: old -> new`` and the stages
            affected, and says how to retrain.
    """
    if ck.get("scope_key") == key and ck.get("data_key") == data_key:
        return True
    if retrain:
        return False
    old = ck.get("params") or {}
    diff = changed(old, params)
    later = stages_reading(changed_names(old, params)) if diff else list(STAGES[STAGES.index(stage):])
    diff = diff or ["the training data (labels, split or sample weights)"]
    raise StageChanged(f"{path} was made with other parameters or data: {'; '.join(diff)}. Stages affected: "
                       f"{', '.join(later)}. Retrain them with retrain = True in the notebook (--retrain on the "
                       f"runner), or go back to the old values")


def resume(st: Stage, retrain: bool = False) -> None:
    """Continue from ``<stage>_last.pt`` when its keys match (model, optimizer, scheduler, epoch, history, best
    MSE and time so far); with ``retrain`` a mismatching one is ignored (and overwritten by the next epoch).

    Raises:
        StageChanged: see ``check_keys``.
    """
    path = st.run.checkpoint(st.name, "last")
    if not os.path.exists(path):
        return
    ck = checkpoint.load(path, "stage", map_location=st.device)
    if not check_keys(ck, path, st.name, st.key, st.data_key, st.params, retrain):
        return
    st.model.load_state_dict(ck["state_dict"])
    st.optimizer.load_state_dict(ck["optimizer"])
    st.scheduler.load_state_dict(ck["scheduler"])
    st.epoch, st.history, st.best, st.elapsed = ck["epoch"] + 1, ck["history"], ck["best_val_mse"], ck["elapsed_s"]
    st.stopped = bool(st.history and st.history[-1].get("stopped_early"))


def _over_budget(st: Stage, t0: float) -> bool:
    budget = st.runtime["time_budget_min"] * 60.0
    over = bool(budget) and st.elapsed + time.time() - t0 > budget
    if st.dist.world_size > 1:  # every rank stops after the same step (DDP would hang otherwise)
        over = st.dist.all_reduce_sum(float(over)) > 0
    return over


def train_one_epoch(st: Stage, progress: bool = True) -> float:
    """One epoch over the sampler's batches (seeded from ``(seed, stage, epoch)``); stops early, setting
    ``st.stopped``, when ``time_budget_min`` runs out. Returns the mean training loss over every rank."""
    t0 = time.time()
    r, epoch, rank = st.recipe, st.epoch, st.dist.rank
    st.sampler.set_epoch(epoch)
    torch.manual_seed(_seed(r["seed"], st.name, epoch, "torch", rank) % 2**63)
    gen = torch.Generator().manual_seed(_seed(r["seed"], st.name, epoch, "augment", rank) % 2**63)
    st.train_model.train()
    total, count = 0.0, 0
    bar = _bar(len(st.sampler), f"{st.name} {epoch + 1}/{r['epochs']}", progress and st.dist.is_main)
    boxes = r["head"] == codecs.HEAD
    for batch in st.loader:
        if boxes:
            loss = localizer_step(st, batch, gen)
        else:
            x, pts = prepare_batch(batch, r, st.device, st.size, st.cache.pad, st.meta["input_mean"],
                                   st.meta["input_std"], gen, st.perm, st.runtime["channels_last"], st.unmatched)
            loss = train_step(st.train_model, st.optimizer, st.scheduler if st.per_step else None, x, pts,
                              batch["weights"].to(st.device), r, st.size, st.runtime["amp"])
        n = len(batch["index"])
        total, count = total + loss * n, count + n
        bar.update(1)
        bar.set_postfix(loss=f"{total / max(count, 1):.3f}", refresh=False)
        if _over_budget(st, t0):
            st.stopped = True
            break
    bar.close()
    st.elapsed += time.time() - t0
    return st.dist.all_reduce_mean(total / max(count, 1), count)


def localizer_step(st: Stage, batch: dict, gen: torch.Generator) -> float:
    """One optimisation step of a ``facebox`` localizer: the batch re-framed (``reframing.reframe_batch``), photometric
    jitter and normalisation, ``facebox.facebox_loss`` against the faces' boxes. Returns the loss as a float."""
    r, size = st.recipe, st.size
    idx = batch["index"].numpy()
    content = reframing.content_rects(st.cache.frames[idx], st.cache.pad)
    img, boxes, present = reframing.reframe_batch(batch["images"], batch["points"], content, size, gen,
                                                      flip=r["flip"])
    x = augment.color_normalize(img.to(st.device), st.meta["input_mean"], st.meta["input_std"], r["photometric"],
                                gen, value_scale=1 / 255.0)
    if st.runtime["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    codec = codecs.FaceBoxCodec(size)
    target = codec.encode(boxes.to(st.device), present.to(st.device))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=st.runtime["amp"] and x.device.type == "cuda"):
        out = st.train_model(x)
    return optimise(facebox.facebox_loss(out, target), st.optimizer, st.scheduler if st.per_step else None, r)


def evaluate(st: Stage) -> float:
    """Validation MSE (original pixels²) of the model on the validation crops of the stage's cache (no TTA), each
    rank scoring a shard of rank 0's model; NaN without a validation split. For a ``facebox`` localizer: the MSE of
    the chosen face box's ``(cx, cy, extent)`` against the labelled landmarks' box (``geometry.face_boxes``)."""
    val = st.data.val_idx
    if not len(val):
        return float("nan")
    st.model.eval()  # running batch-norm statistics, no dropout
    if st.dist.world_size > 1:
        st.dist.broadcast_buffers(st.model)
    shard = np.arange(len(val))[st.dist.rank::st.dist.world_size]
    if not len(shard):
        mse = 0.0
    elif st.recipe["head"] == codecs.HEAD:
        pred = passes.predict_boxes_cache(st.model, st.meta, st.cache, val[shard], st.device)
        truth = geometry.face_boxes(st.data.points(val[shard]))
        mse = float(np.mean((pred - truth) ** 2))
    else:
        pred = predict_cache(st.model, st.meta, st.cache, val[shard], st.device, batch_size=128)
        mse = metrics.mse(pred, st.data.points(val[shard]))
    return st.dist.all_reduce_mean(mse, len(shard))


def _stage_dict(st: Stage, val_mse: float, finished: bool) -> dict:
    return {"kind": "stage", "stage": st.name, "meta": st.meta, "state_dict": st.model.state_dict(),
            "params": st.params, "scope_key": st.key, "data_key": st.data_key, "finished": finished,
            "val_mse": val_mse, "epoch": st.epoch}


def save_epoch(st: Stage, row: dict) -> None:
    """Append the epoch's history row; save ``best`` when the validation MSE improved (or there is none) and
    ``last`` always (rank 0 only), and rewrite the stage's ``history.csv`` rows."""
    st.history.append(row)
    val = row["val_mse"]
    improved = not (val >= st.best) if math.isfinite(val) else True
    if improved and math.isfinite(val):
        st.best = val
    if st.dist.is_main:
        base = _stage_dict(st, val, False)
        if improved:
            checkpoint.save(st.run.checkpoint(st.name, "best"), base)
        checkpoint.save(st.run.checkpoint(st.name, "last"), {
            **base, "optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(),
            "history": st.history, "elapsed_s": st.elapsed, "best_val_mse": st.best})
        write_history(st.run, st.name, st.history)
    st.dist.barrier()


def finish(st: Stage) -> dict:
    """Mark ``<stage>_best.pt`` finished and remove ``<stage>_last.pt`` (rank 0); the result of ``fit``."""
    best, last = st.run.checkpoint(st.name, "best"), st.run.checkpoint(st.name, "last")
    if st.dist.is_main:
        ck = checkpoint.load(best, "stage")
        ck.update(finished=True, stopped_early=st.stopped)
        if st.recipe["head"] == codecs.HEAD:
            ck["meta"] = dict(ck["meta"], face_rule=learn_face_rule(st, ck["state_dict"]))
        checkpoint.save(best, ck)
        if os.path.exists(last):
            os.remove(last)
    st.dist.barrier()
    return {"best": best, "best_val_mse": st.best, "history": st.history, "stopped_early": st.stopped}


#: Training images a face rule is learned from (a seeded sample at larger sizes).
FACE_RULE_IMAGES = 20000


def learn_face_rule(st: Stage, state_dict) -> dict | None:
    """The face rule of a ``facebox`` localizer (``codecs.fit_rule``), learned from its detections on (up to
    ``FACE_RULE_IMAGES``) training images of the stage's letterbox cache with the weights ``state_dict``; ``None``
    keeps the fixed rule (``codecs.choose``). Logged either way."""
    st.model.load_state_dict(state_dict)
    st.model.eval()
    idx = st.data.train_idx
    if len(idx) > FACE_RULE_IMAGES:
        idx = np.sort(np.random.default_rng([st.recipe["seed"], 11]).choice(idx, FACE_RULE_IMAGES, replace=False))
    boxes, scores = passes.detections_cache(st.model, st.meta, st.cache, idx, st.device)
    frames = st.cache.frames[idx]  # original -> letterbox crop: x_crop = (x - x0) * scale
    truth = geometry.face_boxes(st.data.points(idx)).astype(np.float64)
    truth = geometry.boxes_to_crop(truth, frames)
    rule = codecs.fit_rule(boxes, scores, truth, st.size)
    if rule is None:
        LOG.info("face rule: the fixed rule (the largest confident face) kept: no learned rule beat it on the "
                 "training images by the margin (codecs.RULE_MARGIN)")
    else:
        LOG.info(f"face rule learned on {rule['images']} training images with several faces: the labelled face "
                 f"picked on {rule['hits']} (the fixed rule: {rule['fixed_hits']})")
    return rule


def finished_result(params: dict, data: TrainData, run, stage: str, sample_weights=None,
                    retrain: bool = False) -> dict | None:
    """The result of a stage that already finished with these parameters and data (``<stage>_best.pt`` marked
    finished, equal keys), else None (with ``retrain`` and other keys too).

    Raises:
        StageChanged: a finished stage with other keys and not ``retrain``.
    """
    data = stage_data(params, data, stage)
    best = run.checkpoint(stage, "best")
    if not os.path.exists(best) or os.path.exists(run.checkpoint(stage, "last")):
        return None
    ck = checkpoint.load(best, "stage")
    if not ck.get("finished") or not check_keys(ck, best, stage, stage_key(params, stage),
                                                data.data_key(sample_weights), stage_params(params, stage),
                                                retrain):
        return None
    hist = run.read_history() if os.path.exists(run.file("history.csv")) else pd.DataFrame(columns=HISTORY_COLUMNS)
    rows = hist[hist["stage"] == stage].to_dict("records")
    vals = [r["val_mse"] for r in rows if math.isfinite(r["val_mse"])]
    return {"best": best, "best_val_mse": min(vals) if vals else float("nan"), "history": rows,
            "stopped_early": bool(ck.get("stopped_early"))}


def fit(params: dict, data: TrainData, run, stage: str = "train", init_checkpoint=None, sample_weights=None,
        retrain: bool = False, progress: bool = True, dist: Context | None = None) -> dict:
    """Train one stage (or return its finished result), resuming from ``<stage>_last.pt`` when it exists.

    Args:
        params: resolved parameters (``params.resolve``); the stage reads only ``stage_params`` and the runtime.
        data: ``TrainData``. run: ``run_folder.RunFolder`` (``checkpoints/`` and ``history.csv`` are written there).
        stage: ``localizer``, ``train`` or ``finetune``.
        init_checkpoint: a stage checkpoint whose weights start this stage (finetune); else ImageNet/scratch.
        sample_weights: ``float [N]`` per training image (0 drops it), e.g. from label-noise finding.
        retrain: train again when the stage's checkpoints were made with other parameters or data.
        dist: ``distributed.Context``; default one process on ``params["device"]``.
    Returns:
        ``{"best": path, "best_val_mse": float, "history": list of dict, "stopped_early": bool}``.
    Raises:
        StageChanged: checkpoints made with other parameters or data, without ``retrain``.
    """
    done = finished_result(params, data, run, stage, sample_weights, retrain)
    if done is not None:
        if done["stopped_early"] and progress:
            LOG.info(f"{stage}: finished earlier, stopped early by time_budget_min after {len(done['history'])} of "
                     f"{stage_recipe(params, stage)['epochs']} epochs; retrain to train it fully")
        return done
    st = build(params, data, run, stage, init_checkpoint, sample_weights, progress, dist)
    resume(st, retrain)
    while st.epoch < st.recipe["epochs"] and not st.stopped:
        t0 = time.time()
        train_loss = train_one_epoch(st, progress)
        val_mse = evaluate(st)
        if not st.per_step:
            st.scheduler.step(val_mse if math.isfinite(val_mse) else train_loss)
        row = {"epoch": st.epoch + 1, "stage": stage, "train_loss": train_loss, "val_mse": val_mse,
               "lr": st.optimizer.param_groups[0]["lr"], "time_s": round(st.elapsed, 2)}
        if st.stopped:
            row["stopped_early"] = True
        save_epoch(st, row)
        if progress and st.dist.is_main:
            LOG.info(f"{stage} epoch {st.epoch + 1}/{st.recipe['epochs']}: train loss {train_loss:.4f}, val MSE "
                     f"{val_mse:.3f} px^2, {time.time() - t0:.0f} s")
        st.epoch += 1
    if st.stopped and progress and st.dist.is_main:
        LOG.info(f"{stage}: stopped early by time_budget_min after {st.epoch} of {st.recipe['epochs']} epochs")
    if not st.history:  # zero epochs: the initial model is the stage's result
        save_epoch(st, {"epoch": 0, "stage": stage, "train_loss": float("nan"), "val_mse": evaluate(st),
                        "lr": st.optimizer.param_groups[0]["lr"], "time_s": 0.0})
    return finish(st)


def _bar(total, desc, enabled):

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, mininterval=2.0)


def train_all(params: dict, data: TrainData, run, retrain: bool = False, progress: bool = True,
              dist: Context | None = None) -> dict:
    """The train notebook's job: the localizer stage (``face`` crops only), then the train stage.

    Returns:
        ``{"localizer": fit result or None, "train": fit result}``.
    """
    loc = None
    if params["crop_mode"] == "face":
        loc = fit(params, data, run, "localizer", retrain=retrain, progress=progress, dist=dist)
    res = fit(params, data, run, "train", retrain=retrain, progress=progress, dist=dist)
    return {"localizer": loc, "train": res}
