"""Metrics (contest MSE per coordinate, NME, CED) and the submission writer and validator."""

import os

import numpy as np
import pandas as pd
import pytest

from landmarks_lib.data.tables import TestPoints, read_test_points
from landmarks_lib.evaluation import metrics, submission


def test_mse_is_per_coordinate():
    truth = np.zeros((1, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 0.0]]])  # one point off by (3, 4): distance 5
    assert metrics.mse(pred, truth) == pytest.approx((9 + 16) / 4)
    assert metrics.mse(pred[:1], truth[:1]) == pytest.approx(6.25)
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(pred, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mse(np.full((1, 2, 2), np.nan), truth)


def test_nme_divides_by_sqrt_bbox_area():
    truth = np.array([[[0.0, 0.0], [40.0, 10.0]]])  # bbox 40 x 10 -> sqrt = 20
    pred = truth + np.array([[[2.0, 0.0], [0.0, 0.0]]])  # mean distance 1
    assert metrics.per_image_nme(pred, truth).mean() == pytest.approx(1 / 20 * 100)


def test_ced_auc_and_failure_rate():
    x, y, auc, fail = metrics.ced([0.0, 0.0, 20.0, 20.0], threshold=10)
    assert y[0] == 0.5 and y[-1] == 0.5
    assert auc == pytest.approx(0.5, abs=1e-3)
    assert fail == 0.5
    _, _, auc2, fail2 = metrics.ced([5.0], threshold=10)
    assert auc2 == pytest.approx(0.5, abs=2e-3) and fail2 == 0.0


def _tp():
    return TestPoints(["b.jpg", "a.jpg"], np.array([[2, 0], [1, 1]]))


def test_submission_selects_listed_points_in_order_and_rounds(tmp_path):
    # continuous predictions; the file holds labels (minus io.LABEL_OFFSET = 0.5)
    pred = np.array([
        [[0.9, 1.0], [1.5, 1.5], [3.0, 2.99]],
        [[9.5, 9.5], [0.0, 8.1], [0.5, 0.5]],
    ])
    path = tmp_path / "submission.csv"
    df = submission.write_submission(path, _tp(), pred, decimals=0)
    text = path.read_text().splitlines()
    assert text[0] == "file_name,Point_M0_X,Point_M0_Y,Point_M1_X,Point_M1_Y"
    # b.jpg: point 2 then point 0, labels 2.5, 2.49, 0.4, 0.5 rounded half up
    assert text[1] == "b.jpg,3,2,0,1"
    # a.jpg: point 1 twice; label -0.5 rounds half up to 0, 7.6 -> 8 (never truncated to 7)
    assert text[2] == "a.jpg,0,8,0,8"
    assert list(df["file_name"]) == ["b.jpg", "a.jpg"]


def test_submission_keeps_decimals_by_default(tmp_path):
    pred = np.array([
        [[0.9, 1.0], [1.5, 1.5], [3.0, 2.994]],
        [[9.5, 9.5], [0.0, 8.1], [0.5, 0.5]],
    ])
    path = tmp_path / "submission.csv"
    submission.write_submission(path, _tp(), pred)
    text = path.read_text().splitlines()
    assert text[1] == "b.jpg,2.5,2.49,0.4,0.5"
    assert text[2] == "a.jpg,-0.5,7.6,-0.5,7.6"
    df = submission.make_submission(_tp(), pred, decimals=1)
    assert df.iloc[0, 1:].tolist() == [2.5, 2.5, 0.4, 0.5]
    with pytest.raises(ValueError, match="decimals"):
        submission.make_submission(_tp(), pred, decimals=-1)


def test_submission_rejects_nan_and_wrong_shapes(tmp_path):
    pred = np.zeros((2, 3, 2))
    pred[1, 1, 0] = np.nan
    with pytest.raises(submission.SubmissionError, match="a.jpg"):
        submission.make_submission(_tp(), pred)
    with pytest.raises(submission.SubmissionError, match="shape"):
        submission.make_submission(_tp(), np.zeros((3, 3, 2)))
    with pytest.raises(submission.SubmissionError, match="outside"):
        submission.make_submission(TestPoints(["a"], np.array([[5]])), np.zeros((1, 3, 2)))


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.iloc[::-1], r"line 2 is 'a\.jpg', test_points\.csv has 'b\.jpg' there \(.*order"),
    (lambda df: df.iloc[:1], r"1 rows, test_points\.csv has 2 \('a\.jpg', due on line 3, is missing\)"),
    (lambda df: pd.concat([df, df.iloc[:1]]), r"3 rows, test_points\.csv has 2 \(line 4 is one too many\)"),
    (lambda df: df.rename(columns={"Point_M1_Y": "Point_M1_y"}), "header"),
    (lambda df: df.assign(Point_M0_X=["1", "x"]), r"line 3 \(a\.jpg\), column Point_M0_X: missing or non-numeric"),
    (lambda df: df.assign(Point_M0_Y=[1.0, np.nan]), r"line 3 \(a\.jpg\), column Point_M0_Y: missing"),
])
def test_validator_names_the_problem(tmp_path, mutate, message):
    tp = _tp()
    good = submission.make_submission(tp, np.zeros((2, 3, 2)))
    path = tmp_path / "s.csv"
    mutate(good).to_csv(path, index=False)
    with pytest.raises(submission.SubmissionError, match=message):
        submission.validate_submission(path, tp)


