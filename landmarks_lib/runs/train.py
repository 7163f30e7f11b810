"""Command-line training, on one process or data-parallel on several GPUs or machines (``torchrun``).

``python -m landmarks_lib.train --data-dir DIR --run-dir DIR [--params FILE] [-p NAME VALUE ...] [--retrain]`` runs
the train notebook's job (``engine.train_all``: the localizer stage when ``crop_mode`` is ``face``, then the train
stage) with the one resolver (``params.resolve``: defaults < the run's ``params.yaml``, else ``--params`` < ``-p``
< ``--data-dir``/``--run-dir``). It writes the same run folder as the train notebook (the marker, ``params.yaml``,
``run_info.json``, ``checkpoints/localizer_best.pt``, ``checkpoints/train_best.pt``, ``history.csv``), so the
finetune, evaluation and submission steps continue from it unchanged. Started again on the same run folder it
resumes from ``checkpoints/<stage>_last.pt``; a stage whose parameters changed is refused unless ``--retrain``.

The section below is written to be copied into the README and the train notebook.

Multi-GPU and multi-node training
---------------------------------

Training can run data-parallel on several GPUs of one machine, or on several machines, with PyTorch's
`torchrun` launcher and `DistributedDataParallel`. The results land in the same run folder as a notebook run,
so finetuning, evaluation and the submission continue from it unchanged.

**One machine, N GPUs** (`N` = number of GPUs, e.g. 4):

```bash
torchrun --standalone --nproc_per_node 4 -m landmarks_lib.train \\
    --data-dir /data/thousand-landmarks --run-dir runs/gpu4 --params params/gpu.yaml
```

Without `torchrun` the same command (`python -m landmarks_lib.train ...`) trains on one process.
Parameters are those of the notebooks: `--params FILE` loads a profile and `-p NAME VALUE` (repeatable) overrides
one value, e.g. `-p epochs 20 -p lr 3e-4`.

- `batch_size` is the **global** batch: each of the N processes takes `batch_size // N` images per step, so the
  learning rate and schedule of a one-GPU profile stay valid. Keep `batch_size` a multiple of N.
- Each process uses the GPU `cuda:LOCAL_RANK` with the NCCL backend; on CPU-only machines the gloo backend is
  used (useful for testing, not for speed). Choose the GPUs with `CUDA_VISIBLE_DEVICES=0,1 torchrun ...`.
- Only rank 0 writes files (checkpoints, `history.csv`, `params.yaml`) and prints progress; the validation MSE is
  computed on shards of the validation set and combined, so every rank sees the same value.
- Batch-norm statistics are computed per GPU on `batch_size // N` images (no `SyncBatchNorm`); with very small
  per-GPU batches (< 16) results drift a little from a one-GPU run with the same global batch.
- The first process on each machine builds the crop caches while the others wait (up to
  `LANDMARKS_DIST_TIMEOUT_MIN` minutes, default 180).
- Started again with the same command, a run resumes from its last epoch; add `--retrain` to train again stages
  whose parameters changed.

**Several machines** (here 2 machines with 8 GPUs each): run the same command on every machine, with the same
`--rdzv_id` and the address of the first machine:

```bash
torchrun --nnodes 2 --nproc_per_node 8 --rdzv_id landmarks1 --rdzv_backend c10d \\
    --rdzv_endpoint node0.example.org:29500 -m landmarks_lib.train \\
    --data-dir /shared/thousand-landmarks --run-dir /shared/runs/gpu16 --params params/gpu.yaml
```

The data folder and the run folder must be the same shared folder on every machine (every rank reads the
checkpoints to resume; the command refuses to start when a rank cannot see the run folder rank 0 wrote).
The cache folder (`cache_dir`, default `$LANDMARKS_CACHE` or `~/.cache/thousand-landmarks`) may be local to each
machine. The older static form works too: `--nnodes 2 --node_rank 0|1 --master_addr node0 --master_port 29500`.

**From a notebook** (Jupyter, Colab, Kaggle, a cloud notebook with several GPUs): a notebook kernel is one process,
so launch the training as a separate command and then continue in the notebook with the run folder it wrote:

```python
!torchrun --standalone --nproc_per_node 2 -m landmarks_lib.train --data-dir {DATA_DIR} --run-dir {RUN_DIR} \\
    --params ../params/gpu.yaml
```

or, with output streamed into the cell and an error raised on failure:

```python
import subprocess, sys
subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "landmarks_lib.train", "--data-dir", DATA_DIR, "--run-dir", RUN_DIR,
                "--params", "../params/gpu.yaml"], check=True)
```

Then run the finetune and later steps on the same `run_dir` (they read `checkpoints/train_best.pt`,
`checkpoints/localizer_best.pt` and `history.csv`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from ..core import logs
from ..core import params as params_mod
from ..core.devices import select_device
from ..core.files import atomic_write_json
from ..training import distributed, engine
from .run_folder import RunFolder, RunFolderError
from .workflow import resolve_data_dir, run_info

LOG = logs.logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="landmarks train",
                                 description="Train the landmark models (localizer stage for face crops, then the "
                                             "train stage); one process, or several under torchrun.",
                                 epilog="Multi-GPU: torchrun --nproc_per_node N -m landmarks_lib.train ...")
    ap.add_argument("--data-dir", default=None, help="data folder, any format of docs/data.md (parameter data_dir; "
                                                     "empty = the embedded synthetic default in RUN_DIR/data)")
    ap.add_argument("--run-dir", required=True, help="run folder (parameter run_dir)")
    ap.add_argument("--params", default=None, help="YAML profile for a new run, e.g. params/gpu.yaml")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (repeatable); VALUE is typed by the parameter spec")
    ap.add_argument("--retrain", action="store_true", help="train again the stages whose parameters changed")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return ap


def _local_first(ctx: distributed.Context, fn, local: bool = True):
    """Run ``fn`` on the first process of each machine (``local``) or on rank 0, then (after a barrier) on the
    others: caches are built once per machine and shared files written once."""
    first = (ctx.local_rank if local else ctx.rank) == 0
    if not first:
        ctx.barrier()
    out = fn()
    if first:
        ctx.barrier()
    return out


def _write_run_files(params: dict, data_dir, run: RunFolder, ctx: distributed.Context) -> None:

    params_mod.dump(params, run.file("params.yaml"))
    info = run_info(params, data_dir)
    info["distributed"] = {"world_size": ctx.world_size, "backend": ctx.backend, "device": str(ctx.device),
                           "per_rank_batch": max(1, params["batch_size"] // ctx.world_size),
                           "nodes": max(1, ctx.world_size // max(1, ctx.local_world_size))}
    atomic_write_json(run.file("run_info.json"), info)


def _check_shared_run_dir(params: dict, run: RunFolder, ctx: distributed.Context) -> None:
    """Every rank must see rank 0's ``params.yaml`` with its own values (shared folder, same command)."""
    path = run.file("params.yaml")
    if not os.path.exists(path):
        raise RuntimeError(f"rank {ctx.rank}: {path} (written by rank 0) is not visible here; the run folder must be "
                           f"a folder shared by every machine")
    diff = engine.changed(params_mod.resolve(run.path), params)
    if diff:
        raise RuntimeError(f"rank {ctx.rank}: parameters differ from rank 0's ({'; '.join(diff)}); launch every "
                           f"machine with the same command")


