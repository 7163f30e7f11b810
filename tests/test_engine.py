"""Training engine: checkpoints, resume after SIGKILL, reproducibility, two-stage face crops, splits, losses."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from landmarks_lib import engine, params as P, predict, synthetic, workflow
from landmarks_lib.io import read_test_points

TINY = dict(backbone="resnet18", pretrained=False, crop_mode="letterbox", crop_size=32, coarse_crop_size=32,
            epochs=2, coarse_epochs=1, finetune_epochs=0, batch_size=8, threads=1, device="cpu", num_workers=0,
            lr=3e-3, val_fraction=0.25, tta_flip=True, rotate_deg=5.0)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "data"
    synthetic.write_dataset(d, n_train=32, n_test=6, num_points=24, seed=1, min_size=64, max_size=96)
    return str(d)


def _params(data_dir, run_dir, cache_dir, **kw):
    return P.resolve(None, None, **{**TINY, "data_dir": data_dir, "run_dir": str(run_dir),
                                    "cache_dir": str(cache_dir), **kw})


def _cli(data_dir, run_dir, cache_dir, **kw):
    cmd = [sys.executable, "-m", "landmarks_lib.train", "--data-dir", data_dir, "--run-dir", str(run_dir)]
    for k, v in {**TINY, "cache_dir": str(cache_dir), **kw}.items():
        cmd += ["-p", k, str(v).lower() if isinstance(v, bool) else str(v)]
    return cmd


def test_params_key_counts_the_data_folder_not_its_spelling(tmp_path, monkeypatch):
    """``train.py`` keeps ``--data-dir`` as typed, the pipeline makes it absolute: one folder, one key per stage."""
    from landmarks_lib import pipeline, train

    monkeypatch.chdir(tmp_path)
    for d in ("data", "data2"):
        (tmp_path / d).mkdir()
    os.symlink(tmp_path / "data", tmp_path / "link")
    args = train.build_parser().parse_args(["--data-dir", "data", "--run-dir", "runs/x"])
    rel = train.resolve_params(args)
    assert rel["data_dir"] == "data"
    spellings = [rel, pipeline.resolve_params(None, (), "data", "runs/x"), {**rel, "data_dir": "./data/"},
                 {**rel, "data_dir": str(tmp_path / "link")}, {**rel, "run_dir": "elsewhere", "device": "cpu"}]
    other = {**rel, "data_dir": "data2"}
    for stage in ("coarse", "train"):
        keys = {engine.params_key(p, stage) for p in spellings}
        assert len(keys) == 1
        assert engine.params_key(other, stage) not in keys
        assert engine.params_key({**rel, "epochs": rel["epochs"] + 1}, stage) not in keys
    assert engine.params_key(rel, "coarse") != engine.params_key(rel, "train")


@pytest.mark.parametrize("head", ["linear", "spatial", "softargmax"])
def test_checkpoint_round_trip(tiny_data, tmp_path, head):
    p = _params(tiny_data, tmp_path / "run", tmp_path / "cache", head=head)
    data = engine.load_train_data(p, progress=False)
    res = engine.fit(p, data, p["run_dir"], "train", progress=False)
    ck = predict.load_checkpoint(res["best"])  # weights_only=True inside
    meta = ck["meta"]
    assert meta["num_points"] == 24 and meta["crop_size"] == 32 and meta["crop_mode"] == "letterbox"
    assert meta["backbone"] == "resnet18" and len(meta["flip_perm"]) == 24 and meta["head"] == head
    model = predict.model_from_checkpoint(ck)
    assert type(model).__name__ == {"linear": "LandmarkModel", "spatial": "SpatialLandmarkModel",
                                    "softargmax": "SoftArgmaxLandmarkModel"}[head]
    if head == "softargmax":
        with pytest.raises(ValueError, match="normalize_targets"):
            engine.fit({**p, "normalize_targets": False}, data, str(tmp_path / "other"), "train", progress=False)
    c = engine.stage_cache(p, data, "train", progress=False)
    pred = predict.predict_cache(model, meta, c, data.val_idx)
    mse = float(np.mean((pred - data.points(data.val_idx)) ** 2))
    assert mse == pytest.approx(ck["val_mse"], rel=1e-6)
    hist = pd.read_csv(os.path.join(p["run_dir"], "history.csv"))
    assert list(hist.columns[:5]) == ["epoch", "stage", "train_loss", "val_mse", "lr"]
    assert len(hist) == 2 and hist["val_mse"].min() == pytest.approx(res["best_val_mse"])
    # a resume with other parameters is refused
    with pytest.raises(RuntimeError, match="other parameters"):
        engine.fit({**p, "lr": 0.5}, data, p["run_dir"], "train", progress=False)
    # ... and so is one on changed labels or another split (same parameters)
    import dataclasses

    moved = dataclasses.replace(data, table=dataclasses.replace(data.table, points=np.asarray(data.table.points) + 1))
    other_split = dataclasses.replace(data, train_idx=data.train_idx[1:])
    for changed in (moved, other_split):
        assert changed.data_key() != data.data_key()
        with pytest.raises(RuntimeError, match="other data"):
            engine.fit(p, changed, p["run_dir"], "train", progress=False)
    assert dataclasses.replace(data).data_key() == data.data_key()
    # a non-checkpoint file is a clear error
    bad = tmp_path / "bad.pt"
    torch.save({"x": 1}, bad)
    with pytest.raises(predict.CheckpointError, match="not a"):
        predict.load_checkpoint(bad)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_result(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kw = dict(epochs=3, max_train_images=32)
    full = tmp_path / "full"
    subprocess.run(_cli(tiny_data, full, tmp_path / "cache", **kw), check=True, env=env, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli(tiny_data, cut, tmp_path / "cache", **kw), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hist = cut / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (hist.exists() and len(pd.read_csv(hist)) >= 1):
        time.sleep(0.05)
    epoch_s = float(pd.read_csv(hist)["time_s"].iloc[0])
    time.sleep(min(0.4 * epoch_s, 2.0))  # inside the second epoch
    killed_during_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_during_run, "training finished before it could be killed"
    assert len(pd.read_csv(hist)) < 3
    subprocess.run(_cli(tiny_data, cut, tmp_path / "cache", **kw), check=True, env=env, capture_output=True)

    h_full, h_cut = pd.read_csv(full / "history.csv"), pd.read_csv(cut / "history.csv")
    np.testing.assert_array_equal(h_full["val_mse"].to_numpy(), h_cut["val_mse"].to_numpy())
    np.testing.assert_array_equal(h_full["train_loss"].to_numpy(), h_cut["train_loss"].to_numpy())
    a = predict.load_checkpoint(full / "checkpoints" / "train_last.pt")["state_dict"]
    b = predict.load_checkpoint(cut / "checkpoints" / "train_last.pt")["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _train_and_submit(data_dir, run_dir, cache_dir):
    p = _params(data_dir, run_dir, cache_dir)
    torch.set_num_threads(1)
    data = engine.load_train_data(p, progress=False)
    engine.train_all(p, data, p["run_dir"], progress=False)
    ck = workflow.final_checkpoint(p["run_dir"])
    _, vm = workflow.evaluate_validation(p, data, ck, progress=False)
    tp, pred = workflow.predict_test(p, data_dir, ck, progress=False)
    workflow.write_results(p, tp, pred, vm)
    return (run_dir / "submission.csv").read_bytes(), vm


def test_same_seed_gives_byte_identical_submission(tiny_data, tmp_path):
    s1, m1 = _train_and_submit(tiny_data, tmp_path / "a", tmp_path / "cache")
    s2, m2 = _train_and_submit(tiny_data, tmp_path / "b", tmp_path / "cache")
    assert s1 == s2
    assert m1 == m2 and np.isfinite(m1["val_mse"])
    tp = read_test_points(os.path.join(tiny_data, "test", "test_points.csv"))
    assert len(s1.decode().splitlines()) == len(tp) + 1


def test_face_mode_trains_coarse_and_embeds_it(tiny_data, tmp_path):
    p = _params(tiny_data, tmp_path / "run", tmp_path / "cache", crop_mode="face", epochs=1)
    data = engine.load_train_data(p, progress=False)
    res = engine.train_all(p, data, p["run_dir"], progress=False)
    assert res["coarse"] is not None
    ck = predict.load_checkpoint(res["train"]["best"])
    assert ck["coarse"]["meta"]["crop_mode"] == "letterbox" and ck["meta"]["crop_mode"] == "face"
    names = [data.names[i] for i in data.val_idx]
    pts = predict.predict_images(ck, data.image_dir, names, p["cache_dir"], progress=False)
    assert pts.shape == (len(names), 24, 2) and np.isfinite(pts).all()
    hist = pd.read_csv(os.path.join(p["run_dir"], "history.csv"))
    assert hist["stage"].tolist() == ["coarse", "train"]


def test_group_split_keeps_people_apart(tiny_data):
    names = pd.read_csv(os.path.join(tiny_data, "train", "groups.csv"), sep="\t")
    tr, va, mode = engine.split_indices(names["file_name"].tolist(), tiny_data, 0.25, seed=0)
    assert mode == "groups" and len(va) > 0
    g = names["group"].to_numpy()
    assert not set(g[tr]) & set(g[va])
    tr2, va2, _ = engine.split_indices(names["file_name"].tolist(), tiny_data, 0.25, seed=0)
    assert np.array_equal(va, va2)
    _, va3, mode3 = engine.split_indices(names["file_name"].tolist(), tiny_data, 0.25, seed=0, mode="random")
    assert mode3 == "random" and len(va3) == 8


def test_losses():
    t = torch.zeros(1, 1, 2)
    p = torch.tensor([[[3.0, 0.5]]])
    assert float(engine.landmark_loss(p, t, "mse")) == pytest.approx((9 + 0.25) / 2)
    assert float(engine.landmark_loss(p, t, "l1")) == pytest.approx(1.75)
    assert float(engine.landmark_loss(p, t, "smooth_l1")) == pytest.approx((2.5 + 0.125) / 2)
    wing = float(engine.landmark_loss(torch.tensor([[[1.0, 12.0]]]), torch.zeros(1, 1, 2), "wing"))
    c = 10 - 10 * np.log(1 + 10 / 2)
    assert wing == pytest.approx((10 * np.log(1 + 0.5) + 12 - c) / 2)
    w = torch.tensor([1.0, 0.0])
    two = torch.tensor([[[1.0, 1.0]], [[5.0, 5.0]]])
    assert float(engine.landmark_loss(two, torch.zeros(2, 1, 2), "l1", w)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown loss"):
        engine.landmark_loss(p, t, "huber2")


@pytest.mark.parametrize("kind", ["mse", "l1", "smooth_l1", "wing"])
def test_nan_targets_are_left_out_of_the_loss(kind):
    """Unknown points (NaN targets: unmatched points of a flipped sample) neither count nor give gradients."""
    pred = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], [[2.0, 2.0], [1.0, 1.0], [4.0, 0.0]]],
                        requires_grad=True)
    target = torch.zeros(2, 3, 2)
    target[0, 1] = float("nan")
    loss = engine.landmark_loss(pred, target, kind)
    keep0 = engine.landmark_loss(pred[:1, [0, 2]], target[:1, [0, 2]], kind)
    keep1 = engine.landmark_loss(pred[1:], target[1:], kind)
    assert loss.item() == pytest.approx((keep0.item() + keep1.item()) / 2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad[0, 1].abs().max()) == 0.0
    assert float(pred.grad[0, 0].abs().max()) > 0


def test_synthetic_default_is_regenerated_when_its_parameters_change(tmp_path):
    p = P.resolve(None, None, run_dir=str(tmp_path / "run"), synthetic_train=6, synthetic_test=2,
                  synthetic_points=20)
    d = workflow.resolve_data_dir(p)
    assert len(os.listdir(os.path.join(d, "train", "images"))) == 6
    stamp = os.path.getmtime(os.path.join(d, "train", "landmarks.csv"))
    assert workflow.resolve_data_dir(p) == d  # same parameters: reused
    assert os.path.getmtime(os.path.join(d, "train", "landmarks.csv")) == stamp
    workflow.resolve_data_dir({**p, "synthetic_train": 8})
    assert len(os.listdir(os.path.join(d, "train", "images"))) == 8


def test_final_checkpoint_is_the_better_of_train_and_finetune(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    with pytest.raises(FileNotFoundError, match="train step"):
        workflow.final_checkpoint(tmp_path)

    def write(stage, val):
        engine.save_checkpoint(ck / f"{stage}_best.pt", {"format": engine.CHECKPOINT_FORMAT, "val_mse": val})

    write("train", 5.0)
    assert workflow.final_checkpoint(tmp_path).endswith("train_best.pt")
    write("finetune", 6.0)  # finetuning made it worse: keep the trained model
    assert workflow.final_checkpoint(tmp_path).endswith("train_best.pt")
    write("finetune", 4.0)
    assert workflow.final_checkpoint(tmp_path).endswith("finetune_best.pt")
    write("train", float("nan"))  # no validation split: nothing to compare, the finetuned model
    write("finetune", float("nan"))
    assert workflow.final_checkpoint(tmp_path).endswith("finetune_best.pt")


def test_train_data_points_are_continuous_labels_plus_half(tmp_path):
    synthetic.write_dataset(tmp_path / "d", n_train=6, n_test=1, num_points=15, seed=1, min_size=48, max_size=56)
    p = P.resolve(None, None, data_dir=str(tmp_path / "d"), cache_dir=str(tmp_path / "c"), val_fraction=0.0)
    data = engine.load_train_data(p, progress=False)
    assert data.table.points.dtype == np.int16
    pts = data.points([1, 4])
    assert pts.dtype == np.float32
    np.testing.assert_array_equal(pts, data.table.points[[1, 4]].astype(np.float32) + 0.5)