def test_validator_accepts_written_file_with_real_test_points(tmp_path):
    (tmp_path / "tp.csv").write_text("file_name\tpoint_index_list\nx.jpg\t[3, 1]\ny.jpg\t[0, 2]\n")
    tp = read_test_points(tmp_path / "tp.csv", num_points=4)
    submission.write_submission(tmp_path / "s.csv", tp, np.arange(16, dtype=float).reshape(2, 4, 2))
    df = submission.validate_submission(tmp_path / "s.csv", tp)
    assert df.iloc[0, 1:].tolist() == [5.5, 6.5, 1.5, 2.5]  # labels: continuous minus 0.5
    assert df.iloc[1, 1:].tolist() == [7.5, 8.5, 11.5, 12.5]
    assert isinstance(df, pd.DataFrame)


def test_validator_reads_names_as_text_and_counts_file_lines(tmp_path):
    names = ["NA", "nan", "null", "None", "N/A", "#N/A"]  # pandas' default NA markers are names here
    tp = TestPoints(names, np.zeros((len(names), 1), np.int64))
    path = tmp_path / "s.csv"
    submission.write_submission(path, tp, np.ones((len(names), 1, 2)))
    df = submission.validate_submission(path, tp)
    assert df["file_name"].tolist() == names
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")  # a blank line 4
    with pytest.raises(submission.SubmissionError, match=rf"{path}: line 4 is '', test_points\.csv has 'null'"):
        submission.validate_submission(path, tp)


def test_failed_check_writes_nothing(tmp_path):
    """A table whose written form does not read back as ``test_points`` (a name with a carriage return) is refused
    before anything is written: an existing submission stays as it was, no file appears, no temporary is left."""
    path = tmp_path / "submission.csv"
    submission.write_submission(path, _tp(), np.zeros((2, 3, 2)))
    before = path.read_bytes()
    bad = TestPoints(["b\r.jpg", "a.jpg"], np.array([[2, 0], [1, 1]]))
    with pytest.raises(submission.SubmissionError, match=rf"{path}: line 2 is 'b'"):
        submission.write_submission(path, bad, np.ones((2, 3, 2)))
    assert path.read_bytes() == before
    with pytest.raises(submission.SubmissionError):
        submission.write_submission(tmp_path / "new.csv", bad, np.ones((2, 3, 2)))
    assert sorted(os.listdir(tmp_path)) == ["submission.csv"]


def test_partial_run_writes_a_partial_submission_only(tmp_path):
    """``max_test_images`` below the test set: ``submission_partial.csv`` (its rows checked), no ``submission.csv``
    (an earlier one is removed, never left looking like this run's); a complete run puts ``submission.csv`` back."""
    from landmarks_lib.core import params as lp
    from landmarks_lib.runs import workflow

    data, run = tmp_path / "data", tmp_path / "run"
    (data / "train").mkdir(parents=True)
    (data / "train" / "landmarks.csv").write_text("file_name\tPoint_0_X\tPoint_0_Y\n")
    (data / "test").mkdir()
    (data / "test" / "test_points.csv").write_text(
        "file_name\tpoint_index_list\n" + "".join(f"img{i}.jpg\t[0, 2]\n" for i in range(5)))
    full = read_test_points(data / "test" / "test_points.csv", num_points=3)
    pred = np.arange(5 * 3 * 2, dtype=float).reshape(5, 3, 2)
    from landmarks_lib.runs.run_folder import RunFolder

    p = lp.resolve(data_dir=str(data), run_dir=str(run), overrides={"max_test_images": 2})
    folder = RunFolder(run).create("test")

    workflow.write_results(p, folder, full, pred, {"val_mse": 1.0})
    assert len(submission.validate_submission(folder.file("submission.csv"), full)) == 5
    assert folder.submission() == str(run / "submission.csv")

    cut = TestPoints(full.names[:2], full.indices[:2])  # what predict_test returns with max_test_images = 2
    m = workflow.write_results(p, folder, cut, pred[:2], {"val_mse": 1.0})
    assert m["n_test"] == 2
    assert sorted(f for f in os.listdir(run) if f.startswith("submission")) == ["submission_partial.csv"]
    assert folder.submission() == str(run / "submission_partial.csv")
    # labels: the continuous predictions minus 0.5
    assert (run / "submission_partial.csv").read_text().splitlines()[1:] == ["img0.jpg,-0.5,0.5,3.5,4.5",
                                                                             "img1.jpg,5.5,6.5,9.5,10.5"]
    with pytest.raises(submission.SubmissionError, match="2 rows, test_points.csv has 5"):
        submission.validate_submission(run / "submission_partial.csv", full)
    with pytest.raises(FileNotFoundError):
        submission.validate_submission(folder.file("submission.csv"), full)

    shifted = TestPoints(full.names[1:3], full.indices[1:3])
    with pytest.raises(submission.SubmissionError, match="the 2 test images predicted are not its first 2 rows"):
        workflow.write_results(p, folder, shifted, pred[1:3], {})
    assert (run / "submission_partial.csv").read_text().splitlines()[1] == "img0.jpg,-0.5,0.5,3.5,4.5"

    workflow.write_results(p, folder, full, pred, {})
    assert sorted(f for f in os.listdir(run) if f.startswith("submission")) == ["submission.csv"]
