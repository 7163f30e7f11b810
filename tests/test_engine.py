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
from floats import assert_close

from landmarks_lib.core import params as P
from landmarks_lib.data import synthetic
from landmarks_lib.data.tables import read_test_points
from landmarks_lib.inference import passes, predict
from landmarks_lib.models import networks
from landmarks_lib.runs import workflow
from landmarks_lib.runs.run_folder import RunFolder
from landmarks_lib.training import engine

TINY = dict(backbone="resnet18", pretrained=False, crop_mode="letterbox", crop_size=32, localizer_crop_size=32,
            epochs=2, localizer_epochs=1, finetune_epochs=0, batch_size=8, localizer_batch_size=8, threads=1,
            device="cpu", num_workers=0, lr=3e-3, val_fraction=0.25, tta_flip=True, rotate_deg=5.0)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "data"
    synthetic.write_dataset(d, n_train=32, n_test=6, num_points=24, seed=1, min_size=64, max_size=96)
    return str(d)


def _params(data_dir, run_dir, cache_dir, **kw):
    return P.resolve(run_dir=str(run_dir), data_dir=data_dir, overrides={**TINY, "cache_dir": str(cache_dir), **kw})


def _cli(data_dir, run_dir, cache_dir, **kw):
    cmd = [sys.executable, "-m", "landmarks_lib.train", "--data-dir", data_dir, "--run-dir", str(run_dir)]
    for k, v in {**TINY, "cache_dir": str(cache_dir), **kw}.items():
        cmd += ["-p", k, str(v).lower() if isinstance(v, bool) else str(v)]
    return cmd


class ReadOnly(dict):
    """A parameter dict that fails on any name outside ``allowed``: proves what a stage reads."""

    def __init__(self, params, allowed):
        super().__init__(params)
        self.allowed = set(allowed)

    def __getitem__(self, k):
        if k not in self.allowed:
            raise AssertionError(f"read {k!r}, outside the allowed scopes")
        return super().__getitem__(k)

    def get(self, k, default=None):
        return self[k] if k in self else default


def _another(spec):
    """A valid value other than the default."""
    if spec.kind is bool:
        return not spec.default
    if spec.choices:
        return next(c for c in spec.choices if c != spec.default)
    if spec.check == "backbone":
        return "resnet34"
    if spec.check == "scales":
        return "0.9,1.0"
    if spec.check == "localizer_size":
        return spec.default + 16
    if spec.kind is str:
        return spec.default if spec.check else spec.default + "x"
    step = 1 if spec.kind is int else 0.05
    return spec.default + step if spec.high is None or spec.default + step <= spec.high else spec.default - step


def test_stage_keys_hash_only_the_scopes_each_stage_reads():
    p = P.resolve()
    for stage in engine.STAGES:
        key = engine.stage_key(p, stage)
        for name, spec in P.SPEC.items():
            if spec.check in ("data_dir", "runs"):
                continue
            q = dict(p, **{name: P.coerce(name, _another(spec))})
            assert (engine.stage_key(q, stage) != key) == (spec.scope in engine.STAGE_SCOPES[stage]), (stage, name)


@pytest.mark.parametrize("stage", ["localizer", "train"])
def test_a_stage_reads_nothing_outside_its_scopes(tiny_data, tmp_path, stage):
    from landmarks_lib.runs.run_folder import RunFolder

    p = _params(tiny_data, tmp_path / "run", tmp_path / "cache", crop_mode="face", epochs=1)
    data = engine.load_train_data(p, progress=False)
    allowed = P.names_in(*engine.STAGE_SCOPES[stage], "runtime")
    run = RunFolder(p["run_dir"]).create("test")
    res = engine.fit(ReadOnly(p, allowed), data, run, stage, progress=False)
    assert os.path.exists(res["best"])
    with pytest.raises(AssertionError, match="outside"):
        ReadOnly(p, allowed)["num_figures"]


