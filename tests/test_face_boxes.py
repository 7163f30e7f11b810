"""Face boxes given by the caller (``Predictor.predict(images, boxes)``, ``landmarks predict --boxes``) and the predict
CLI's output formats (``--format pts|wflw|coco``), on a tiny untrained face model placed by a seeded face-box
localizer (nothing is trained here)."""

import json
import os

import numpy as np
import pytest
import torch
from floats import assert_close
from PIL import Image

from landmarks_lib.core.images import load_image
from landmarks_lib.data.formats import pts as pts_format
from landmarks_lib.data.tables import read_landmarks
from landmarks_lib.inference import predict
from landmarks_lib.inference.passes import Inference
from landmarks_lib.inference.predictor import Predictor, check_boxes, corner_boxes, extent_boxes
from landmarks_lib.models import checkpoint, codecs, facebox, landmark

K = 10
SETTINGS = {"tta_flip": True, "refine_steps": 1, "tta_scales": "1.0, 1.1"}  # refinement and both TTAs
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _model(crop_mode="face"):
    """A 10-point face model (linear head at a seeded mean shape, 32-px crops) with a seeded, untrained face-box
    localizer (64-px letterbox)."""
    torch.manual_seed(0)
    net = landmark.build_model("resnet18", K, head="linear", crop_size=32, init_shape=torch.rand(K, 2) * 0.6 - 0.3)
    meta = {"backbone": "resnet18", "num_points": K, "crop_size": 32, "crop_mode": crop_mode, "face_scale": 1.25,
            "input_mean": MEAN, "input_std": STD, "normalize_targets": True, "dropout": 0.0, "stage": "test",
            "head": "linear", "flip_perm": list(range(K))[::-1], "flip_unmatched": []}
    loc = facebox.build_localizer("resnet18").eval()
    lmeta = {"backbone": "resnet18", "head": codecs.HEAD, "crop_size": 64, "crop_mode": "letterbox",
             "input_mean": MEAN, "input_std": STD, "stage": "localizer"}
    return {"kind": "model", "localizer": {"meta": lmeta, "state_dict": loc.state_dict()},
            "face": {"meta": meta, "state_dict": net.state_dict()}, "inference": dict(SETTINGS), "val_mse": 1.0,
            "source": "test"}


