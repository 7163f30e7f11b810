"""The field's benchmark: NME by the outer eye corners with CED/AUC/FR, a face rule learned from the training data,
training on a folder of ``.pts`` files with faces of one photo kept together, and ``landmarks evaluate``."""

import json
import os
import shutil

import numpy as np
import pytest

from landmarks_lib.core import params as P
from landmarks_lib.core.coords import labels_to_points
from landmarks_lib.data import formats, synthetic
from landmarks_lib.data.formats import pts
from landmarks_lib.evaluation import metrics
from landmarks_lib.models import codecs


def test_outer_eye_nme_auc_and_failure_rate_by_hand():
    truth = np.zeros((2, 68, 2))
    truth[:, 36], truth[:, 45] = [10.0, 50.0], [60.0, 50.0]  # outer eye corners 50 px apart
    pred = truth.copy()
    pred[0] += [3.0, 4.0]  # every point 5 px off: NME 10 %
    pred[1] += [0.0, 2.0]  # 2 px: 4 %
    assert np.allclose(metrics.per_image_nme(pred, truth, "outer_eyes"), [10.0, 4.0])
    f = metrics.field_summary(pred, truth)
    assert f["nme_io"] == pytest.approx(7.0) and f["n_scored"] == 2
    assert f["fr_08"] == pytest.approx(0.5) and f["fr_10"] == pytest.approx(0.0)  # 10 % is not above 10 %
    # AUC at 8 %: one image (4 %) is in from 4 % on, the other never: (8 - 4) / 8 * 0.5 = 0.25
    assert f["auc_08"] == pytest.approx(0.25, abs=2e-3)
    assert metrics.field_summary(pred[:, :20], truth[:, :20]) == {}  # no known eye corners for 20 points
    with pytest.raises(ValueError, match="eye corners"):
        metrics.per_image_nme(pred[:, :20], truth[:, :20], "outer_eyes")


def test_unlabelled_points_are_left_out_of_the_nme():
    truth = np.zeros((2, 68, 2))
    truth[:, :, 0] = np.arange(68)
    truth[:, 36], truth[:, 45] = [0.0, 0.0], [40.0, 0.0]
    pred = truth + [0.0, 2.0]
    pred[0, 5] += 100.0
    truth[0, 5] = np.nan  # the far-off point is unlabelled: left out
    assert np.allclose(metrics.per_image_nme(pred, truth, "outer_eyes"), [5.0, 5.0])
    truth[1, 36] = np.nan  # no eye corner: the image is not scored
    f = metrics.field_summary(pred, truth)
    assert f["n_scored"] == 1 and f["n_unscored"] == 1 and f["nme_io"] == pytest.approx(5.0)


def _two_face_detections(n, rng):
    """Detections of ``n`` letterbox crops (96 px): the labelled face central and smaller, a neighbour larger and
    off-centre, scores alike (300-W's case)."""
    boxes, scores = np.zeros((n, 8, 3)), np.zeros((n, 8))
    for i in range(n):
        boxes[i, 0] = [48 + rng.normal(0, 3), 48 + rng.normal(0, 3), 40]
        boxes[i, 1] = [15, 20, 55 + rng.normal(0, 5)]
        scores[i, :2] = rng.uniform(0.5, 0.9, 2)
    return boxes, scores, boxes[:, 0].copy()


def test_a_learned_face_rule_picks_the_labelled_face_where_the_fixed_rule_picks_the_largest():
    boxes, scores, truth = _two_face_detections(100, np.random.default_rng(0))
    rule = codecs.fit_rule(boxes, scores, truth, 96)
    assert rule is not None and rule["hits"] == 100 and rule["fixed_hits"] < 50
    b2, s2, truth2 = _two_face_detections(50, np.random.default_rng(1))  # unseen images
    chosen, _, faces = codecs.choose(b2, s2, rule, 96)
    assert np.allclose(chosen, truth2) and (faces >= 1).all()
    fixed, _, _ = codecs.choose(b2, s2)
    assert np.allclose(fixed, b2[:, 1])  # the largest: the neighbour
    # where the fixed rule is already right, nothing is learned: the fixed rule stays
    big = boxes.copy()
    big[:, 0, 2] = 70
    assert codecs.fit_rule(big, scores, big[:, 0], 96) is None
    # a rule that would win one image in a hundred is noise: the fixed rule stays
    few = big.copy()
    few[0] = boxes[0]
    assert codecs.fit_rule(few, scores, few[:, 0], 96) is None


