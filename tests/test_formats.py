"""The dataset formats (``landmarks_lib.data.formats``): pts, wflw, coco and contest, on small files made here.

Each format: read into the label convention (continuous pixels = label + 0.5), detected by ``detect_format``, read
through ``formats.read_dataset``, written back and read again equal within 1e-3 px, and refused with the file (and
line or annotation) named on bad input, an image path with ``..`` included.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from landmarks_lib.core.coords import labels_to_points
from landmarks_lib.data import formats
from landmarks_lib.data.formats import coco, pts, wflw
from landmarks_lib.data.tables import DataFormatError


def _image(path, size=(32, 24)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def _write_text(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


# ------------------------------------------------------------------------------------------------- pts
def _pts_text(values, header=True) -> str:
    body = "".join(f"{x} {y}\n" for x, y in values)
    return f"version: 1\nn_points:  {len(values)}\n{{\n{body}}}\n" if header else body


PTS_A = [(1, 1), (10, 5), (3, 7)]
PTS_B = [(2.5, 4), (11, 12.25), (6, 1)]


@pytest.fixture
def pts_dir(tmp_path):
    """``a.jpg`` + ``a.pts`` (header), ``sub/b.png`` + ``sub/b.png.pts`` (no header), an orphan ``.pts``."""
    d = tmp_path / "pts"
    _image(str(d / "a.jpg"))
    _write_text(str(d / "a.pts"), _pts_text(PTS_A))
    _image(str(d / "sub" / "b.png"))
    _write_text(str(d / "sub" / "b.png.pts"), _pts_text(PTS_B, header=False))
    _write_text(str(d / "sub" / "orphan.pts"), _pts_text(PTS_A))
    return d


def test_pts_reads_both_forms_one_based(pts_dir):
    data = pts.read_tree(pts_dir)
    assert data.format == "pts" and data.root == str(pts_dir)
    assert data.table.names == ["a.jpg", "sub/b.png"]
    assert data.table.points.dtype == np.float32  # b has non-integer values
    np.testing.assert_array_equal(data.table.points[0], np.array(PTS_A, np.float64) - 1)
    np.testing.assert_allclose(data.table.points[1], np.array(PTS_B) - 1)
    assert data.boxes is None and data.attributes == {}


def test_pts_integer_values_give_int16_labels(tmp_path):
    _image(str(tmp_path / "x.jpg"))
    _write_text(str(tmp_path / "x.pts"), _pts_text(PTS_A))
    data = formats.read_dataset(tmp_path)
    assert data.format == "pts" and data.table.points.dtype == np.int16
    np.testing.assert_array_equal(data.table.points[0], [[0, 0], [9, 4], [2, 6]])
    np.testing.assert_allclose(labels_to_points(data.table.points)[0, 0], [0.5, 0.5])


def test_pts_detect_and_read_dataset(pts_dir):
    assert formats.detect_format(pts_dir) == "pts"
    assert formats.read_dataset(pts_dir).table.names == ["a.jpg", "sub/b.png"]


def test_pts_bad_line_names_file_and_line(tmp_path):
    _image(str(tmp_path / "c.jpg"))
    _write_text(str(tmp_path / "c.pts"), "version: 1\nn_points: 2\n{\n1 2\n3 oops\n}\n")
    with pytest.raises(DataFormatError, match=r"c\.pts:5: not a number"):
        pts.read_tree(tmp_path)


def test_pts_n_points_disagreeing(tmp_path):
    _image(str(tmp_path / "c.jpg"))
    _write_text(str(tmp_path / "c.pts"), "version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(DataFormatError, match=r"c\.pts:2: n_points is 3"):
        pts.read_tree(tmp_path)


def test_pts_photo_groups():
    names = ["helen/1_1.jpg", "helen/1_2.jpg", "lfpw/image_0001.jpg", "lfpw/image_0002.jpg"]
    groups = formats.photo_groups(names)
    assert groups[0] == groups[1] == "helen/1"
    assert groups[2] == "lfpw/image_0001" and groups[3] == "lfpw/image_0002"  # a leading zero: not a face index
    assert len(set(groups)) == 3


def test_pts_write_tree_refuses_collisions(tmp_path):
    with pytest.raises(ValueError, match="would both be written"):
        pts.write_tree(tmp_path, ["x/a.jpg", "x/a.png"], np.zeros((2, 3, 2)))
    assert not os.path.exists(tmp_path / "x")  # refused before writing anything


def test_pts_round_trip(pts_dir, tmp_path):
    data = pts.read_tree(pts_dir)
    out = tmp_path / "out"
    for n in data.table.names:
        _image(str(out / n))
    written = pts.write_tree(out, data.table.names, labels_to_points(data.table.points))
    assert written == [str(out / "a.pts"), str(out / "sub" / "b.pts")]
    again = pts.read_tree(out)
    assert again.table.names == data.table.names
    np.testing.assert_allclose(again.table.points.astype(np.float64), data.table.points.astype(np.float64),
                               atol=1e-3)


def test_pts_image_linked_outside_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.jpg"
    _image(str(outside))
    d = tmp_path / "data"
    d.mkdir()
    os.symlink(outside, d / "face.jpg")
    _write_text(str(d / "face.pts"), _pts_text(PTS_A))
    with pytest.raises(DataFormatError, match="outside the data folder"):
        pts.read_tree(d)
    assert pts.read_tree(d, allow_links_outside=True).table.names == ["face.jpg"]


@pytest.mark.parametrize("name", ["../x.jpg", "a/../x.jpg", "/abs/x.jpg", "a\\x.jpg", ""])
def test_check_inside_refuses_unsafe_names(tmp_path, name):
    with pytest.raises(DataFormatError):
        formats.check_inside(tmp_path, name)


# ------------------------------------------------------------------------------------------------- wflw
def _wflw_line(seed: int, name: str, flags=(0, 1, 0, 0, 1, 0), box=(10, 20, 110, 130), integer=False) -> str:
    rng = np.random.default_rng(seed)
    v = rng.uniform(0, 200, size=196)
    coords = " ".join(str(int(x)) if integer else f"{x:.6f}" for x in v)
    return f"{coords} {' '.join(map(str, box))} {' '.join(map(str, flags))} {name}\n"


def _wflw_values(line: str) -> np.ndarray:
    return np.array([float(p) for p in line.split()[:196]]).reshape(98, 2)


@pytest.fixture
def wflw_dir(tmp_path):
    """A WFLW download's layout: two annotation files (train and test), ``WFLW_images``; one photo with two faces."""
    d = tmp_path / "wflw"
    lines = [_wflw_line(0, "51--Dancing/51_Dancing_1.jpg"), "\n",
             _wflw_line(1, "51--Dancing/51_Dancing_1.jpg", flags=(1, 0, 0, 1, 0, 1), box=(5, 6, 7, 8)),
             _wflw_line(2, "2--Demo/2_Demo_9.jpg", flags=(0, 0, 0, 0, 0, 0))]
    ann = d / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    _write_text(str(ann / "list_98pt_rect_attr_test.txt"), _wflw_line(3, "x/y.jpg"))
    _write_text(str(ann / "list_98pt_rect_attr_train.txt"), "".join(lines))
    (d / "WFLW_images").mkdir()
    return d, lines