def _write_images(folder, names, seed=0):
    rng = np.random.RandomState(seed)
    for i, n in enumerate(names):
        path = os.path.join(folder, *n.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray((rng.rand(60 + 3 * i, 80 - 2 * i, 3) * 255).astype(np.uint8)).save(path, "PNG")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(model.pt, image folder, image paths, model dict)``."""
    root = tmp_path_factory.mktemp("boxes")
    path = str(root / "model.pt")
    model = _model()
    checkpoint.save(path, model)
    images = root / "images"
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    _write_images(images, names)
    return path, str(images), [os.path.join(images, n) for n in names], model


def _localizer_boxes(pr, paths):
    """The localizer's own chosen boxes of ``paths``, ``x0, y0, x1, y1`` (float64, original pixels)."""
    lm = pr.models[0]["localizer"]["meta"]
    place, _, _ = pr._locate(pr._nets[0]["localizer"], lm, [load_image(p) for p in paths], pr.settings.tta_flip)
    return corner_boxes(place)


def _predictor(model, backend="torch", **settings):
    return Predictor([model], "cpu", Inference.from_settings({**SETTINGS, **settings}), micro_batch=4,
                     backend=backend)


def _main(capsys, *args):
    code = predict.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _cli(path, images, out, *more):
    return ["--checkpoint", path, "--images", images, "--out", out, "--device", "cpu", "--backend", "torch", *more]


# --------------------------------------------------------------------------- 1. the predictor
def test_corner_and_extent_boxes_are_each_others_inverse():
    b = np.array([[10.0, 20.0, 30.0, 60.0], [np.nan] * 4])
    np.testing.assert_array_equal(extent_boxes(b)[0], [20.0, 40.0, 40.0])  # the centre and the longer side
    assert np.isnan(extent_boxes(b)[1]).all()
    np.testing.assert_array_equal(corner_boxes(extent_boxes(b[:1])), [[0.0, 20.0, 40.0, 60.0]])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_localizers_own_box_gives_the_localizers_prediction(setup, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    _, _, paths, model = setup
    pr = _predictor(model, backend)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = pr.predict(paths)
        boxes = _localizer_boxes(pr, paths)
        got = pr.predict(paths, boxes)
        chunks = list(pr.predict_iter(paths, chunk=2, boxes=boxes))
    finally:
        torch.set_num_threads(threads)
    assert_close(got.points, base.points, ulps=16)
    assert_close(got.boxes, base.boxes, ulps=16)
    assert (got.faces == 1).all()  # (the untrained localizer finds no face above codecs.MIN_SCORE: 0)
    assert ((got.confidence >= base.confidence) & (got.confidence <= 1)).all()  # the score counts as 1
    np.testing.assert_array_equal(np.concatenate([c.points for c in chunks]), got.points)  # chunked alongside


def test_a_shifted_box_shifts_the_first_crop(setup):
    _, _, paths, model = setup
    pr = _predictor(model, tta_flip=False, refine_steps=0, tta_scales="1.0")
    boxes = _localizer_boxes(pr, paths)
    base = pr.predict(paths, boxes)
    d = np.array([3.5, -2.0, 3.5, -2.0])
    moved = pr.predict(paths, boxes + d)
    np.testing.assert_allclose(moved.boxes - base.boxes, np.broadcast_to(d, base.boxes.shape), atol=1e-4)
    # the crop is face_scale times the box's longer side, on its centre
    one = pr.predict(paths[:1], [[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(one.boxes, [[20 - 25, 40 - 25, 20 + 25, 40 + 25]], atol=1e-4)
    # with refinement the final crop comes from the points, and a given box still moves it
    refined = _predictor(model, tta_flip=False, refine_steps=1, tta_scales="1.0")
    assert np.abs(refined.predict(paths, boxes + 5 * d).points - refined.predict(paths, boxes).points).max() > 0.1


def test_a_nan_row_falls_back_to_the_localizer(setup):
    _, _, paths, model = setup
    pr = _predictor(model)
    base = pr.predict(paths)
    boxes = _localizer_boxes(pr, paths) + [4.0, 4.0, 4.0, 4.0]
    boxes[[0, 3]] = np.nan
    mixed = pr.predict(paths, boxes)
    boxed = pr.predict(paths, np.where(np.isnan(boxes), _localizer_boxes(pr, paths), boxes))
    for i in (0, 3):  # placed by the localizer, as without boxes
        assert_close(mixed.points[i], base.points[i], ulps=16)
        assert mixed.faces[i] == base.faces[i] and mixed.confidence[i] == pytest.approx(base.confidence[i], abs=1e-6)
    for i in (1, 2, 4):  # placed by their boxes
        assert_close(mixed.points[i], boxed.points[i], ulps=16)
        assert mixed.faces[i] == 1
    assert np.abs(mixed.points[1] - base.points[1]).max() > 1e-3
    everything_nan = pr.predict(paths, np.full((len(paths), 4), np.nan))
    np.testing.assert_array_equal(everything_nan.points, base.points)


@pytest.mark.parametrize("boxes, words", [
    (np.zeros((5, 3)), r"float \[N, 4\].*shape \(5, 3\)"),
    (np.zeros(4), r"shape \(4,\)"),
    ([[0, 0, 10, 10]] * 4, "4 rows for 5 images"),
    ([[0, 0, 10, 10]] * 2 + [[0, 0, np.nan, 10]] + [[0, 0, 10, 10]] * 2, "row 2: .*NaN in some values only"),
    ([[0, 0, 10, 10]] * 3 + [[0, 0, np.inf, 10], [0, 0, 10, 10]], "row 3: .*not finite"),
    ([[0, 0, 10, 10], [5, 0, 5, 10]] + [[0, 0, 10, 10]] * 3, r"row 1: .*x1 > x0 and y1 > y0"),
    ([[0, 0, 10, 10]] * 4 + [[0, 9, 10, 3]], r"row 4: .*x1 > x0 and y1 > y0"),
    ([["a", "b", "c", "d"]] * 5, "boxes must be numbers"),
])
def test_boxes_of_another_shape_or_order_are_refused_naming_the_row(setup, boxes, words):
    _, _, paths, model = setup
    pr = _predictor(model)
    with pytest.raises(ValueError, match=words):
        pr.predict(paths, boxes)
    with pytest.raises(ValueError, match=words):
        pr.predict_iter(paths, 2, boxes=boxes)  # at once, before any image is read
    with pytest.raises(ValueError, match=words):
        pr.predict_arrays([load_image(p) for p in paths], boxes)


def test_boxes_of_another_count_than_a_stream_of_images_and_crops_not_on_faces_are_refused(setup):
    _, _, paths, model = setup
    pr = _predictor(model)
    ok = np.array([[0.0, 0.0, 20.0, 20.0]] * 3)
    with pytest.raises(ValueError, match="3 rows for more images"):
        list(pr.predict_iter(iter(paths), 2, boxes=ok))
    with pytest.raises(ValueError, match="3 rows for 2 images"):
        list(pr.predict_iter(iter(paths[:2]), 2, boxes=ok))
    assert check_boxes(ok, 3).dtype == np.float64
    letterbox = _predictor(_model("letterbox"))
    with pytest.raises(ValueError, match="'letterbox' crops"):
        letterbox.predict(paths[:3], ok)


# --------------------------------------------------------------------------- 2. the CLI's --boxes
def test_cli_boxes_place_the_listed_images_and_the_localizer_the_others(setup, tmp_path, capsys):
    path, images, paths, model = setup
    pr = Predictor.load(path, "cpu")
    boxes = _localizer_boxes(pr, paths[:2]) + [2.0, 1.0, 2.0, 1.0]
    table = tmp_path / "boxes.csv"
    table.write_text("file_name,x0,y0,x1,y1\n" + "".join(f"{n},{','.join(repr(float(v)) for v in b)}\n"
                                                         for n, b in zip(["b.png", "a.png"], boxes[::-1])))
    code, err = _main(capsys, *_cli(path, images, tmp_path / "pred.csv", "--boxes", table))
    assert code == 0, err
    want = pr.predict(paths, np.concatenate([boxes, np.full((3, 4), np.nan)]))
    got = read_landmarks(tmp_path / "pred.csv")
    np.testing.assert_allclose(np.asarray(got.points, np.float64) + 0.5, want.points, atol=0.006)
    faces = (tmp_path / "pred.faces.csv").read_text().splitlines()
    assert faces[0] == "file_name,crop_x0,crop_y0,crop_x1,crop_y1,confidence,faces"


@pytest.mark.parametrize("body, line, words", [
    ("a.png,1,2,30,40\nz.png,1,2,30,40\n", 3, "'z.png' is not among the images"),
    ("a.png,1,2,30,40\nb.png,1,2,30,40\na.png,1,2,30,40\n", 4, "listed again (first on line 2)"),
    ("a.png,1,2,30,40\nb.png,1,two,30,40\n", 3, "y0 'two' is not a number"),
    ("a.png,1,2,30,40\nb.png,30,2,30,40\n", 3, "need x1 > x0 and y1 > y0"),
    ("a.png,1,2,30,40\nb.png,1,2,30,nan\n", 3, "not a finite number"),
    ("a.png,1,2,30\n", 2, "4 fields; expected 5"),
])
def test_cli_boxes_file_with_a_bad_line_is_refused_before_predicting(setup, tmp_path, capsys, monkeypatch, body,
                                                                      line, words):
    path, images, _, _ = setup
    table = tmp_path / "boxes.csv"
    table.write_text("file_name,x0,y0,x1,y1\n" + body)
    monkeypatch.setattr(predict.Predictor, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code, err = _main(capsys, *_cli(path, images, tmp_path / "pred.csv", "--boxes", table))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:"), err
    assert f"{table}:{line}: " in err and words in err, err
    assert not (tmp_path / "pred.csv").exists()


def test_cli_refuses_a_faces_table_as_boxes_and_the_word_labels(setup, tmp_path, capsys):
    path, images, _, _ = setup
    out = tmp_path / "pred.csv"
    assert _main(capsys, *_cli(path, images, out))[0] == 0
    faces = tmp_path / "pred.faces.csv"
    old = tmp_path / "old.faces.csv"  # a faces table of the earlier layout, without crop_
    old.write_text("file_name,x0,y0,x1,y1,confidence,faces\na.png,1,2,30,40,0.5,1\n")
    for table in (faces, old):
        code, err = _main(capsys, *_cli(path, images, tmp_path / "again.csv", "--boxes", table))
        assert code == 2 and f"{table}:1: this is a faces table" in err and "landmarks' box" in err, err
    code, err = _main(capsys, *_cli(path, images, tmp_path / "again.csv", "--boxes", "labels"))
    assert code == 2 and "labelled data" in err and "landmarks evaluate" in err, err
    code, err = _main(capsys, *_cli(path, images, tmp_path / "again.csv", "--boxes", tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err, err
    assert not (tmp_path / "again.csv").exists()


# --------------------------------------------------------------------------- 3. --format
def test_format_pts_writes_a_nested_tree_that_reads_back_to_the_csv(setup, tmp_path, capsys):
    path = setup[0]
    images = tmp_path / "images"
    names = ["a.png", "b.jpg", "sub/b.png", "sub/deeper/c.jpg"]
    _write_images(images, names)
    code, err = _main(capsys, *_cli(path, images, tmp_path / "pred.csv"))  # csv: the folder's own images
    assert code == 0, err
    table = read_landmarks(tmp_path / "pred.csv")
    assert table.names == ["a.png", "b.jpg"]
    code, err = _main(capsys, *_cli(path, images, tmp_path / "pts", "--format", "pts", "--draw", tmp_path / "drawn"))
    assert code == 0, err
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "pts") for d, _, fs in os.walk(tmp_path / "pts")
                     for f in fs)
    assert written == ["a.pts", "b.pts", os.path.join("sub", "b.pts"), os.path.join("sub", "deeper", "c.pts")]
    direct = Predictor.load(path, "cpu").predict([os.path.join(images, n) for n in names]).points
    back = [pts_format.read(tmp_path / "pts" / (os.path.splitext(n)[0] + ".pts")) for n in names]
    for i in range(2):  # the CSV's labels + 1, within its 2 decimals
        np.testing.assert_allclose(back[i], np.asarray(table.points[i], np.float64) + 1, atol=0.005 + 1e-3)
    for i in range(len(names)):  # 1-based: continuous pixels + 0.5
        np.testing.assert_allclose(back[i], direct[i] + 0.5, atol=1e-3)
    assert os.path.isfile(tmp_path / "drawn" / "sub" / "deeper" / "c.jpg.png")


def test_format_pts_refuses_two_images_of_one_stem_and_a_file_as_out(setup, tmp_path, capsys, monkeypatch):
    path = setup[0]
    images = tmp_path / "images"
    _write_images(images, ["a.png", "sub/x.png", "sub/x.jpg"])
    monkeypatch.setattr(predict.Predictor, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code, err = _main(capsys, *_cli(path, images, tmp_path / "pts", "--format", "pts"))
    assert code == 2 and err.count("\n") == 1, err
    assert "'sub/x.jpg' and 'sub/x.png' would both be written to 'sub/x.pts'" in err, err
    assert not (tmp_path / "pts").exists()
    (tmp_path / "a_file").write_text("x")
    code, err = _main(capsys, *_cli(path, images, tmp_path / "a_file", "--format", "pts"))
    assert code == 2 and "name a folder" in err, err
    code, err = _main(capsys, *_cli(path, images, images / "pts", "--format", "pts"))
    assert code == 2 and "inside the --images folder" in err, err


@pytest.mark.parametrize("fmt", ["coco"])  # wflw: a 98-point model only (refused below)
def test_format_wflw_and_coco_call_their_writers_once_and_move_the_file_in(setup, tmp_path, capsys, monkeypatch,
                                                                           fmt):
    from landmarks_lib.data.formats import coco, wflw

    path, _, _, _ = setup
    images = tmp_path / "images"
    _write_images(images, ["a.png", "b.png", "c.png"])
    (images / "b.png").write_bytes(b"not an image")  # left out: the others keep their positions as ids
    calls = []

    def fake(target, *args, **kw):
        calls.append((args, kw))
        with open(target, "w") as f:
            json.dump({"n": len(args[1])}, f)

    monkeypatch.setattr(wflw if fmt == "wflw" else coco, "write" if fmt == "wflw" else "write_results", fake,
                        raising=False)
    out = tmp_path / ("pred.txt" if fmt == "wflw" else "pred.json")
    code, err = _main(capsys, *_cli(path, images, out, "--format", fmt))
    assert code == 1 and err.count("error:") == 1 and "b.png" in err, err
    assert len(calls) == 1 and json.loads(out.read_text()) == {"n": 2}
    assert sorted(os.listdir(tmp_path)) == ["images", out.name]  # no faces table, no temporary left
    (args, kw), = calls
    direct = Predictor.load(path, "cpu").predict([os.path.join(images, n) for n in ("a.png", "c.png")])
    np.testing.assert_allclose(args[1], direct.points, atol=1e-4)
    if fmt == "wflw":
        assert list(args[0]) == ["a.png", "c.png"]
    else:
        assert list(args[0]) == [1, 3] and kw["kind"] == "keypoints"
        np.testing.assert_allclose(kw["scores"], direct.confidence, atol=1e-6)


def test_format_coco_and_wflw_files_read_back_with_their_readers(setup, tmp_path, capsys):
    import json as json_

    from landmarks_lib.data.formats import coco

    path, _, _, _ = setup
    images = tmp_path / "images"
    _write_images(images, ["a.png", "c.png"])
    out = tmp_path / "pred.json"
    code, err = _main(capsys, *_cli(path, images, out, "--format", "coco"))
    assert code == 0, err
    direct = Predictor.load(path, "cpu").predict([os.path.join(images, n) for n in ("a.png", "c.png")])
    res = json_.loads(out.read_text())
    assert [r["image_id"] for r in res] == [1, 2]
    kp = np.asarray([r["keypoints"] for r in res], np.float64).reshape(2, -1, 3)
    np.testing.assert_allclose(kp[..., :2] + 0.5, direct.points, atol=1e-3)  # pixel indices = continuous - 0.5
    assert coco.KEYS["keypoints"][0] == "keypoints"
    code, err = _main(capsys, *_cli(path, images, tmp_path / "pred.txt", "--format", "wflw"))
    assert code == 2 and "98-point layout" in err and not (tmp_path / "pred.txt").exists(), err
