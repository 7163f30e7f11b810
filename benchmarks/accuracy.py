"""Accuracy benchmark: the course baseline against our ``params/cpu.yaml`` recipe, same wall-clock budget each.

``python benchmarks/accuracy.py --data-dir DIR --budget-min M [--json] [--work-dir DIR]``

On the training images of ``DIR`` (the stand-in by default), split by ``train/groups.csv`` (people never cross the
split), it trains one recipe after the other, each for ``M`` minutes of training (the epochs are planned from a
measured step rate so that cosine schedules finish, and training also stops on time), then reports on all validation
images, end to end from the raw images as for a submission: MSE in original pixels (all images, and without those
whose labels the robust label-noise rule flags), NME (percent of sqrt(w*h) of the landmarks' box), the robustness
set's ``robust_mse``, ``robust_nme`` and ``robust_off_face`` (``landmarks_lib.robustness``: each validation image
re-framed once), and wall time.

Course baseline (the public course's recipe): scale the shorter side to 128 and centre-crop; inputs with
mean = std = 0.5; ImageNet MobileNetV2 with a linear head of 2K outputs in crop pixels; MSE loss; Adam lr 1e-3 with
AMSGrad; batch 64; no augmentation, no schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COURSE_BASELINE = dict(
    backbone="mobilenet_v2", pretrained=True, crop_mode="center", crop_size=128, input_norm="half",
    normalize_targets=False, optimizer="adam", amsgrad=True, lr=1e-3, weight_decay=0.0, batch_size=64,
    scheduler="none", loss="mse", augment=False, flip=False, tta_flip=False, photometric=0.0, grad_clip=0.0,
    finetune_epochs=0, dropout=0.0,
)


EPOCH_KEYS = {"localizer": "localizer_epochs", "train": "epochs", "finetune": "finetune_epochs"}


def measure_rate(p, data, stage, steps=3) -> float:
    """Training images per second of a stage's model (a training step on random inputs, a few steps after one
    warm-up: ``engine.train_step`` for landmark models, the face-box loss for a face-box localizer)."""
    from landmarks_lib.models import codecs, facebox, landmark
    from landmarks_lib.training import engine

    r = engine.stage_recipe(p, stage)
    size, batch = r["crop_size"], r["batch_size"]
    boxes = r["head"] == codecs.HEAD
    if boxes:
        m = facebox.build_localizer(r["backbone"])
    else:
        m = landmark.build_model(r["backbone"], data.table.num_points, False, head=r["head"], crop_size=size)
    x = torch.randn(batch, 3, size, size)
    if p["channels_last"]:  # as engine.fit trains
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = engine.make_optimizer(r, m, r["lr"])
    target = torch.rand(batch, data.table.num_points, 2) * size
    codec = codecs.FaceBoxCodec(size) if boxes else None
    box_target = codec.encode(torch.rand(batch, 2, 3) * size, torch.ones(batch, 2, dtype=torch.bool)) if boxes else None
    w = torch.ones(batch)
    t = None
    for i in range(steps + 1):
        if i == 1:
            t = time.time()
        if boxes:
            engine.optimise(facebox.facebox_loss(m(x), box_target), opt, None, r)
        else:
            engine.train_step(m, opt, None, x, target, w, r, size)
    return batch * steps / (time.time() - t)


def plan(p, data, budget_min: float) -> tuple[dict, dict]:
    """Epochs per stage so that the stages together take about ``budget_min`` minutes, and each stage's share in
    minutes (its ``time_budget_min``, so it stops on time). Shares follow the recipe's own epoch counts."""
    stages = ["localizer"] if p["crop_mode"] == "face" else []
    stages += ["train"] + (["finetune"] if p["finetune_epochs"] else [])
    n = len(data.train_idx)
    cost = {s: p[EPOCH_KEYS[s]] * n / measure_rate(p, data, s if s != "finetune" else "train") for s in stages}
    total = sum(cost.values())
    scale = budget_min * 60 * 0.92 / total  # leave room for validation passes
    out = dict(p, time_budget_min=0.0, **{EPOCH_KEYS[s]: max(1, int(round(p[EPOCH_KEYS[s]] * scale)))
                                          for s in stages})
    return out, {s: budget_min * cost[s] / total for s in stages}