def test_wflw_find_prefers_train_and_detects(wflw_dir):
    d, _ = wflw_dir
    assert os.path.basename(wflw.find_annotation(d)) == "list_98pt_rect_attr_train.txt"
    assert formats.detect_format(d) == "wflw"
    assert wflw.images_root(d) == str(d / "WFLW_images")
    assert wflw.find_annotation(d / "WFLW_images") is None


def test_wflw_reads_points_boxes_attributes(wflw_dir):
    d, lines = wflw_dir
    data = formats.read_dataset(d)
    assert data.format == "wflw" and data.root == str(d / "WFLW_images") and len(data) == 3
    assert data.table.names == ["51--Dancing/51_Dancing_1.jpg"] * 2 + ["2--Demo/2_Demo_9.jpg"]  # faces repeat
    assert data.table.points.shape == (3, 98, 2) and data.table.points.dtype == np.float32
    np.testing.assert_allclose(data.table.points[1], _wflw_values(lines[2]), atol=1e-4)  # labels = values
    np.testing.assert_array_equal(data.table.lines, [1, 3, 4])  # the blank line counts
    assert data.boxes.dtype == np.float32 and data.boxes.shape == (3, 4)
    np.testing.assert_array_equal(data.boxes[1], [5.5, 6.5, 7.5, 8.5])
    assert list(data.attributes) == list(wflw.ATTRIBUTES)
    assert data.attributes["pose"].dtype == bool
    np.testing.assert_array_equal(data.attributes["pose"], [False, True, False])
    np.testing.assert_array_equal(data.attributes["occlusion"], [True, False, False])
    np.testing.assert_array_equal(data.attributes["blur"], [False, True, False])


