"""Training: stages, checkpoints, resume, validation in original pixels, ``history.csv``.

A run trains in named *stages*, each writing ``checkpoints/<stage>_last.pt`` (everything needed to resume) after every
epoch and ``checkpoints/<stage>_best.pt`` (the model with the lowest validation MSE in original pixels) atomically:

- ``coarse`` (``crop_mode="face"`` only): a letterbox model at ``coarse_crop_size`` that places face crops;
- ``train``: the main model from ImageNet weights, ``epochs`` at ``lr``;
- ``finetune``: continues from ``train_best`` at ``finetune_lr`` for ``finetune_epochs``, optionally without (or
  down-weighting) the training labels that ``noise.find_noisy_labels`` flags.

Every random draw of an epoch (batch order, augmentation, dropout) is seeded from ``(seed, stage, epoch)``, so a run
killed at any moment and resumed from its last checkpoint (model, optimizer, scheduler, epoch, history) repeats the
interrupted epoch exactly and ends with the result of an uninterrupted run (on CPU with the same thread count).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import augment, geometry, metrics, models
from . import cache as cache_mod
from .data import BatchSampler, make_loader
from .io import LandmarksTable, atomic_open, labels_to_points, read_landmarks
from .params import default_cache_dir, training_params
from .predict import CHECKPOINT_FORMAT, predict_cache, select_device

STAGES = ("coarse", "train", "finetune")
HISTORY_COLUMNS = ["epoch", "stage", "train_loss", "val_mse", "lr", "time_s"]


@dataclass
class TrainData:
    """Training landmarks with their split.

    Attributes:
        data_dir: the dataset folder; ``image_dir``: ``data_dir/train/images``.
        table: ``io.LandmarksTable`` (original pixels).
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
        ``landmarks.csv`` plus ``io.LABEL_OFFSET`` (``io.labels_to_points``)."""
        p = self.table.points if idx is None else self.table.points[np.asarray(idx)]
        return labels_to_points(p)

    def data_key(self, sample_weights=None) -> str:
        """A hash of what training sees of the data: the file names, the labels, the train/validation split and,
        when given, per-image ``sample_weights`` (a resume on any other is refused). Hashes the whole label table:
        about a second for the contest's 394,000 rows."""
        h = hashlib.sha1()
        h.update("\n".join(self.table.names).encode())
        arrays = [self.table.points, self.train_idx, self.val_idx]
        if sample_weights is not None:
            arrays.append(np.asarray(sample_weights, dtype=np.float64))
        for a in arrays:
            a = np.ascontiguousarray(a)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()[:16]

    def flip_perm(self) -> np.ndarray:
        """The mirror permutation estimated from (up to 2,000) training shapes; computed once."""
        if self._perm is None:
            idx = self.train_idx
            if len(idx) > 2000:
                idx = np.sort(np.random.default_rng(0).choice(idx, 2000, replace=False))
            shapes = self.points(idx)
            self._perm = geometry.estimate_mirror_permutation(shapes)
            self._unmatched = geometry.mirror_unmatched(shapes, self._perm)
        return self._perm

    def flip_unmatched(self) -> np.ndarray:
        """``int64`` indices of the points without a mirror partner (``geometry.mirror_unmatched``), from the same
        shapes as ``flip_perm``."""
        self.flip_perm()
        return self._unmatched