def run(params: dict, ctx: distributed.Context | None = None, retrain: bool = False, progress: bool = True) -> dict:
    """Train the localizer (``face`` crops only) and train stages under ``ctx``, writing the run folder (rank 0
    only).

    Args:
        params: resolved parameters; an empty ``data_dir`` means the embedded synthetic dataset in
            ``<run_dir>/data`` (``workflow.resolve_data_dir``), and the engine gets the resolved folder.
        ctx: ``distributed.Context``; default single process.
        retrain: train again the stages whose checkpoints were made with other parameters or data.
    Returns:
        ``{"localizer": fit result or None, "train": fit result, "data_dir": str, "world_size": int,
        "ranks_agree": bool, "time_s": float}``; ``ranks_agree``: every rank's validation history is identical.
    Raises:
        RuntimeError: the run folder is not shared between ranks, ranks have different parameters, or ranks
            disagree on validation. engine.StageChanged: a stage's parameters changed, without ``retrain``.
        RunFolderError: not a run folder, or in use by another process.
    """

    ctx = ctx or distributed.Context(device=torch.device(_single_device(params)))
    t0 = time.time()
    engine.apply_threads(params)
    folder = RunFolder(params["run_dir"])
    if ctx.is_main:
        folder.create(created_by="landmarks_lib.train").lock("landmarks_lib.train")
    try:
        return _train(params, ctx, folder, retrain, progress, t0, resolve_data_dir)
    finally:
        folder.unlock()


