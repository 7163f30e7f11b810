"""Prediction: flip TTA, ensembles, the predict CLI, label-noise flags."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from floats import assert_close

from landmarks_lib.core import params as P
from landmarks_lib.core.coords import labels_to_points
from landmarks_lib.data import synthetic
from landmarks_lib.data.tables import read_landmarks
from landmarks_lib.inference import passes, predict
from landmarks_lib.models import checkpoint, networks
from landmarks_lib.training import engine, noise


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A letterbox model trained for one epoch; returns ``(params, data, model dict, run folder)``."""
    from landmarks_lib.runs import workflow
    from landmarks_lib.runs.run_folder import RunFolder

    root = tmp_path_factory.mktemp("pred")
    data_dir = root / "data"
    synthetic.write_dataset(data_dir, n_train=24, n_test=5, num_points=20, seed=3, min_size=64, max_size=80)
    p = P.resolve(run_dir=str(root / "run"), data_dir=str(data_dir), overrides=dict(
        cache_dir=str(root / "cache"), backbone="resnet18", pretrained=False, crop_mode="letterbox", crop_size=32,
        epochs=1, batch_size=8, threads=1, val_fraction=0.25))
    run = RunFolder(p["run_dir"]).create("test")
    data = engine.load_train_data(p, progress=False)
    engine.fit(p, data, run, "train", progress=False)
    workflow.write_model(p, run)
    return p, data, checkpoint.load_model(run.path), run


def _images(p, data, names=None):
    names = tuple(names if names is not None else (data.names[i] for i in data.val_idx))
    return predict.ImageSet(data.image_dir, names, progress=False)


class _Const(torch.nn.Module):
    """Outputs a fixed shape (target units) whatever the input."""

    def __init__(self, shape):
        super().__init__()
        self.shape = torch.as_tensor(shape, dtype=torch.float32)

    def forward(self, x):
        return self.shape.expand(x.shape[0], -1, -1)


def test_flip_tta_unflips_and_reindexes():
    # two mirror points (perm swaps them) and one midline point
    shape = torch.tensor([[-0.3, -0.1], [0.1, -0.1], [0.05, 0.2]])
    meta = {"crop_size": 40, "num_points": 3, "flip_perm": [1, 0, 2], "input_mean": [0.5] * 3,
            "input_std": [0.5] * 3, "normalize_targets": True}
    crops = np.zeros((2, 40, 40, 3), np.uint8)
    plain = passes.predict_crops(_Const(shape), meta, crops, tta_flip=False)
    tta = passes.predict_crops(_Const(shape), meta, crops, tta_flip=True)
    px = (shape.numpy() + 0.5) * 40
    np.testing.assert_allclose(plain[0], px, atol=1e-5)
    mirrored = px.copy()
    mirrored[:, 0] = 40 - mirrored[:, 0]
    np.testing.assert_allclose(tta[0], (px + mirrored[[1, 0, 2]]) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="mirror permutation"):
        passes.predict_crops(_Const(shape), {**meta, "flip_perm": None}, crops, tta_flip=True)
    # a point without a mirror partner keeps its unflipped prediction; the others are averaged as before
    odd = passes.predict_crops(_Const(shape), {**meta, "flip_unmatched": [2]}, crops, tta_flip=True)
    np.testing.assert_allclose(odd[0, 2], px[2], atol=1e-5)
    np.testing.assert_allclose(odd[0, :2], tta[0, :2], atol=1e-5)
    assert abs(odd[0, 2, 0] - tta[0, 2, 0]) > 1.0


def test_ensemble_averages_in_original_pixels(trained):
    p, data, model, _ = trained
    a = predict.predict_images(model, _images(p, data))
    shifted = dict(model, face=dict(model["face"], state_dict={k: v.clone()
                                                               for k, v in model["face"]["state_dict"].items()}))
    shifted["face"]["state_dict"]["head.bias"] += 0.1  # 0.1 of the crop to the right and down
    b = predict.predict_images(shifted, _images(p, data))
    both = predict.predict_images([model, shifted], _images(p, data))
    assert_close(both, (a + b) / 2, dtype=np.float32)
    assert np.abs(b - a).mean() > 1.0