def run_recipe(name, p, data, work_dir, budget_min) -> dict:
    from landmarks_lib.runs import workflow
    from landmarks_lib.runs.run_folder import RunFolder
    from landmarks_lib.training import engine

    run = RunFolder(os.path.join(work_dir, name))
    if run.is_run():  # a measurement, not a resume: start from scratch every time
        shutil.rmtree(run.path)
    run.create("benchmarks/accuracy.py")
    q, budgets = plan(dict(p, run_dir=run.path), data, budget_min)
    t0 = time.time()
    if q["crop_mode"] == "face":
        engine.fit(dict(q, time_budget_min=budgets["localizer"]), data, run, "localizer", progress=False)
    engine.fit(dict(q, time_budget_min=budgets["train"]), data, run, "train", progress=False)
    if q["finetune_epochs"]:
        workflow.run_finetune(dict(q, time_budget_min=budgets["finetune"]), data, run, progress=False)
    else:
        workflow.write_model(q, run)
    train_s = time.time() - t0
    models = workflow.ensemble_models(q)
    _, m = workflow.evaluate_validation(q, data, models, exclude_flagged=True, progress=False)
    m.update(workflow.evaluate_robustness(q, data, models, progress=False)[0])
    return {"recipe": name, "train_min": round(train_s / 60, 2), "total_min": round((time.time() - t0) / 60, 2),
            "epochs": {k: q[k] for k in EPOCH_KEYS.values()},
            **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "datasets", "thousand-standin"))
    ap.add_argument("--budget-min", type=float, default=30.0, help="training minutes per recipe")
    ap.add_argument("--params", default=os.path.join(REPO, "params", "cpu.yaml"), help="our recipe")
    ap.add_argument("--work-dir", default=os.path.join(REPO, "runs", "bench-accuracy"))
    ap.add_argument("--recipes", default="course_baseline,ours")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    sys.path.insert(0, REPO)
    from landmarks_lib.core import params as P
    from landmarks_lib.training import engine

    ours = P.resolve(profile=a.params, data_dir=a.data_dir, overrides={"val_split": "groups"})
    base = P.resolve(data_dir=a.data_dir, overrides={
        **COURSE_BASELINE, "seed": ours["seed"], "val_fraction": ours["val_fraction"], "val_split": "groups",
        "cache_dir": ours["cache_dir"], "noise_threshold": ours["noise_threshold"], "threads": ours["threads"]})
    data = engine.load_train_data(ours, progress=False)
    results = []
    for name in a.recipes.split(","):
        p = base if name == "course_baseline" else ours
        r = run_recipe(name, p, data, a.work_dir, a.budget_min)
        results.append(r)
        if not a.json:
            print(json.dumps(r), flush=True)
    out = {"budget_min": a.budget_min, "n_train": int(len(data.train_idx)), "n_val": int(len(data.val_idx)),
           "split": data.split, "results": results}
    if len(results) == 2:
        out["ratio_mse_baseline_ours"] = round(results[0]["val_mse"] / results[1]["val_mse"], 2)
    if a.json:
        print(json.dumps(out))
    else:
        print("\nrecipe            train min   val MSE   val MSE (clean)   val NME %   robust MSE   off face")
        for r in results:
            print(f"{r['recipe']:<17} {r['train_min']:>9} {r['val_mse']:>9.2f} {r.get('val_mse_clean', np.nan):>17.2f}"
                  f" {r['val_nme']:>11.2f} {r.get('robust_mse', np.nan):>12.2f} {r.get('robust_off_face', 0):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