@pytest.mark.parametrize("head", ["linear", "spatial", "softargmax"])
def test_checkpoint_round_trip(tiny_data, tmp_path, head):
    from landmarks_lib.models import checkpoint
    from landmarks_lib.runs.run_folder import RunFolder

    p = _params(tiny_data, tmp_path / "run", tmp_path / "cache", head=head)
    run = RunFolder(p["run_dir"]).create("test")
    data = engine.load_train_data(p, progress=False)
    res = engine.fit(p, data, run, "train", progress=False)
    ck = checkpoint.load(res["best"], "stage")  # weights_only=True inside
    assert ck["finished"] and ck["scope_key"] == engine.stage_key(p, "train") and ck["data_key"] == data.data_key()
    assert ck["params"] == engine.stage_params(p, "train") and not os.path.exists(run.checkpoint("train", "last"))
    meta = ck["meta"]
    assert meta["num_points"] == 24 and meta["crop_size"] == 32 and meta["crop_mode"] == "letterbox"
    assert meta["backbone"] == "resnet18" and len(meta["flip_perm"]) == 24 and meta["head"] == head
    model = networks.network(ck)
    assert type(model).__name__ == {"linear": "LandmarkModel", "spatial": "SpatialLandmarkModel",
                                    "softargmax": "SoftArgmaxLandmarkModel"}[head]
    if head == "softargmax":
        with pytest.raises(ValueError, match="normalize_targets"):
            engine.fit({**p, "normalize_targets": False}, data, RunFolder(tmp_path / "other"), "train",
                       progress=False)
    c = engine.stage_cache(engine.stage_recipe(p, "train"), data, p, progress=False)
    pred = passes.predict_cache(model, meta, c, data.val_idx)
    mse = float(np.mean((pred - data.points(data.val_idx)) ** 2))
    assert mse == pytest.approx(ck["val_mse"], rel=1e-6)
    hist = run.read_history()
    assert list(hist.columns[:5]) == ["epoch", "stage", "train_loss", "val_mse", "lr"]
    assert len(hist) == 2 and hist["val_mse"].min() == pytest.approx(res["best_val_mse"])
    # a finished stage is not trained again, whatever the runtime, inference or figures values ...
    again = engine.fit({**p, "num_figures": 3, "tta_flip": False, "threads": 2}, data, run, "train", progress=False)
    assert again["best_val_mse"] == pytest.approx(res["best_val_mse"]) and len(run.read_history()) == 2
    # ... a change of a value it reads is refused, listing it, unless retrain
    with pytest.raises(engine.StageChanged, match=r"lr: 0.003 -> 0.5.*Stages affected: train, finetune"):
        engine.fit({**p, "lr": 0.5}, data, run, "train", progress=False)
    # ... and so is one on changed labels or another split (same parameters)
    import dataclasses

    moved = dataclasses.replace(data, table=dataclasses.replace(data.table, points=np.asarray(data.table.points) + 1))
    other_split = dataclasses.replace(data, train_idx=data.train_idx[1:])
    for changed in (moved, other_split):
        assert changed.data_key() != data.data_key()
        with pytest.raises(engine.StageChanged, match="training data"):
            engine.fit(p, changed, run, "train", progress=False)
    assert dataclasses.replace(data).data_key() == data.data_key()
    # a non-checkpoint file, an old format and the wrong kind are clear errors
    bad = tmp_path / "bad.pt"
    torch.save({"x": 1}, bad)
    with pytest.raises(checkpoint.CheckpointError, match="not a"):
        checkpoint.load(bad)
    torch.save({"format": "thousand-landmarks/1", "meta": {}}, bad)
    with pytest.raises(checkpoint.CheckpointError, match="'thousand-landmarks/1' is no longer supported"):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError, match="model.pt"):
        checkpoint.load(res["best"], "model")
    res2 = engine.fit({**p, "lr": 0.5}, data, run, "train", retrain=True, progress=False)
    assert checkpoint.load(res2["best"], "stage")["params"]["lr"] == 0.5