def test_predict_cli_writes_points_faces_and_drawings_and_names_an_unreadable_image(trained, tmp_path):
    import pandas as pd

    p, data, model, run = trained
    img_dir = tmp_path / "images"
    shutil.copytree(os.path.join(p["data_dir"], "test", "images"), img_dir)
    out = tmp_path / "pred.csv"
    cmd = [sys.executable, "-m", "landmarks_lib.predict", "--checkpoint", run.path, "--images", str(img_dir),
           "--out", str(out), "--device", "cpu", "--draw", str(tmp_path / "drawn")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = read_landmarks(out)
    assert table.names == sorted(os.listdir(img_dir)) and table.points.shape == (5, 20, 2)
    direct = predict.predict_images(model, predict.ImageSet(str(img_dir), tuple(table.names), progress=False))
    np.testing.assert_allclose(labels_to_points(table.points), direct, atol=0.006)  # the file holds labels
    faces = pd.read_csv(tmp_path / "pred.faces.csv")
    assert list(faces.columns) == ["file_name", "crop_x0", "crop_y0", "crop_x1", "crop_y1", "confidence", "faces"] \
        and len(faces) == 5
    assert ((faces["crop_x1"] > faces["crop_x0"]) & (faces["confidence"] >= 0) & (faces["confidence"] <= 1)).all()
    assert sorted(os.listdir(tmp_path / "drawn")) == sorted(n + ".png" for n in table.names)
    (img_dir / table.names[2]).write_bytes(b"not an image")  # one unreadable image: named, the others written
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("error:") == 1 and table.names[2] in r.stderr
    assert "Traceback" not in r.stderr and len(read_landmarks(out).names) == 4
    r = subprocess.run([*cmd[:4], run.checkpoint("train"), *cmd[5:]], capture_output=True, text=True)
    assert r.returncode == 2 and "model.pt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_results_do_not_depend_on_the_batch_or_its_other_images(trained, backend):
    from landmarks_lib.inference.predictor import Predictor

    p, data, model, run = trained
    paths = [os.path.join(data.image_dir, n) for n in data.names[:9]]
    pr = Predictor.load(run.path, "cpu", backend=backend)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = pr.predict(paths)
        ones = [pr.predict([x]) for x in paths]
        sevens = pr.predict(paths[2:9])
        mixed = pr.predict(paths[::-1])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.concatenate([o.points for o in ones]), whole.points)
    assert np.array_equal(sevens.points, whole.points[2:9]) and np.array_equal(mixed.points[::-1], whole.points)
    assert whole.points.dtype == np.float32 and whole.boxes.shape == (9, 4) and whole.confidence.shape == (9,)
    fast = Predictor.load(run.path, "cpu", inference="fast", backend=backend)
    assert fast.settings.tta_flip is False and fast.settings.refine_steps == 0
    assert np.abs(fast.predict(paths).points - whole.points).mean() > 1e-3  # flip TTA changes the result
    arrays = pr.predict([data_image(data, n) for n in data.names[:2]])
    np.testing.assert_array_equal(arrays.points, whole.points[:2])  # arrays and paths alike
    bad = pr.predict([paths[0], os.path.join(data.image_dir, "missing.jpg")])
    assert list(bad.errors) == [1] and np.isnan(bad.points[1]).all() and bad.confidence[1] == 0


def data_image(data, name):
    from landmarks_lib.core.images import load_image

    return load_image(os.path.join(data.image_dir, name))