@pytest.fixture(scope="module")
def pts_run(tmp_path_factory):
    """A ``.pts`` tree made from the tiny synthetic set (68 points; two folders, faces of one photo named ``_1`` and
    ``_2``), and a letterbox model trained one epoch on it: ``(params, data_dir, run folder)``."""
    from landmarks_lib.runs import workflow
    from landmarks_lib.runs.run_folder import RunFolder
    from landmarks_lib.training import engine

    root = tmp_path_factory.mktemp("pts")
    syn = synthetic.write_dataset(root / "syn", n_train=24, n_test=2, num_points=68, seed=5, min_size=64,
                                  max_size=80)
    table = formats.read_dataset(syn["out_dir"], "contest")
    data_dir = root / "faces"
    names = []
    for i, n in enumerate(table.table.names):
        rel = f"{'ab'[i % 2]}/photo{i // 4}_{i % 4 // 2 + 1}.jpg"  # two faces per photo, in one folder
        os.makedirs(data_dir / rel.split("/")[0], exist_ok=True)
        shutil.copy(os.path.join(table.root, n), data_dir / rel)
        names.append(rel)
    pts.write_tree(data_dir, names, labels_to_points(table.table.points))
    p = P.resolve(run_dir=str(root / "run"), data_dir=str(data_dir), overrides=dict(
        cache_dir=str(root / "cache"), backbone="resnet18", pretrained=False, crop_mode="letterbox", crop_size=32,
        epochs=1, batch_size=8, threads=1, val_fraction=0.25))
    run = RunFolder(p["run_dir"]).create("test")
    P.dump(p, run.file("params.yaml"))
    data = engine.load_train_data(p, progress=False)
    engine.fit(p, data, run, "train", progress=False)
    workflow.write_model(p, run)
    return p, data, run, table


def test_a_pts_folder_trains_with_faces_of_one_photo_on_one_side(pts_run):
    p, data, _, contest = pts_run
    assert data.split == "groups" and formats.detect_format(p["data_dir"]) == "pts"
    assert len(data.names) == 24 and data.names[0] == "a/photo0_1.jpg"
    # the labels read back from the .pts files are the contest labels (1-based files, label = value - 1)
    order = [int(n.split("photo")[1].split("_")[0]) * 4 + (int(n[-5]) - 1) * 2 + (n[0] == "b") for n in data.names]
    assert np.allclose(data.table.points, np.asarray(contest.table.points, np.float32)[order], atol=1e-3)
    groups = formats.photo_groups(data.names)
    val = {groups[i] for i in data.val_idx}
    assert val and not val & {groups[i] for i in data.train_idx}
    assert all(len([g for g in groups if g == v]) == 2 for v in val)