def split_indices(names, data_dir, val_fraction: float, seed: int, mode: str = "auto"):
    """Seeded train/validation split.

    ``groups`` keeps every group of ``train/groups.csv`` (same person) on one side, so validation faces are unseen,
    as in the hidden test; ``random`` splits images; ``auto`` uses groups when the file exists.

    Returns:
        ``(train_idx, val_idx, mode_used)``; ``int64`` positions into ``names``, sorted.
    Raises:
        FileNotFoundError: ``mode="groups"`` without the file. ValueError: names missing from it.
    """
    n = len(names)
    rng = np.random.default_rng([int(seed), 7])
    gpath = os.path.join(data_dir, "train", "groups.csv")
    if mode == "auto":
        mode = "groups" if os.path.exists(gpath) else "random"
    if val_fraction <= 0:
        return np.arange(n), np.zeros(0, np.int64), mode
    if mode == "groups":
        g = pd.read_csv(gpath, sep="\t", dtype={"file_name": str})
        m = dict(zip(g["file_name"], g["group"]))
        missing = [x for x in names if x not in m]
        if missing:
            raise ValueError(f"{gpath}: {len(missing)} training images have no group, e.g. {missing[0]!r}")
        groups = np.array([m[x] for x in names])
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


def load_train_data(params: dict, progress: bool = True) -> TrainData:
    """Read ``train/landmarks.csv`` (parsed once into the cache folder) and split it (``split_indices``).

    ``max_train_images`` > 0 keeps a seeded random subset before splitting.
    """
    data_dir = params["data_dir"]
    table = read_landmarks(os.path.join(data_dir, "train", "landmarks.csv"), bad_rows=params["bad_rows"],
                           cache_dir=default_cache_dir(params))
    if params["max_train_images"] and params["max_train_images"] < len(table):
        keep = np.sort(np.random.default_rng([params["seed"], 3]).choice(len(table), params["max_train_images"],
                                                                           replace=False))
        table = LandmarksTable([table.names[i] for i in keep], np.asarray(table.points[keep]), table.skipped)
    tr, va, mode = split_indices(table.names, data_dir, params["val_fraction"], params["seed"], params["val_split"])
    return TrainData(data_dir, os.path.join(data_dir, "train", "images"), table, tr, va, mode)


def apply_threads(params: dict) -> int:
    """Set torch's CPU thread count for this process from ``params["threads"]`` (0 leaves torch's default: all
    cores, or ``OMP_NUM_THREADS``), so training, prediction, noise finding and evaluation use the same count.
    Returns the count in use."""
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    return torch.get_num_threads()