def test_wflw_file_directly_in_folder_integer_labels(tmp_path):
    _write_text(str(tmp_path / "faces.txt"), _wflw_line(5, "a.jpg", integer=True))
    _write_text(str(tmp_path / "notes.txt"), "not an annotation\n")
    assert wflw.find_annotation(tmp_path) == str(tmp_path / "faces.txt")
    data = formats.read_dataset(tmp_path, data_format="wflw")
    assert data.root == str(tmp_path) and data.table.points.dtype == np.int16


@pytest.mark.parametrize("line, message", [
    ("1 2 3 x.jpg\n", "expected 207"),
    ("q" + _wflw_line(0, "x.jpg")[1:], "field 1 is not a number"),
    (_wflw_line(0, "x.jpg", flags=(0, 2, 0, 0, 0, 0)), "flag expression must be 0 or 1"),
    (_wflw_line(0, "../x.jpg"), r"'\.\.' part"),
    (_wflw_line(0, "/etc/x.jpg"), "must be relative"),
])
def test_wflw_errors_name_file_and_line(tmp_path, line, message):
    path = _write_text(str(tmp_path / "list.txt"), _wflw_line(9, "ok.jpg") + line)
    with pytest.raises(DataFormatError, match=rf"list\.txt:2: .*{message}"):
        wflw.read(path, tmp_path)


def test_wflw_empty_file_and_missing_annotation(tmp_path):
    path = _write_text(str(tmp_path / "empty.txt"), "\n\n")
    with pytest.raises(DataFormatError, match="no faces"):
        wflw.read(path, tmp_path)
    with pytest.raises(DataFormatError, match="no WFLW annotation"):
        wflw.read_dataset(tmp_path)


def test_wflw_round_trip(wflw_dir, tmp_path):
    d, lines = wflw_dir
    data = wflw.read_dataset(d)
    out = str(tmp_path / "out" / "list_train.txt")
    wflw.write(out, data.table.names, labels_to_points(data.table.points), data.boxes, data.attributes)
    written = [x for x in open(out, encoding="utf-8").read().splitlines() if x]
    source = [x for x in lines if x.strip()]
    for a, b in zip(written, source):
        pa, pb = a.split(), b.split()
        assert pa[-1] == pb[-1] and pa[196:206] == pb[196:206]  # box and flags exactly
        np.testing.assert_allclose(np.array(pa[:196], float), np.array(pb[:196], float), atol=1e-3)
    again = wflw.read(out, data.root)
    np.testing.assert_allclose(again.table.points, data.table.points, atol=1e-3)
    np.testing.assert_array_equal(again.boxes, data.boxes)
    for a in wflw.ATTRIBUTES:
        np.testing.assert_array_equal(again.attributes[a], data.attributes[a])