def test_evaluate_scores_the_validation_faces_by_the_fields_measures(pts_run, capsys):
    from landmarks_lib.inference.predictor import Predictor
    from landmarks_lib.runs import evaluate

    p, data, run, _ = pts_run
    assert evaluate.main(["--checkpoint", run.path, "--data-dir", p["data_dir"], "--json", "--backend", "torch"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "val" and res["n_faces"] == len(data.val_idx) and res["boxes"] == "localizer"
    names = [data.names[i] for i in data.val_idx]
    pred = Predictor.load(run.path, device="cpu").predict([os.path.join(data.image_dir, n) for n in names]).points
    want = metrics.per_image_nme(pred, data.points(data.val_idx), "outer_eyes")
    assert res["field"]["nme_io"] == pytest.approx(want.mean(), rel=1e-4)
    assert set(res["field"]) >= {"auc_08", "fr_08", "auc_10", "fr_10"}
    assert {s for s in res["subsets"]} <= {"folder a", "folder b"} and res["subsets"]
    assert {m["name"] for m in res["multi_face_photos"]} == set(names)  # every face has its photo's twin
    assert evaluate.main(["--checkpoint", run.path, "--data-dir", p["data_dir"], "--split", "all"]) == 0
    assert "24 faces" in capsys.readouterr().out


def test_label_boxes_are_the_landmarks_extent():
    from landmarks_lib.runs import evaluate

    pts_ = np.array([[[1.0, 2.0], [5.0, 9.0], [np.nan, np.nan]]])
    assert np.allclose(evaluate.label_boxes(pts_), [[1, 2, 5, 9]])


@pytest.mark.notebooks
def test_a_pts_folder_without_test_images_runs_all_four_notebooks(pts_run, tmp_path):
    import subprocess
    import sys

    p = pts_run[0]
    run_dir = tmp_path / "run"
    args = ["--data-dir", p["data_dir"], "--run-dir", str(run_dir), "-p", "cache_dir", str(tmp_path / "cache"),
            "-p", "crop_mode", "letterbox", "-p", "crop_size", "32", "-p", "epochs", "1", "-p", "finetune_epochs", "1",
            "-p", "backbone", "resnet18", "-p", "pretrained", "false", "-p", "batch_size", "8", "-p", "num_figures",
            "2", "-p", "threads", "1", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "landmarks_lib.pipeline", *args], env=env, capture_output=True,
                          text=True, timeout=900, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (run_dir / "submission.csv").exists() and (run_dir / "model.pt").exists()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["n_test"] == 0 and m["n_val"] >= 2 and m["n_val"] % 2 == 0  # faces of one photo together
    assert {"val_nme_io", "val_auc_08", "val_fr_08", "val_auc_10", "val_fr_10"} <= set(m)
    assert np.isfinite(m["val_nme_io"]) and m["val_nme_io"] > 0
    nb = (run_dir / "notebooks" / "03_finetune.ipynb").read_text()
    assert "no test set in this data folder: no submission written" in nb
    assert (run_dir / "figures" / "04_val_worst.png").exists() and (run_dir / "figures" / "01_examples.png").exists()


def test_the_contest_mse_leaves_unlabelled_coordinates_out_and_refuses_nan_predictions():
    truth = np.array([[[0.0, 0.0], [np.nan, np.nan], [2.0, 2.0]]])
    pred = np.array([[[1.0, 1.0], [50.0, 50.0], [2.0, 2.0]]])
    assert metrics.mse(pred, truth) == pytest.approx(0.5)  # (1 + 1 + 0 + 0) / 4
    pred[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.mse(pred, truth)
    with pytest.raises(ValueError, match="no labelled"):
        metrics.mse(pred[:, 1:2], truth[:, 1:2])


def test_scores_are_given_per_attribute_subset_and_per_folder():
    from landmarks_lib.runs import evaluate

    truth = np.zeros((4, 68, 2))
    truth[:, 36], truth[:, 45] = [0.0, 0.0], [50.0, 0.0]
    pred = truth + np.array([1.0, 2.0, 3.0, 4.0])[:, None, None] * [0.6, 0.8]  # 1..4 px off: NME 2, 4, 6, 8 %
    names = ["x/a_1.jpg", "x/a_2.jpg", "y/b.jpg", "y/c.jpg"]
    res = evaluate.score(pred, truth, names, {"blur": np.array([True, False, False, True]),
                                              "image_id": np.arange(4)})
    assert res["field"]["nme_io"] == pytest.approx(5.0)
    assert res["subsets"]["blur"]["field"]["nme_io"] == pytest.approx(5.0)  # 2 and 8
    assert res["subsets"]["folder x"]["field"]["nme_io"] == pytest.approx(3.0)
    assert "image_id" not in res["subsets"]  # not a subset
    assert [m["name"] for m in res["multi_face_photos"]] == ["x/a_1.jpg", "x/a_2.jpg"]
    assert res["worst"][0] == {"name": "y/c.jpg", "nme": pytest.approx(8.0)}


def test_a_pts_file_finds_its_image_whatever_the_extensions_case(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "face.JpG", format="JPEG")
    (tmp_path / "face.pts").write_text("1 1\n2 2\n3 3\n")
    assert pts.image_for(str(tmp_path / "face.pts")) == str(tmp_path / "face.JpG")
    assert formats.read_dataset(tmp_path).table.names == ["face.JpG"]


def test_validate_checks_another_format_by_its_reader_and_every_image(tmp_path):
    from PIL import Image

    from landmarks_lib.data import validate

    for i in range(12):
        Image.new("RGB", (40, 30)).save(tmp_path / f"p{i}.jpg", format="JPEG")
        (tmp_path / f"p{i}.pts").write_text("version: 1\nn_points: 2\n{\n5 5\n60 10\n}\n")
    rep = validate.validate_dataset(tmp_path)
    assert rep.ok and rep.num_train == 12 and rep.num_points == 2 and len(rep.image_sizes) == 12
    # the point at x = 60 (1-based) lies beyond the 40-px width, within the "cut by the frame" margin or not
    assert {p.kind for p in rep.problems} <= {"points_outside", "points_far_outside", "tiny_image"}
    assert any(p.kind.startswith("points_") and p.file == "p0.jpg" for p in rep.problems)
    (tmp_path / "p3.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "p5.pts").write_text("version: 1\nn_points: 2\n{\n5 5\n6 x\n}\n")
    rep = validate.validate_dataset(tmp_path)
    assert not rep.ok
    fatal = [p for p in rep.problems if p.severity == "fatal"]
    assert len(fatal) == 1 and "p5.pts:5" in fatal[0].message  # the reader stops at its first error
    (tmp_path / "p5.pts").write_text("5 5\n6 6\n")
    fatal = [p for p in validate.validate_dataset(tmp_path).problems if p.severity == "fatal"]
    assert [p.file for p in fatal] == ["p3.jpg"]