def stage_settings(params: dict, stage: str) -> dict:
    """Crop geometry, epochs and learning rate of a stage."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if stage == "coarse":
        return {"crop_mode": "letterbox", "crop_size": params["coarse_crop_size"], "epochs": params["coarse_epochs"],
                "lr": params["lr"]}
    return {"crop_mode": params["crop_mode"], "crop_size": params["crop_size"],
            "epochs": params["epochs"] if stage == "train" else params["finetune_epochs"],
            "lr": params["lr"] if stage == "train" else params["finetune_lr"]}


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


def make_optimizer(params: dict, model, lr: float):
    """Adam / AdamW / SGD (momentum 0.9, Nesterov) with ``weight_decay`` (AdamW decoupled)."""
    kind = params["optimizer"]
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=params["weight_decay"],
                                amsgrad=params["amsgrad"])
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=params["weight_decay"],
                                 amsgrad=params["amsgrad"])
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                               weight_decay=params["weight_decay"])
    raise ValueError(f"unknown optimizer {kind!r}; expected adam, adamw or sgd")


def make_scheduler(params: dict, optimizer, lr: float, epochs: int, steps_per_epoch: int):
    """``(scheduler, per_step)``: cosine (with optional linear warm-up) and one-cycle step per batch; cosine warm
    restarts (SGDR, Loshchilov & Hutter 2017) per batch with a first cycle of ``restart_epochs``; ReduceLROnPlateau
    per epoch on validation MSE; ``none`` is constant."""
    kind = params["scheduler"]
    total = max(1, epochs * steps_per_epoch)
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=params["plateau_factor"],
                                                          patience=params["plateau_patience"]), False
    if kind == "cosine":
        warm = int(params["warmup_epochs"] * steps_per_epoch)

        def f(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, f), True
    if kind == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(1, int(params["restart_epochs"] * steps_per_epoch)), T_mult=2), True
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total), True
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), True
    raise ValueError(f"unknown scheduler {kind!r}; expected plateau, cosine, cosine_restarts, onecycle or none")


def model_meta(params: dict, stage: str, num_points: int, flip_perm, flip_unmatched=None) -> dict:
    """What prediction needs to rebuild and run a model (stored in each checkpoint): among others the mirror
    permutation and the points it cannot mirror (``TrainData.flip_perm``, ``TrainData.flip_unmatched``)."""
    st = stage_settings(params, stage)
    mean, std = models.input_normalization(params["backbone"], params["input_norm"])
    return {"backbone": params["backbone"], "num_points": int(num_points), "crop_size": int(st["crop_size"]),
            "crop_mode": st["crop_mode"], "face_scale": float(params["face_scale"]),
            "input_mean": list(mean), "input_std": list(std), "normalize_targets": bool(params["normalize_targets"]),
            "dropout": float(params["dropout"]), "stage": stage, "head": params["head"],
            "flip_perm": None if flip_perm is None else [int(v) for v in flip_perm],
            "flip_unmatched": [int(v) for v in (flip_unmatched if flip_unmatched is not None else [])]}


def params_key(params: dict, stage: str) -> str:
    """Hash of the parameters a stage's result depends on (``params.training_params``: ``data_dir`` counts as the
    folder it names, so a relative and an absolute spelling give the same key); a resume with other values is
    refused."""
    d = dict(sorted(training_params(params).items()))
    return hashlib.sha1(json.dumps([stage, d], sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path, obj: dict) -> None:
    """``torch.save`` to a temporary file and rename: a crash leaves the previous checkpoint intact."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _write_history(run_dir, stage, rows):
    path = os.path.join(run_dir, "history.csv")
    old = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame(columns=HISTORY_COLUMNS)
    old = old[old["stage"] != stage]
    order = {s: i for i, s in enumerate(STAGES)}
    df = pd.concat([old, pd.DataFrame(rows, columns=HISTORY_COLUMNS)], ignore_index=True) if len(old) else \
        pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    df = df.sort_values(["stage", "epoch"], key=lambda c: c.map(order) if c.name == "stage" else c, kind="stable")
    with atomic_open(path, "w", newline="") as f:
        df.to_csv(f, index=False)


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:7], "little")


def stage_cache(params: dict, data: TrainData, stage: str, progress: bool = True):
    """The crop cache of all training images for a stage's geometry (built once, then reused)."""
    st = stage_settings(params, stage)
    margin = params["cache_margin"] if params["augment"] else 0.0
    return cache_mod.get_cache(data.image_dir, data.names, st["crop_mode"], st["crop_size"],
                               default_cache_dir(params), margin=margin, face_scale=params["face_scale"],
                               points=data.points(), num_workers=0, progress=progress,
                               desc=f"caching {st['crop_mode']} crops")


