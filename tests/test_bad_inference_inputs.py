"""Never predict on garbage: the predictor's inputs, the predict CLI's names and outputs, the export's schema,
16-bit and over-long images, and the messages of ensembles, batch sizes and refused checkpoints."""

import argparse
import csv
import json
import math
import os
import pathlib
import shutil
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from landmarks_lib.core import images as img
from landmarks_lib.core.images import ImageError, image_size, load_image, to_rgb
from landmarks_lib.data.tables import read_landmarks
from landmarks_lib.inference import backends, export, predict
from landmarks_lib.inference.predictor import Predictor
from landmarks_lib.models import checkpoint, landmark

K = 10
INFERENCE = {"tta_flip": False, "refine_steps": 0, "tta_scales": "1.0"}


def _part(k=K, crop_size=32, seed=0, perm=None):
    """A small untrained letterbox network (linear head at a mean shape) and its meta."""
    torch.manual_seed(seed)
    net = landmark.build_model("resnet18", k, head="linear", crop_size=crop_size,
                               init_shape=torch.rand(k, 2) * 0.6 - 0.3)
    meta = {"backbone": "resnet18", "num_points": k, "crop_size": crop_size, "crop_mode": "letterbox",
            "face_scale": 1.25, "input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225],
            "normalize_targets": True, "dropout": 0.0, "stage": "test", "head": "linear",
            "flip_perm": list(range(k))[::-1] if perm is None else perm, "flip_unmatched": []}
    return {"meta": meta, "state_dict": net.state_dict()}


def _model(**kw):
    return {"kind": "model", "localizer": None, "face": _part(**kw), "inference": dict(INFERENCE), "val_mse": 1.0,
            "source": "test"}