def test_wflw_write_defaults_and_nan(tmp_path):
    p = np.full((1, 98, 2), 10.5)
    p[0, 0] = [20.5, 30.5]
    p[0, 1] = np.nan
    out = str(tmp_path / "w.txt")
    wflw.write(out, ["a.jpg"], p)
    fields = open(out).read().split()
    assert fields[196:206] == ["10", "10", "20", "30"] + ["0"] * 6  # box from the points, flags 0
    data = wflw.read(out, tmp_path)
    assert np.isnan(data.table.points[0, 1]).all() and data.table.points[0, 0].tolist() == [20, 30]
    with pytest.raises(ValueError, match="whitespace"):
        wflw.write(out, ["a b.jpg"], p)
    with pytest.raises(ValueError, match="98, 2"):
        wflw.write(out, ["a.jpg"], p[:, :5])


# ------------------------------------------------------------------------------------------------- coco
def _kpts(k: int, seed: int, hidden=()) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i, (x, y) in enumerate(rng.uniform(0, 300, size=(k, 2)).round(2)):
        out += [0, 0, 0] if i in hidden else [float(x), float(y), 2]
    return out


def _wholebody_doc() -> dict:
    images = [{"id": 7, "file_name": "000007.jpg", "width": 640, "height": 480},
              {"id": 9, "file_name": "sub/000009.jpg"}]
    anns = [{"id": 1, "image_id": 7, "face_kpts": _kpts(68, 0, hidden=(3, 4)), "face_box": [10, 20, 100, 120.5],
             "face_valid": True, "keypoints": [0] * 51},
            {"id": 2, "image_id": 7, "face_kpts": [0] * 204, "face_box": [0, 0, 0, 0], "face_valid": False},
            {"id": 3, "image_id": 9, "face_kpts": _kpts(68, 1), "face_box": [1, 2, 3, 4], "face_valid": True},
            {"id": 4, "image_id": 7, "face_kpts": _kpts(68, 2), "face_box": [5, 6, 7, 8], "face_valid": True}]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def _plain_doc() -> dict:
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    anns = [{"image_id": 1, "keypoints": _kpts(5, 3, hidden=(0,)), "num_keypoints": 4, "bbox": [1, 1, 10, 10]},
            {"image_id": 2, "keypoints": [0] * 15, "num_keypoints": 0, "bbox": [1, 1, 10, 10]},
            {"image_id": 2, "keypoints": _kpts(5, 4), "bbox": [0, 0, 20, 30]}]
    return {"images": images, "annotations": anns}


def _json(path, doc) -> str:
    return _write_text(str(path), json.dumps(doc))


def test_coco_wholebody_reads_valid_faces(tmp_path):
    doc = _wholebody_doc()
    _json(tmp_path / "annotations" / "coco_wholebody_train_v1.0.json", doc)
    _json(tmp_path / "annotations" / "coco_wholebody_val_v1.0.json", doc)
    (tmp_path / "images").mkdir()
    assert formats.detect_format(tmp_path) == "coco"
    assert os.path.basename(coco.find_annotation(tmp_path)) == "coco_wholebody_train_v1.0.json"
    data = formats.read_dataset(tmp_path)
    assert data.format == "coco" and data.root == str(tmp_path / "images") and len(data) == 3
    assert data.table.names == ["000007.jpg", "sub/000009.jpg", "000007.jpg"]
    np.testing.assert_array_equal(data.attributes["image_id"], [7, 9, 7])
    assert data.attributes["image_id"].dtype == np.int64
    np.testing.assert_array_equal(data.table.lines, [1, 3, 4])
    assert [s[0] for s in data.table.skipped] == [2]  # face_valid false: skipped, counted
    pts0 = data.table.points[0]
    assert data.table.points.shape == (3, 68, 2) and data.table.points.dtype == np.float32
    assert np.isnan(pts0[3]).all() and np.isnan(pts0[4]).all() and np.isfinite(pts0[[0, 1, 2, 5]]).all()
    want = np.array(doc["annotations"][0]["face_kpts"], float).reshape(68, 3)[:, :2]
    np.testing.assert_allclose(pts0[5:], want[5:], atol=1e-4)  # labels = values (pixel indices)
    np.testing.assert_allclose(data.boxes[0], [10, 20, 110, 140.5])  # continuous, no offset