def test_noise_flags_and_weights():
    err = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 9.0])
    flags = noise.flag_outliers(err, 6.0)
    assert flags.tolist() == [False] * 5 + [True]
    np.testing.assert_array_equal(noise.sample_weights(err, flags, "drop"), [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(noise.sample_weights(err, flags, "keep"), np.ones(6))
    w = noise.sample_weights(err, flags, "downweight")
    assert w[5] == pytest.approx((1.1 / 9.0) ** 2) and (w[:5] == 1).all()
    with pytest.raises(ValueError, match="noise_action"):
        noise.sample_weights(err, flags, "ignore")


def test_a_model_too_weak_to_judge_flags_nothing():
    rng = np.random.default_rng(0)
    good_val = rng.normal(2.0, 0.2, 40)  # a good model: small validation errors ...
    train = np.concatenate([rng.normal(1.5, 0.15, 200), [9.0, 12.0]])  # ... and two wrong training labels
    assert np.flatnonzero(noise.flag_outliers(train, 6.0, reference=good_val)).tolist() == [200, 201]
    spread_val = np.concatenate([rng.normal(2.0, 0.2, 30), rng.normal(8.0, 2.0, 10)])  # good enough, wider
    assert np.flatnonzero(noise.flag_outliers(train, 6.0, reference=spread_val)).tolist() == [200, 201]
    weak_val = rng.lognormal(np.log(12.0), 0.6, 40)  # a weak model: large, widely spread validation errors
    assert np.median(weak_val) > noise.JUDGE_MAX_MEDIAN_NME
    weak_train = np.concatenate([rng.normal(6.0, 0.5, 200), [15.0, 18.0]])  # exact labels, two hard faces
    assert noise.flag_outliers(weak_train, 6.0).sum() == 2  # the training errors alone would flag exact labels
    assert noise.flag_outliers(weak_train, 6.0, reference=weak_val).sum() == 0
    assert noise.flag_outliers(weak_train, 6.0, reference=weak_val[:5]).sum() == 2  # too few to count


def test_training_errors_find_a_corrupted_label(trained):
    p, data, _, run = trained
    best = run.checkpoint("train")
    c = engine.stage_cache(engine.stage_recipe(p, "train"), data, p, progress=False)
    err = noise.training_errors(best, data, c)
    assert err.shape == (len(data.names),) and np.isfinite(err).all()
    # a label moved far off the face gets a much larger error; the others are unchanged
    bad = engine.TrainData(data.data_dir, data.image_dir, data.table, data.train_idx, data.val_idx, data.split)
    pts = np.asarray(data.table.points).copy()
    pts[0] = pts[0] + np.array([80, -60], dtype=pts.dtype)
    bad.table = type(data.table)(data.table.names, pts, [])
    err_bad = noise.training_errors(best, bad, c)
    assert err_bad[0] > err[0] + 100  # percent of the face size
    np.testing.assert_allclose(err_bad[1:], err[1:])
    # through onnxruntime (the CPU default, inference_backend auto): the same points within 2e-3 px
    idx = np.arange(min(12, len(data.names)))
    want = noise.training_predictions(best, data, c, idx)
    got = noise.training_predictions(best, data, c, idx, backend="onnx")
    assert np.abs(got - want).max() <= 2e-3
    np.testing.assert_allclose(noise.training_errors(best, data, c, idx, backend="onnx", chunk=5), err[idx],
                               atol=1e-3)


def test_scale_tta_averages_single_scale_passes(trained):
    p, data, model, _ = trained
    # a face model whose localizer is the letterbox model (it places its own crops; accuracy is not the point)
    face = dict(model, face=dict(model["face"], meta=dict(model["face"]["meta"], crop_mode="face", face_scale=1.25)),
                localizer=model["face"])

    def run(scales, refine=1):
        return predict.predict_images(face, _images(p, data), "cpu",
                                      passes.Inference(refine_steps=refine, tta_scales=P.parse_scales(scales)))

    one, small, large = run("1.0"), run((0.8,)), run([1.2])
    assert_close(run("0.8, 1.2"), (small + large) / 2, dtype=np.float32)
    assert_close(predict.predict_images(face, _images(p, data), "cpu", passes.Inference()), one, dtype=np.float32)
    assert np.abs(small - large).mean() > 0.1  # the scales really place other crops
    assert np.abs(run("1.0", refine=0) - one).mean() > 0.01  # and refinement re-places them
    assert P.parse_scales("0.92;1") == (0.92, 1.0) and P.parse_scales(1.1) == (1.1,)
    for bad in ("", "0", "-1", "a", "1,nan"):
        with pytest.raises(ValueError, match="scale"):
            P.parse_scales(bad)
    with pytest.raises(checkpoint.CheckpointError, match="localizer"):
        predict.predict_images(dict(face, localizer=None), _images(p, data))


def _with_facebox_localizer(model):
    """The fixture's model as a ``face`` model placed by an (untrained, seeded) face-box localizer."""
    from landmarks_lib.models import codecs, facebox

    torch.manual_seed(0)
    net = facebox.build_localizer("resnet18").eval()
    meta = dict(model["face"]["meta"], head=codecs.HEAD, crop_size=64, crop_mode="letterbox", stage="localizer")
    face = dict(model["face"], meta=dict(model["face"]["meta"], crop_mode="face", face_scale=1.25))
    return dict(model, face=face, localizer={"meta": meta, "state_dict": net.state_dict()})


def test_a_facebox_localizer_places_one_face_per_image_batch_invariantly(trained):
    from landmarks_lib.inference import passes
    from landmarks_lib.inference.predictor import Predictor

    p, data, model, _ = trained
    m = _with_facebox_localizer(model)
    paths = [os.path.join(data.image_dir, n) for n in data.names[:9]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pr = Predictor([m], "cpu", passes.Inference(refine_steps=0, tta_flip=False), micro_batch=4)
        whole = pr.predict(paths)
        ones = [pr.predict([x]) for x in paths]
        sevens = pr.predict(paths[2:9])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.concatenate([o.points for o in ones]), whole.points)
    assert np.array_equal(sevens.points, whole.points[2:9]) and np.array_equal(sevens.boxes, whole.boxes[2:9])
    assert whole.faces.dtype == np.int32 and (whole.faces >= 1).all()
    assert ((whole.confidence >= 0) & (whole.confidence <= 1)).all()
    # without refinement the crop is the chosen detection's box scaled by face_scale: check against a direct decode
    from landmarks_lib.core import geometry
    from landmarks_lib.core.images import load_image

    img = load_image(paths[0])
    fr = geometry.letterbox_frame(img.shape[1], img.shape[0], 64)
    crops = np.zeros((4, 64, 64, 3), np.uint8)
    crops[0] = geometry.crop_image(img, fr)
    box, score, _ = passes.detect_crops(networks.network(m["localizer"]), m["localizer"]["meta"], crops, 4)
    orig = geometry.boxes_to_original(box[:1], fr.as_array()[None])[0]
    side = orig[2] * 1.25
    np.testing.assert_allclose(whole.boxes[0], [orig[0] - side / 2, orig[1] - side / 2, orig[0] + side / 2,
                                                orig[1] + side / 2], rtol=1e-5, atol=1e-3)


def test_onnx_backend_matches_torch_with_a_facebox_localizer(trained):
    pytest.importorskip("onnxruntime")
    from landmarks_lib.inference.predictor import Predictor

    p, data, model, _ = trained
    m = _with_facebox_localizer(model)
    paths = [os.path.join(data.image_dir, n) for n in data.names[:5]]
    settings = passes.Inference(refine_steps=1, tta_flip=False)
    a = Predictor([m], "cpu", settings, micro_batch=4).predict(paths)
    b = Predictor([m], "cpu", settings, micro_batch=4, backend="onnx").predict(paths)
    assert np.abs(a.points - b.points).max() <= 2e-3 and np.array_equal(a.faces, b.faces)


def test_faces_csv_is_the_text_pandas_writes(tmp_path):
    import pandas as pd

    from landmarks_lib.inference.predict import write_faces_csv

    names = ["a.jpg", "with,comma.jpg", 'quote".png', "nan.jpg"]
    boxes = np.array([[1.23456, -2.5, 10.0, 20.0005], [0, 0, 1, 1], [3.3, 4.4, 5.5, 6.6], [np.nan] * 4])
    conf, faces = np.array([0.12345, 1.0, 0.0, 0.0]), np.array([1, 2, 0, 0])
    for with_faces in (True, False):
        path = tmp_path / f"f{with_faces}.csv"
        write_faces_csv(path, names, boxes, conf, faces if with_faces else None)
        df = pd.DataFrame({"file_name": names, "crop_x0": boxes[:, 0], "crop_y0": boxes[:, 1],
                           "crop_x1": boxes[:, 2], "crop_y1": boxes[:, 3], "confidence": np.round(conf, 3)})
        if with_faces:
            df["faces"] = faces
        assert path.read_text() == df.to_csv(index=False, float_format="%.3f")


def test_write_model_exports_the_model_into_the_run_folder(trained):
    """``workflow.write_model`` writes ``model.pt`` and its export; the export records ``model.pt``'s SHA-256 and is
    part of the run folder's manifest."""
    from landmarks_lib.core.files import read_json, sha256_file
    from landmarks_lib.inference import backends

    _, _, _, run = trained
    folder = run.file("export")
    assert backends.run_export(run.path) == folder
    doc = read_json(os.path.join(folder, "model.json"))
    assert doc["model_sha256"] == sha256_file(run.model)
    assert set(doc["files"]) == {"face.onnx"}  # a letterbox model: no localizer