def test_scheduler_warm_up_then_cosine():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched, per_step = engine.make_scheduler({"scheduler": "cosine", "warmup_epochs": 1.0}, opt, 1.0, 3, 4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert per_step
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    assert_close(lrs[4:], [0.5 * (1 + np.cos(np.pi * t / 8)) for t in range(8)])


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
    from landmarks_lib.models import checkpoint

    a = checkpoint.load(full / "checkpoints" / "train_best.pt")["state_dict"]
    b = checkpoint.load(cut / "checkpoints" / "train_best.pt")["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _train_and_submit(data_dir, run_dir, cache_dir):
    from landmarks_lib.runs.run_folder import RunFolder

    p = _params(data_dir, run_dir, cache_dir)
    run = RunFolder(run_dir).create("test")
    torch.set_num_threads(1)
    data = engine.load_train_data(p, progress=False)
    engine.train_all(p, data, run, progress=False)
    workflow.write_model(p, run)
    models = workflow.ensemble_models(p)
    _, vm = workflow.evaluate_validation(p, data, models, progress=False)
    tp, pred = workflow.predict_test(p, data_dir, models, progress=False)
    workflow.write_results(p, run, tp, pred, vm)
    return (run_dir / "submission.csv").read_bytes(), vm


def test_same_seed_gives_byte_identical_submission(tiny_data, tmp_path):
    s1, m1 = _train_and_submit(tiny_data, tmp_path / "a", tmp_path / "cache")
    s2, m2 = _train_and_submit(tiny_data, tmp_path / "b", tmp_path / "cache")
    assert s1 == s2
    assert m1 == m2 and np.isfinite(m1["val_mse"])
    tp = read_test_points(os.path.join(tiny_data, "test", "test_points.csv"))
    assert len(s1.decode().splitlines()) == len(tp) + 1


def test_face_mode_trains_the_localizer_and_the_model_holds_both(tiny_data, tmp_path):
    from landmarks_lib.models import checkpoint
    from landmarks_lib.runs.run_folder import RunFolder

    p = _params(tiny_data, tmp_path / "run", tmp_path / "cache", crop_mode="face", epochs=1)
    run = RunFolder(p["run_dir"]).create("test")
    data = engine.load_train_data(p, progress=False)
    res = engine.train_all(p, data, run, progress=False)
    assert res["localizer"] is not None
    assert "localizer" not in checkpoint.load(res["train"]["best"])  # stage checkpoints do not embed each other
    assert workflow.write_model(p, run) == "train"
    model = checkpoint.load_model(run.path)
    assert model["localizer"]["meta"]["crop_mode"] == "letterbox" and model["face"]["meta"]["crop_mode"] == "face"
    names = tuple(data.names[i] for i in data.val_idx)
    pts = predict.predict_images(model, predict.ImageSet(data.image_dir, names, progress=False))
    assert pts.shape == (len(names), 24, 2) and np.isfinite(pts).all()
    assert run.read_history()["stage"].tolist() == ["localizer", "train"]


def test_a_weak_model_flags_no_exact_synthetic_label(tmp_path):
    """Exact labels (the synthetic generator's) judged by a model after 2 epochs: the training errors alone have
    outliers (hard drawings), but none stands above the model's own validation errors, so nothing is flagged."""
    from landmarks_lib.runs.run_folder import RunFolder
    from landmarks_lib.training import noise

    d = tmp_path / "data"
    synthetic.write_dataset(d, n_train=120, n_test=2, num_points=24, seed=2, min_size=64, max_size=96)
    p = _params(str(d), tmp_path / "run", tmp_path / "cache", epochs=2, val_fraction=0.25)
    run = RunFolder(p["run_dir"]).create("test")
    data = engine.load_train_data(p, progress=False)
    assert len(data.val_idx) >= noise.MIN_REFERENCE
    engine.fit(p, data, run, "train", progress=False)
    table = workflow.find_noisy_labels(p, data, run.checkpoint("train"), progress=False)
    assert int(table["flagged"].sum()) == 0
    assert (table["weight"] == 1).all()


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
    p = P.resolve(run_dir=str(tmp_path / "run"), overrides=dict(synthetic_train=6, synthetic_test=2,
                                                                synthetic_points=20))
    d = workflow.resolve_data_dir(p)
    assert len(os.listdir(os.path.join(d, "train", "images"))) == 6
    stamp = os.path.getmtime(os.path.join(d, "train", "landmarks.csv"))
    assert workflow.resolve_data_dir(p) == d  # same parameters: reused
    assert os.path.getmtime(os.path.join(d, "train", "landmarks.csv")) == stamp
    workflow.resolve_data_dir({**p, "synthetic_train": 8})
    assert len(os.listdir(os.path.join(d, "train", "images"))) == 8


def test_final_stage_is_the_better_of_train_and_finetune(tmp_path):
    from landmarks_lib.models import checkpoint
    from landmarks_lib.runs.run_folder import RunFolder

    run = RunFolder(tmp_path).create("test")
    with pytest.raises(FileNotFoundError, match="train notebook"):
        workflow.final_stage(run)

    def write(stage, val):
        checkpoint.save(run.checkpoint(stage), {"kind": "stage", "val_mse": val})

    write("train", 5.0)
    assert workflow.final_stage(run) == "train"
    write("finetune", 6.0)  # finetuning made it worse: keep the trained model
    assert workflow.final_stage(run) == "train"
    write("finetune", 4.0)
    assert workflow.final_stage(run) == "finetune"
    write("train", float("nan"))  # no validation split: nothing to compare, the finetuned model
    write("finetune", float("nan"))
    assert workflow.final_stage(run) == "finetune"


def test_train_data_points_are_continuous_labels_plus_half(tmp_path):
    synthetic.write_dataset(tmp_path / "d", n_train=6, n_test=1, num_points=15, seed=1, min_size=48, max_size=56)
    p = P.resolve(data_dir=str(tmp_path / "d"), overrides={"cache_dir": str(tmp_path / "c"), "val_fraction": 0.0})
    data = engine.load_train_data(p, progress=False)
    assert data.table.points.dtype == np.int16
    pts = data.points([1, 4])
    assert pts.dtype == np.float32
    np.testing.assert_array_equal(pts, data.table.points[[1, 4]].astype(np.float32) + 0.5)


def test_localizer_max_images_trains_the_localizer_on_a_seeded_sample(tiny_data, tmp_path):
    p = _params(tiny_data, tmp_path / "run", tmp_path / "c", crop_mode="face", localizer_max_images=12)
    data = engine.load_train_data(p, progress=False)
    sub = engine.stage_data(p, data, "localizer")
    assert len(sub.names) == 12 and set(sub.names) <= set(data.names)
    assert sub.names == engine.stage_data(p, data, "localizer").names  # seeded
    train_names = {data.names[i] for i in data.train_idx}
    assert {sub.names[i] for i in sub.train_idx} == set(sub.names) & train_names  # each row keeps its side
    assert len(sub.train_idx) + len(sub.val_idx) == 12 and len(sub.val_idx) > 0
    np.testing.assert_array_equal(sub.table.points[3], data.table.points[data.names.index(sub.names[3])])
    np.testing.assert_array_equal(sub.flip_perm(), data.flip_perm())
    assert engine.stage_data(p, data, "train") is data
    assert engine.stage_data(dict(p, localizer_max_images=0), data, "localizer") is data
    run = RunFolder(str(tmp_path / "run")).create("tests")
    st = engine.build(p, data, run, "localizer", progress=False)
    assert len(st.cache) == 12 and st.cache.names == sub.names
    res = engine.fit(p, data, run, "localizer", progress=False)
    assert engine.finished_result(p, data, run, "localizer")["best"] == res["best"]