def test_coco_plain_keypoints(tmp_path):
    _json(tmp_path / "faces.json", _plain_doc())
    assert formats.detect_format(tmp_path) == "coco"
    data = coco.read_dataset(tmp_path)
    assert data.root == str(tmp_path) and data.table.names == ["a.png", "b.png"]
    assert data.table.points.shape == (2, 5, 2) and len(data.table.skipped) == 1
    assert np.isnan(data.table.points[0, 0]).all() and not np.isnan(data.table.points[1]).any()
    np.testing.assert_allclose(data.boxes[1], [0, 0, 20, 30])


def test_coco_find_annotation_ignores_other_json(tmp_path):
    _json(tmp_path / "results.json", [{"image_id": 1, "keypoints": []}])
    _json(tmp_path / "config.json", {"images": 3})
    assert coco.find_annotation(tmp_path) is None
    with pytest.raises(DataFormatError, match="no landmarks found"):
        formats.detect_format(tmp_path)


def _bad(doc, i, **change):
    doc["annotations"][i].update(change)
    return doc


@pytest.mark.parametrize("make, message", [
    (lambda: _bad(_wholebody_doc(), 2, face_kpts=[1.0] * 201), r"annotations\[2\]: 'face_kpts' holds 201 values"),
    (lambda: _bad(_wholebody_doc(), 3, image_id=99), r"annotations\[3\]: image_id 99 is not"),
    (lambda: _bad(_wholebody_doc(), 0, face_kpts=["1"] * 204), r"annotations\[0\]: 'face_kpts' must be a list of n"),
    (lambda: _bad(_wholebody_doc(), 0, face_box=[1, 2, "w", 4]), r"annotations\[0\]: 'face_box' must be"),
    (lambda: _bad(_plain_doc(), 2, keypoints=_kpts(6, 0)), r"annotations\[2\]: 'keypoints' holds 18 values, "
                                                           r"expected 15"),
    (lambda: {**_plain_doc(), "images": [{"id": 1, "file_name": "../a.png"}]}, r"images\[0\]: .*'\.\.' part"),
    (lambda: {**_plain_doc(), "images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "c.png"}]},
     r"images\[1\]: image id 1 is repeated"),
])
def test_coco_errors_name_file_and_annotation(tmp_path, make, message):
    path = _json(tmp_path / "bad.json", make())
    with pytest.raises(DataFormatError, match=rf"bad\.json: {message}"):
        coco.read(path, tmp_path)


def test_coco_not_json_and_no_faces(tmp_path):
    path = _write_text(str(tmp_path / "x.json"), "{not json")
    with pytest.raises(DataFormatError, match="not a JSON file"):
        coco.read(path, tmp_path)
    doc = _wholebody_doc()
    for a in doc["annotations"]:
        a["face_valid"] = False
    with pytest.raises(DataFormatError, match="no face annotation"):
        coco.read(_json(tmp_path / "y.json", doc), tmp_path)


@pytest.mark.parametrize("kind, make", [("wholebody", _wholebody_doc), ("keypoints", _plain_doc)])
def test_coco_round_trip(tmp_path, kind, make):
    data = coco.read(_json(tmp_path / "in.json", make()), tmp_path)
    out = str(tmp_path / "out.json")
    coco.write(out, data.table.names, labels_to_points(data.table.points), data.boxes,
               data.attributes["image_id"], kind=kind)
    again = coco.read(out, tmp_path, kind=kind)
    assert again.table.names == data.table.names
    np.testing.assert_array_equal(again.attributes["image_id"], data.attributes["image_id"])
    a, b = again.table.points.astype(np.float64), data.table.points.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(again.boxes, data.boxes, atol=1e-3)


def test_coco_write_default_ids_and_errors(tmp_path):
    p = np.full((3, 4, 2), 5.5)
    out = str(tmp_path / "o.json")
    coco.write(out, ["a.jpg", "b.jpg", "a.jpg"], p, kind="keypoints")
    data = coco.read(out, tmp_path)
    np.testing.assert_array_equal(data.attributes["image_id"], [1, 2, 1])
    assert np.isnan(data.boxes).all()  # no boxes given: none written
    with pytest.raises(ValueError, match="given to both"):
        coco.write(out, ["a.jpg", "b.jpg", "c.jpg"], p, image_ids=[1, 1, 2], kind="keypoints")
    with pytest.raises(ValueError, match="68 points"):
        coco.write(out, ["a.jpg", "b.jpg", "a.jpg"], p, kind="wholebody")
    with pytest.raises(ValueError):
        coco.write(out, ["../a.jpg", "b.jpg", "a.jpg"], p, kind="keypoints")


def test_coco_write_results(tmp_path):
    p = np.full((2, 68, 2), 10.5)
    p[1, 3] = np.nan
    out = str(tmp_path / "res.json")
    coco.write_results(out, np.array([7, 9]), p, scores=[0.5, 0.25])
    res = json.load(open(out))
    assert [r["image_id"] for r in res] == [7, 9] and [r["category_id"] for r in res] == [1, 1]
    assert [r["score"] for r in res] == [0.5, 0.25]
    assert res[0]["face_kpts"][:3] == [10.0, 10.0, 1] and len(res[0]["face_kpts"]) == 204
    assert res[1]["face_kpts"][9:12] == [0, 0, 0]
    coco.write_results(out, [1], p[:1, :5], kind="keypoints")
    assert len(json.load(open(out))[0]["keypoints"]) == 15
    with pytest.raises(ValueError, match="one of each"):
        coco.write_results(out, [1, 2, 3], p)


# ------------------------------------------------------------------------------------------------- contest
def _landmarks_csv(path, names, labels) -> None:
    k = labels.shape[1]
    cols = ["file_name"] + [f"Point_{i}_{a}" for i in range(k) for a in "XY"]
    rows = ["\t".join(cols)] + [n + "\t" + "\t".join(str(v) for v in lab.reshape(-1).tolist())
                                for n, lab in zip(names, labels)]
    _write_text(str(path), "\n".join(rows) + "\n")


def test_contest_read_dataset_and_round_trip(tmp_path):
    labels = np.arange(2 * 3 * 2, dtype=np.int64).reshape(2, 3, 2)
    _landmarks_csv(tmp_path / "train" / "landmarks.csv", ["1.jpg", "2.jpg"], labels)
    (tmp_path / "train" / "images").mkdir()
    _write_text(str(tmp_path / "readme.txt"), "contest data\n")  # a .txt that is not a WFLW file
    assert formats.detect_format(tmp_path) == "contest"
    data = formats.read_dataset(tmp_path)
    assert data.format == "contest" and data.root == str(tmp_path / "train" / "images")
    assert data.table.names == ["1.jpg", "2.jpg"] and data.table.points.dtype == np.int16
    np.testing.assert_array_equal(data.table.points, labels)
    out = tmp_path / "copy"
    _landmarks_csv(out / "train" / "landmarks.csv", data.table.names, np.asarray(data.table.points))
    again = formats.read_dataset(out, data_format="contest")
    np.testing.assert_allclose(again.table.points, data.table.points, atol=1e-3)


def test_contest_unsafe_name_refused(tmp_path):
    _landmarks_csv(tmp_path / "train" / "landmarks.csv", ["../1.jpg"], np.zeros((1, 2, 2), np.int64))
    with pytest.raises(DataFormatError, match=r"landmarks\.csv: line 2"):
        formats.read_dataset(tmp_path)


def test_unknown_format_and_empty_folder(tmp_path):
    with pytest.raises(DataFormatError, match="no landmarks found"):
        formats.detect_format(tmp_path)
    with pytest.raises(DataFormatError, match="data_format must be"):
        formats.read_dataset(tmp_path, data_format="csv")