def _train(params, ctx, folder, retrain, progress, t0, resolve_data_dir) -> dict:
    data_dir = _local_first(ctx, lambda: resolve_data_dir(params), local=False)
    if ctx.is_main:
        _write_run_files(params, data_dir, folder, ctx)
        if ctx.world_size > 1 and params["batch_size"] % ctx.world_size:
            LOG.warning(f"warning: batch_size {params['batch_size']} is not a multiple of {ctx.world_size} processes; "
                        f"each takes {params['batch_size'] // ctx.world_size} images per step")
    ctx.barrier()
    _check_shared_run_dir(params, folder, ctx)
    params = dict(params, data_dir=data_dir)

    def prepare():
        d = engine.load_train_data(params, progress=progress and ctx.is_main)
        for s in (["localizer"] if params["crop_mode"] == "face" else []) + ["train"]:
            engine.stage_cache(engine.stage_recipe(params, s), d, params, progress and ctx.is_main)
        return d

    data = _local_first(ctx, prepare)
    if progress and ctx.is_main:
        LOG.info(f"training on {ctx.world_size} process(es), {ctx.device}"
                 f"{', backend ' + ctx.backend if ctx.backend else ''}: {len(data.train_idx)} train / "
                 f"{len(data.val_idx)} validation images ({data.split} split)")
    res = engine.train_all(params, data, folder, retrain=retrain, progress=progress, dist=ctx)
    mine = [(r["stage"], r["epoch"], r["val_mse"]) for st in ("localizer", "train") if res[st]
            for r in res[st]["history"]]
    every = ctx.gather_objects(mine)
    agree = all(_same(every[0], o) for o in every[1:])
    if not agree:
        raise RuntimeError(f"validation MSE differs between ranks: {every}")
    res.update(data_dir=data_dir, world_size=ctx.world_size, ranks_agree=agree, time_s=time.time() - t0)
    if progress and ctx.is_main:
        LOG.info(f"done in {res['time_s']:.0f} s: best validation MSE {res['train']['best_val_mse']:.3f} px^2 -> "
                 f"{res['train']['best']}")
    return res


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[:2] != y[:2]:
            return False
        if not (x[2] == y[2] or (math.isnan(x[2]) and math.isnan(y[2]))):
            return False
    return True


def _single_device(params: dict) -> str:

    return str(select_device(params["device"]))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = params_mod.resolve(run_dir=args.run_dir, profile=args.params, overrides=[tuple(x) for x in args.p],
                                    data_dir=args.data_dir)
    except params_mod.ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = distributed.init_from_env(params["device"])
    try:
        run(params, ctx, retrain=args.retrain, progress=not args.quiet)
    except (engine.StageChanged, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # data, images, a full disk: one line naming the file
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown(ctx)
    return 0