def _write_images(folder, names, seed=0):
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for i, n in enumerate(names):
        Image.fromarray((rng.rand(30 + i, 40, 3) * 255).astype(np.uint8)).save(os.path.join(folder, n), "PNG")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(model.pt, export folder, image folder, predictor)``: a 10-point letterbox model."""
    root = tmp_path_factory.mktemp("badinf")
    path = str(root / "model.pt")
    checkpoint.save(path, _model())
    folder = root / "exported"
    export.export(path, folder)
    images = root / "images"
    _write_images(images, ["a.png", "b.png", "c.png"])
    return path, str(folder), str(images), Predictor.load(path, "cpu", micro_batch=2)


def _main(capsys, *args):
    """``predict.main`` in this process: ``(exit status, stderr)``."""
    code = predict.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_line(code, err, status=2):
    assert code == status, err
    assert err.count("\n") == 1 and err.startswith("error:") and "Traceback" not in err, err


def _cli(path, images, out, *more):
    return ["--checkpoint", path, "--images", images, "--out", out, "--device", "cpu", "--backend", "torch", *more]


# --------------------------------------------------------------------------- 1. the predictor's inputs
@pytest.mark.parametrize("bad, words", [
    (np.random.RandomState(0).rand(30, 40, 3).astype(np.float32), r"image 1: dtype float32, shape \(30, 40, 3\)"),
    (np.full((30, 40, 3), 30000, np.uint16), r"image 1: dtype uint16"),
    (np.ones((30, 40, 3), bool), r"image 1: dtype bool"),
    (np.zeros((0, 40, 3), np.uint8), r"image 1: empty array of shape \(0, 40, 3\)"),
    (np.zeros((30, 40, 4), np.uint8), r"image 1: shape \(30, 40, 4\); pass uint8 \[H, W, 3\]"),
    (None, r"image 1: a NoneType; pass a file path"),
])
def test_arrays_that_are_not_uint8_images_are_refused_with_their_index(setup, bad, words):
    pr = setup[3]
    good = np.zeros((30, 40, 3), np.uint8)
    for call in (pr.predict, pr.predict_arrays, lambda x: list(pr.predict_iter(x, chunk=1))):
        with pytest.raises(ValueError, match=words):
            call([good, bad])


def test_one_path_or_one_array_is_one_image(setup):
    _, _, images, pr = setup
    path = os.path.join(images, "a.png")
    want = pr.predict([path])
    for one in (path, pathlib.Path(path)):
        got = pr.predict(one)
        assert len(got) == 1 and not got.errors
        np.testing.assert_array_equal(got.points, want.points)
    arr = load_image(path)
    np.testing.assert_array_equal(pr.predict(arr).points, want.points)
    np.testing.assert_array_equal(pr.predict_arrays(arr).points, want.points)
    [chunk] = list(pr.predict_iter(path))
    assert len(chunk) == 1 and not chunk.errors
    gray = arr[..., 0]  # [H, W]: the same as its three-channel copy
    np.testing.assert_array_equal(pr.predict(gray).points, pr.predict(np.repeat(gray[..., None], 3, 2)).points)


# --------------------------------------------------------------------------- 2. names a table cannot hold
def test_file_names_a_table_cannot_hold_are_named_and_left_out(setup, tmp_path, capsys):
    path = setup[0]
    images = tmp_path / "images"
    odd = ["tab\there.png", "new\nline.png", "car\rriage.png"]
    _write_images(images, ["good.png", *odd])
    out = tmp_path / "pred.csv"
    code, err = _main(capsys, *_cli(path, images, out))
    assert code == 1 and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 3 and all(x.startswith("error:") and "rename the file" in x for x in lines), err
    for n in odd:
        assert any(repr(os.path.join(str(images), n)) in x for x in lines), (n, err)
    assert read_landmarks(out).names == ["good.png"]
    assert [r[0] for r in csv.reader(open(tmp_path / "pred.faces.csv"))] == ["file_name", "good.png"]


# --------------------------------------------------------------------------- 3. where the outputs go
def test_outputs_in_the_images_folder_or_nowhere_are_refused_before_predicting(setup, tmp_path, capsys, monkeypatch):
    path, _, images, _ = setup
    link = tmp_path / "link"
    link.symlink_to(images)
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")

    class NoLoad:
        @staticmethod
        def load(*a, **k):
            raise AssertionError("the model was loaded: the refusal came too late")

    monkeypatch.setattr(predict, "Predictor", NoLoad)
    cases = [
        (["--draw", os.path.join(images, "drawn")], "--draw"),
        (["--draw", images], "--draw"),
        (["--draw", str(link / "drawn")], "--draw"),  # the same folder through a link
        (["--draw", str(tmp_path / "a_file")], "--draw"),
    ]
    before = sorted(os.listdir(images))
    for more, flag in cases:
        code, err = _main(capsys, *_cli(path, images, tmp_path / "pred.csv", *more))
        _one_line(code, err)
        assert flag in err, err
    for out, words in [(os.path.join(images, "pred.csv"), "inside the --images folder"),
                       (link / "pred.csv", "inside the --images folder"),
                       (tmp_path / "a_folder", "is a folder"),
                       (tmp_path / "missing" / "pred.csv", "does not exist")]:
        code, err = _main(capsys, *_cli(path, images, out))
        _one_line(code, err)
        assert "--out" in err and words in err, err
    assert sorted(os.listdir(images)) == before and not (tmp_path / "pred.csv").exists()
    assert not (tmp_path / "missing").exists()


def test_each_image_gets_its_own_drawing(setup, tmp_path, capsys):
    path = setup[0]
    images = tmp_path / "images"
    _write_images(images, ["a.png", "a.jpg", "b.png"])  # a.png and a.jpg: one stem
    code, err = _main(capsys, *_cli(path, images, tmp_path / "pred.csv", "--draw", tmp_path / "drawn"))
    assert code == 0, err
    names = sorted(os.listdir(images))
    assert sorted(os.listdir(tmp_path / "drawn")) == sorted(n + ".png" for n in names)


# --------------------------------------------------------------------------- 4. the pair of outputs
def test_a_reader_never_finds_new_faces_beside_old_points(setup, tmp_path, capsys, monkeypatch):
    path = setup[0]
    images = tmp_path / "images"
    _write_images(images, ["a.png", "b.png", "c.png"])
    out, faces = tmp_path / "pred.csv", tmp_path / "pred.faces.csv"
    assert _main(capsys, *_cli(path, images, out))[0] == 0
    os.remove(images / "c.png")  # the next run has other rows

    mixed = []
    real_replace, real_remove = os.replace, os.remove

    def look():
        if os.path.exists(out):
            points = [line.split("\t")[0] for line in open(out).read().splitlines()[1:]]
            face_rows = [r[0] for r in csv.reader(open(faces))][1:] if os.path.exists(faces) else None
            if points != face_rows:
                mixed.append((points, face_rows))

    def replace(a, b):
        real_replace(a, b)
        look()

    def remove(a):
        real_remove(a)
        look()

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "remove", remove)
    code, err = _main(capsys, *_cli(path, images, out))
    monkeypatch.undo()
    assert code == 0, err
    assert not mixed, f"points beside the faces of another run: {mixed[0]}"
    assert read_landmarks(out).names == ["a.png", "b.png"]
    assert sorted(os.listdir(tmp_path)) == ["images", "pred.csv", "pred.faces.csv"]  # no temporary left


# --------------------------------------------------------------------------- 5. the export's schema
def _damaged(setup, tmp_path, edit):
    folder = tmp_path / "exported"
    shutil.copytree(setup[1], folder)
    doc = json.loads((folder / "model.json").read_text())
    edit(doc)
    (folder / "model.json").write_text(json.dumps(doc))
    return folder


def _set(key, value):
    def edit(doc):
        *path, last = key.split(".")
        d = doc
        for p in path:
            d = d[p]
        d[last] = value
    return edit


SCHEMA_CASES = [
    ("inference.tta_flip", "yes"),
    ("inference.refine_steps", 11),
    ("inference.refine_steps", -1),
    ("inference.refine_steps", 1.5),
    ("inference.tta_scales", "0,1"),
    ("inference.tta_scales", [1.0, "x"]),
    ("parts.face.meta.crop_size", -32),
    ("parts.face.meta.crop_size", "32"),
    ("parts.face.meta.num_points", 0),
    ("parts.face.meta.input_mean", [0.5, 0.5]),
    ("parts.face.meta.input_std", [0.2, 0.0, 0.2]),
    ("parts.face.meta.input_std", [0.2, math.nan, 0.2]),
    ("parts.face.meta.normalize_targets", "true"),
    ("parts.face.meta.flip_perm", [0] * K),
    ("parts.face.meta.flip_perm", list(range(K + 1))),
    ("parts.face.meta.crop_mode", "whole"),
    ("parts.face.meta.face_scale", 0),
    ("parts.face.file", "../model.pt"),
]


@pytest.mark.parametrize("key, value", SCHEMA_CASES, ids=[f"{k}={v!r}" for k, v in SCHEMA_CASES])
def test_an_export_outside_its_schema_is_refused_naming_key_and_value(setup, tmp_path, key, value):
    folder = _damaged(setup, tmp_path, _set(key, value))
    with pytest.raises(checkpoint.CheckpointError) as e:
        backends.read_export(folder)
    msg = str(e.value)
    assert "\n" not in msg and "model.json" in msg and key in msg, msg
    assert repr(value)[:40] in msg, msg


def test_onnx_shapes_must_agree_with_the_meta(setup, tmp_path):
    for key, value, words in [("parts.face.meta.crop_size", 64, "crop_size 64"),
                              ("parts.face.meta.num_points", 12, "num_points 12")]:
        def edit(doc, key=key, value=value):
            _set(key, value)(doc)
            doc["parts"]["face"]["meta"]["flip_perm"] = None
        folder = _damaged(setup, tmp_path / key, edit)
        with pytest.raises(checkpoint.CheckpointError, match=words) as e:
            backends.read_export(folder)
        assert "face.onnx" in str(e.value) and "model.json" in str(e.value) and "\n" not in str(e.value)


def test_a_damaged_export_folder_ends_in_one_line(setup, tmp_path, capsys):
    _, _, images, _ = setup
    out = tmp_path / "pred.csv"
    # a truncated ONNX file (its listing gone, as in a folder copied by hand)
    cut = _damaged(setup, tmp_path / "cut", lambda doc: doc.pop("files"))
    data = (cut / "face.onnx").read_bytes()
    (cut / "face.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(checkpoint.CheckpointError, match="face.onnx: not a readable ONNX model"):
        backends.read_export(cut)
    # a malformed model.json
    bad = tmp_path / "bad"
    shutil.copytree(setup[1], bad)
    (bad / "model.json").write_text('{"format": "thousand-landmarks-onnx/1", "parts": ')
    with pytest.raises(checkpoint.CheckpointError, match=r"model.json: not valid JSON \(line 1"):
        backends.read_export(bad)
    # a value outside the schema
    neg = _damaged(setup, tmp_path / "neg", _set("inference.refine_steps", -1))
    for folder in (cut, bad, neg):
        code, err = _main(capsys, "--checkpoint", folder, "--images", images, "--out", out, "--backend", "onnx")
        _one_line(code, err)
    # a run folder whose export/ is malformed is bypassed: model.pt is loaded
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(setup[0], run / "model.pt")
    shutil.copytree(bad, run / backends.RUN_EXPORT)
    assert backends.run_export(run) is None


# --------------------------------------------------------------------------- 6. 16-bit, 32-bit and float images
def test_16bit_images_are_scaled_by_a_fixed_factor_not_stretched(tmp_path):
    v = np.array([[0, 257, 32768, 65535], [1000, 3000, 2000, 65280]], np.uint16)
    want = np.array([[0, 1, 128, 255], [4, 12, 8, 254]], np.uint8)  # round(v * 255 / 65535)
    ims = {"I;16": Image.fromarray(v), "I;16B": Image.fromarray(v.astype(">u2")),
           "I;16L": Image.frombytes("I;16L", (4, 2), v.astype("<u2").tobytes())}
    for mode, im in ims.items():
        assert im.mode == mode
        out = to_rgb(im)
        assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
        np.testing.assert_array_equal(out[..., 0], want, err_msg=mode)
        assert (out[..., 0] == out[..., 2]).all()
    dark = np.full((3, 3), 2000, np.uint16)
    dark[0, 0] = 1000
    p = tmp_path / "dark16.png"
    Image.fromarray(dark).save(p)
    assert Image.open(p).mode == "I;16"
    assert load_image(p).max() == 8  # a dark photo stays dark (stretching made it 255)
    pgm = tmp_path / "g16.pgm"
    pgm.write_bytes(b"P5\n2 1\n65535\n" + np.array([65535, 32768], ">u2").tobytes())
    assert Image.open(pgm).mode == "I"
    assert load_image(pgm)[0, :, 0].tolist() == [255, 128]


def test_32bit_integer_and_float_images_are_refused_by_name(tmp_path):
    for mode, arr in (("I", np.array([[70000, 5]], np.int32)), ("F", np.array([[0.5, 2.0]], np.float32))):
        p = tmp_path / f"deep_{mode}.tif"
        Image.fromarray(arr).save(p)
        assert Image.open(p).mode == mode
        with pytest.raises(ImageError, match=rf"deep_{mode}\.tif: .*\(mode {mode}\) .* refused"):
            load_image(p)


# --------------------------------------------------------------------------- 7. the longest side
def test_an_image_over_the_longest_side_is_refused_by_name(tmp_path, setup):
    assert img.MAX_SIDE * (img.MAX_SIDE // 3) <= img.MAX_PIXELS  # photos up to 3:1 are never refused by the side
    p = tmp_path / "strip.png"
    Image.new("RGB", (img.MAX_SIDE + 1, 1)).save(p)  # 16385 px: far under the pixel limit
    for fn in (load_image, image_size):
        with pytest.raises(ImageError, match=rf"strip\.png: {img.MAX_SIDE + 1}x1 px: its longest side is over the "
                                             rf"{img.MAX_SIDE}-px limit of images.MAX_SIDE"):
            fn(p)
    res = setup[3].predict([str(p)])
    assert "MAX_SIDE" in res.errors[0] and np.isnan(res.points).all()
    with pytest.raises(ValueError, match=r"image 0: 1x16385 px: its longest side"):
        setup[3].predict(np.zeros((img.MAX_SIDE + 1, 1, 3), np.uint8))


def test_the_worst_accepted_shape_stays_within_the_stated_memory_bound(setup):
    """An image of ``MAX_SIDE x 1`` px (the most letterbox padding per pixel): numpy's share of one prediction stays
    within ``3 (L + 4 L / S + 6)^2`` bytes (the padded square, ``images.MAX_SIDE``'s comment), 1.02 GB at
    ``L = 16384, S = 32``."""
    pr = setup[3]
    L, S = img.MAX_SIDE, pr.models[0]["face"]["meta"]["crop_size"]
    image = np.full((1, L, 3), 128, np.uint8)
    bound = 3 * (L + 4 * L / S + 6) ** 2 + image.nbytes
    assert bound < 1.1e9
    tracemalloc.start()
    try:
        res = pr.predict(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.isfinite(res.points).all()
    assert peak <= bound * 1.02, f"{peak / 1e9:.2f} GB over the bound {bound / 1e9:.2f} GB"


# --------------------------------------------------------------------------- 8. messages
def test_an_ensemble_of_other_point_counts_or_layouts_ends_in_one_line(setup, tmp_path, capsys):
    path, _, images, _ = setup
    twelve, mirrored = tmp_path / "twelve.pt", tmp_path / "mirrored.pt"
    checkpoint.save(str(twelve), _model(k=12))
    perm = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    checkpoint.save(str(mirrored), _model(perm=perm))
    with pytest.raises(checkpoint.CheckpointError, match=r"ensemble: model 2 predicts 12 points per face and model "
                                                         r"1 10"):
        Predictor([checkpoint.load_model(path), checkpoint.load_model(twelve)], "cpu")
    with pytest.raises(checkpoint.CheckpointError, match="different layouts"):
        Predictor([checkpoint.load_model(path), checkpoint.load_model(mirrored)], "cpu")
    for other in (twelve, mirrored):
        code, err = _main(capsys, "--checkpoint", path, other, "--images", images, "--out", tmp_path / "p.csv",
                          "--device", "cpu", "--backend", "torch")
        _one_line(code, err)
        assert str(other) in err and path in err


def test_a_batch_size_below_one_is_refused_in_words(setup, tmp_path, capsys):
    path, _, images, pr = setup
    for n in (0, -3):
        code, err = _main(capsys, *_cli(path, images, tmp_path / "p.csv", "--batch-size", n))
        _one_line(code, err)
        assert f"--batch-size must be at least 1 (images read and predicted at a time), got {n}" in err
        with pytest.raises(ValueError, match=rf"micro_batch \(images per network pass\) must be a whole number of "
                                             rf"at least 1, got {n}"):
            Predictor(pr.models, "cpu", micro_batch=n)
        with pytest.raises(ValueError, match=rf"chunk .* at least 1, got {n}"):
            pr.predict_iter([], chunk=n)
    assert not (tmp_path / "p.csv").exists()


def test_a_checkpoint_refused_on_purpose_gets_no_advice_to_load_it_anyway(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    torch.save({"format": checkpoint.FORMAT, "kind": "model", "extra": argparse.Namespace(a=1)}, bad)
    with pytest.raises(checkpoint.CheckpointError) as e:
        Predictor.load(str(bad), "cpu")
    msg = str(e.value)
    assert "\n" not in msg and "weights_only" not in msg and "argparse.Namespace" in msg and "refused" in msg, msg
    images = tmp_path / "images"
    _write_images(images, ["a.png"])
    code, err = _main(capsys, *_cli(bad, images, tmp_path / "p.csv"))
    _one_line(code, err)
    assert "weights_only" not in err and str(bad) in err
    code = export.main(["--checkpoint", str(bad), "--out", str(tmp_path / "exported")])
    err = capsys.readouterr().err
    _one_line(code, err)
    assert "weights_only" not in err