def prepare_batch(batch: dict, params: dict, device, size: int, pad: int, mean, std, generator=None, perm=None,
                  channels_last: bool = False, unmatched=None):
    """A cache batch (``data.CacheBatches``) -> network input and targets, as training sees them.

    With ``params["augment"]`` and a ``generator``: one random affine map per sample (``augment.random_matrices``,
    flips only when ``perm`` is given), images warped and points mapped by it, photometric jitter; otherwise the crop
    is sliced exactly out of the cache border. Then ``/ 255`` and ``(x - mean) / std`` as ``data.to_input`` and
    ``data.normalize`` define them, fused with the jitter into one pass (``augment.color_normalize``). In flipped
    samples the ``unmatched`` points (``int64`` indices, ``TrainData.flip_unmatched``) have no known position and
    become NaN, which ``landmark_loss`` leaves out.

    Returns:
        ``(x float32 [B, 3, S, S], points float32 [B, K, 2] crop pixels, NaN where unknown)`` on ``device``.
    """
    u8 = batch["images"].to(device, non_blocking=True)  # [B, Sc, Sc, 3]
    pts = batch["points"].to(device)
    if params["augment"] and generator is not None:
        m, flipped = augment.random_matrices(len(u8), size, pad, generator, params["rotate_deg"],
                                             params["scale_jitter"], params["translate_frac"],
                                             params["flip"] and perm is not None)
        # a float view of the raw 0..255 values (channels-last strides, no copy of layout); /255, the photometric
        # jitter and the normalisation then happen in one pass (augment.color_normalize)
        x = augment.warp_images(u8.permute(0, 3, 1, 2).float(), m, size)
        pts = augment.warp_points(pts, m, flipped, perm)
        if unmatched is not None and len(unmatched) and bool(flipped.any()):
            fl = torch.nonzero(flipped.to(pts.device)).flatten()
            pts[fl[:, None], unmatched.to(pts.device)[None, :]] = float("nan")
        x = augment.color_normalize(x, mean, std, params["photometric"], generator, value_scale=1 / 255.0)
    else:
        x = u8[:, pad: pad + size, pad: pad + size].permute(0, 3, 1, 2).contiguous().float()
        pts = pts - pad
        x = augment.color_normalize(x, mean, std, value_scale=1 / 255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, pts


def train_step(model, optimizer, scheduler, x, points, weights, params: dict, size: int) -> float:
    """One optimisation step: forward (bf16 autocast on CUDA with ``params["amp"]``), ``landmark_loss`` in crop
    pixels against ``points`` (``[B, K, 2]`` crop pixels), backward, optional gradient-norm clipping, optimizer
    step and, when given, a per-step ``scheduler`` step. Returns the loss as a float."""
    unit = size if params["normalize_targets"] else 1.0
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=params["amp"] and x.device.type == "cuda"):
        out = model(x)
    target = models.to_target_units(points, size, params["normalize_targets"])
    loss = landmark_loss(out.float() * unit, target * unit, params["loss"], weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if params["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], params["grad_clip"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


class _Single:
    rank, world_size = 0, 1

    def all_reduce_mean(self, value: float, count: int) -> float:
        return value

    def barrier(self):
        pass


def fit(params: dict, data: TrainData, run_dir, stage: str = "train", init_checkpoint=None, coarse_checkpoint=None,
        sample_weights=None, progress: bool = True, dist=None) -> dict:
    """Train one stage, resuming from ``checkpoints/<stage>_last.pt`` when it exists.

    Args:
        params: resolved parameters (``params.resolve``).
        data: ``TrainData``.
        run_dir: the run folder (``checkpoints/`` and ``history.csv`` are written there).
        stage: ``coarse``, ``train`` or ``finetune``.
        init_checkpoint: path of a checkpoint whose weights start this stage (finetune); else ImageNet/scratch.
        coarse_checkpoint: for ``face`` crops, the coarse model's checkpoint, embedded into this stage's checkpoints.
        sample_weights: ``float [N]`` per training image (0 drops it), e.g. from label-noise finding.
        dist: distributed context (``distributed.Context``); default single process.
    Returns:
        ``{"best": path, "last": path, "best_val_mse": float, "history": list of dict, "stopped_early": bool}``.
    Raises:
        RuntimeError: a ``<stage>_last.pt`` made with other parameters, or on other data (``TrainData.data_key``:
            names, labels, split; and other ``sample_weights``); start over with ``--force``.
    """
    dist = dist or _Single()
    if params["head"] == "softargmax" and not params["normalize_targets"]:
        raise ValueError("head 'softargmax' predicts normalised crop coordinates: set normalize_targets true")
    st = stage_settings(params, stage)
    ck_dir = os.path.join(run_dir, "checkpoints")
    last_path = os.path.join(ck_dir, f"{stage}_last.pt")
    best_path = os.path.join(ck_dir, f"{stage}_best.pt")
    key = params_key(params, stage)
    dkey = data.data_key(sample_weights)
    device = getattr(dist, "device", None) or select_device(params["device"])  # cuda:LOCAL_RANK under DDP
    apply_threads(params)
    num_points = data.table.num_points
    perm = data.flip_perm() if (params["flip"] or params["tta_flip"]) else None
    unmatched = data.flip_unmatched() if perm is not None else None
    meta = model_meta(params, stage, num_points, perm, unmatched)
    size = int(st["crop_size"])

    c = stage_cache(params, data, stage, progress and dist.rank == 0)
    pad = c.pad
    torch.manual_seed(_seed(params["seed"], stage, "init") % 2**63)  # same initial weights on 1 or N processes
    if init_checkpoint:
        from .predict import load_checkpoint

        init = load_checkpoint(init_checkpoint)
        model = models.build_model(params["backbone"], num_points, pretrained=False, dropout=params["dropout"],
                                   head=params["head"], crop_size=size)
        model.load_state_dict(init["state_dict"])
    else:
        init_shape = None
        if params["normalize_targets"]:
            ms = np.nanmean(np.asarray(c.points)[data.train_idx], axis=0)
            init_shape = models.to_target_units(torch.as_tensor(ms), size, True)
        model = models.build_model(params["backbone"], num_points, params["pretrained"], params["dropout"],
                                   init_shape, head=params["head"], crop_size=size)
    model = model.to(device)
    cl = params["channels_last"]  # CUDA and CPU alike: oneDNN's depthwise convolutions (MobileNet) gain most
    if cl:
        model = model.to(memory_format=torch.channels_last)
    train_model = model
    if dist.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    train_idx = data.train_idx
    if sample_weights is not None:
        train_idx = train_idx[np.asarray(sample_weights)[train_idx] > 0]
    per_rank_batch = max(1, params["batch_size"] // dist.world_size)
    sampler = BatchSampler(train_idx, per_rank_batch, shuffle=True, seed=_seed(params["seed"], stage) % 2**32,
                           drop_last=len(train_idx) >= per_rank_batch * dist.world_size, rank=dist.rank,
                           world_size=dist.world_size)
    loader = make_loader(c, sampler, device, params["num_workers"], sample_weights)
    steps = max(1, len(sampler))
    opt = make_optimizer(params, model, st["lr"])
    sched, per_step = make_scheduler(params, opt, st["lr"], st["epochs"], steps)

    start, history, best, elapsed = 0, [], float("inf"), 0.0
    if os.path.exists(last_path):
        from .predict import load_checkpoint

        ck = load_checkpoint(last_path, map_location=device)
        if ck.get("params_key") != key:
            raise RuntimeError(f"{last_path} was made with other parameters; resume with the same ones, "
                               f"or start over (--force)")
        if ck.get("data_key", dkey) != dkey:
            raise RuntimeError(f"{last_path} was made on other data (landmarks.csv, its split or the sample "
                               f"weights changed since); start over (--force)")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, history, best, elapsed = ck["epoch"] + 1, ck["history"], ck["best_val_mse"], ck["elapsed_s"]
    stopped = bool(history and history[-1].get("stopped_early"))
    coarse = None
    if coarse_checkpoint:
        from .predict import load_checkpoint

        cc = load_checkpoint(coarse_checkpoint)
        coarse = {k: cc[k] for k in ("format", "meta", "state_dict")}
    perm_t = torch.as_tensor(perm, dtype=torch.long) if perm is not None else None
    unmatched_t = torch.as_tensor(unmatched, dtype=torch.long) if unmatched is not None else None
    gt_val = data.points(data.val_idx)
    budget = params["time_budget_min"] * 60.0

    for epoch in range(start, st["epochs"]):
        if stopped:
            break
        t0 = time.time()
        sampler.set_epoch(epoch)
        torch.manual_seed(_seed(params["seed"], stage, epoch, "torch", dist.rank) % 2**63)
        gen = torch.Generator().manual_seed(_seed(params["seed"], stage, epoch, "augment", dist.rank) % 2**63)
        train_model.train()
        total, count = 0.0, 0
        bar = _bar(len(sampler), f"{stage} {epoch + 1}/{st['epochs']}", progress and dist.rank == 0)
        for batch in loader:
            x, pts = prepare_batch(batch, params, device, size, pad, meta["input_mean"], meta["input_std"], gen,
                                   perm_t, cl, unmatched_t)
            loss = train_step(train_model, opt, sched if per_step else None, x, pts, batch["weights"].to(device),
                              params, size)
            total += loss * len(x)
            count += len(x)
            bar.update(1)
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}", refresh=False)
            if budget and (dist.all_reduce_sum(float(elapsed + time.time() - t0 > budget)) > 0
                           if dist.world_size > 1 else elapsed + time.time() - t0 > budget):
                stopped = True  # every rank stops after the same step (DDP would hang otherwise)
                break
        bar.close()
        train_loss = dist.all_reduce_mean(total / max(count, 1), count)
        val_mse = float("nan")
        if len(data.val_idx):
            model.eval()  # running batch-norm statistics, no dropout
            if dist.world_size > 1:  # rank 0's model on every rank, each rank scores a shard: same MSE everywhere
                dist.broadcast_buffers(model)
            shard = np.arange(len(data.val_idx))[dist.rank::dist.world_size]
            pred = predict_cache(model, meta, c, data.val_idx[shard], device, batch_size=128)
            val_mse = metrics.mse(pred, gt_val[shard]) if len(shard) else 0.0
            val_mse = dist.all_reduce_mean(val_mse, len(shard))
        if not per_step:
            sched.step(val_mse if math.isfinite(val_mse) else train_loss)
        elapsed += time.time() - t0
        row = {"epoch": epoch + 1, "stage": stage, "train_loss": train_loss, "val_mse": val_mse,
               "lr": opt.param_groups[0]["lr"], "time_s": round(elapsed, 2)}
        if stopped:
            row["stopped_early"] = True
        history.append(row)
        improved = not (val_mse >= best) if math.isfinite(val_mse) else True
        if improved:
            best = val_mse if math.isfinite(val_mse) else best
        if dist.rank == 0:
            base = {"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": model.state_dict(), "coarse": coarse,
                    "epoch": epoch, "best_val_mse": best, "val_mse": val_mse}
            if improved:
                save_checkpoint(best_path, base)
            save_checkpoint(last_path, {**base, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                        "history": history, "elapsed_s": elapsed, "params_key": key,
                                        "data_key": dkey})
            _write_history(run_dir, stage, [{k: r[k] for k in HISTORY_COLUMNS} for r in history])
        dist.barrier()
        if progress and dist.rank == 0:
            print(f"{stage} epoch {epoch + 1}/{st['epochs']}: train loss {train_loss:.4f}, val MSE {val_mse:.3f} px^2,"
                  f" {time.time() - t0:.0f} s", flush=True)
    return {"best": best_path, "last": last_path, "best_val_mse": best, "history": history, "stopped_early": stopped}


def _bar(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, mininterval=2.0)


def train_all(params: dict, data: TrainData, run_dir, progress: bool = True, dist=None) -> dict:
    """The train notebook's job: the coarse stage (``face`` crops only), then the train stage.

    Returns:
        ``{"coarse": fit result or None, "train": fit result}``.
    """
    coarse = None
    if params["crop_mode"] == "face":
        coarse = fit(params, data, run_dir, "coarse", progress=progress, dist=dist)
    res = fit(params, data, run_dir, "train", coarse_checkpoint=coarse["best"] if coarse else None,
              progress=progress, dist=dist)
    return {"coarse": coarse, "train": res}
