"""The GPU path (``params/gpu.yaml``: bf16 autocast, channels-last, loader workers with pinned memory, augmentation
on the GPU) against the CPU path. Run with ``pytest -m cuda`` on a machine with a CUDA GPU
(``benchmarks/device_check.sh`` does); skipped elsewhere."""

import numpy as np
import pytest
import torch

from landmarks_lib.core import params as P
from landmarks_lib.data.loading import BatchSampler, CacheBatches, make_loader
from landmarks_lib.models import landmark
from landmarks_lib.runs.run_folder import RunFolder
from landmarks_lib.training import engine

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _setup(tiny_dataset, tmp_path, **over):
    p = P.resolve(data_dir=tiny_dataset["out_dir"], overrides=dict(
        {"cache_dir": str(tmp_path / "cache"), "crop_size": 64, "localizer_crop_size": 48, "epochs": 1,
         "localizer_epochs": 1, "batch_size": 8, "pretrained": False, "localizer_pretrained": False,
         "backbone": "mobilenet_v2", "localizer_backbone": "mobilenet_v2", "val_fraction": 0.25}, **over))
    data = engine.load_train_data(p, progress=False)
    recipe = engine.stage_recipe(p, "train")
    return p, data, recipe, engine.stage_cache(recipe, data, p, progress=False)


def test_augmented_batch_on_the_gpu_matches_the_cpu(tiny_dataset, tmp_path):
    p, data, recipe, cache = _setup(tiny_dataset, tmp_path)
    batch = CacheBatches(cache)[np.arange(8)]
    mean, std = landmark.input_normalization(recipe["backbone"], recipe["input_norm"])
    perm = torch.as_tensor(data.flip_perm())
    out = {}
    for dev in ("cpu", "cuda"):
        gen = torch.Generator().manual_seed(0)
        out[dev] = engine.prepare_batch(batch, recipe, torch.device(dev), recipe["crop_size"], cache.pad, mean, std,
                                        gen, perm, channels_last=dev == "cuda")
    x_cpu, pts_cpu = out["cpu"]
    x_gpu, pts_gpu = (t.cpu() for t in out["cuda"])
    assert x_gpu.shape == x_cpu.shape and torch.isfinite(x_gpu).all()
    assert (x_gpu - x_cpu).abs().max().item() < 2e-2  # bilinear warps: the same maps, other rounding
    np.testing.assert_allclose(pts_gpu.numpy(), pts_cpu.numpy(), atol=1e-3, equal_nan=True)


def test_loader_with_workers_and_pinned_memory_gives_the_same_batches(tiny_dataset, tmp_path):
    _, data, _, cache = _setup(tiny_dataset, tmp_path)
    sampler = BatchSampler(data.train_idx, 4, shuffle=True, seed=0)
    ref = [b["index"].tolist() for b in make_loader(cache, sampler, torch.device("cpu"), 0)]
    got = [b for b in make_loader(cache, sampler, torch.device("cuda"), 2)]
    assert [b["index"].tolist() for b in got] == ref
    assert all(b["images"].is_pinned() for b in got)


def test_bf16_channels_last_training_epoch_on_the_gpu(tiny_dataset, tmp_path):
    p, data, _, _ = _setup(tiny_dataset, tmp_path, device="cuda", amp=True, channels_last=True, num_workers=2)
    run = RunFolder(str(tmp_path / "run")).create("tests")
    res = engine.fit(p, data, run, "train", progress=False)
    assert len(res["history"]) == 1 and np.isfinite(res["best_val_mse"])
    assert np.isfinite(res["history"][0]["train_loss"])
