"""landmarks_lib.validate: every kind of bad input is reported with its severity, file and line."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from landmarks_lib.data.validate import DatasetError, Problem, ValidationReport, main, validate_dataset

K = 5
W, H = 40, 48


def header(k=K):
    return "\t".join(["file_name"] + [f"Point_{i}_{c}" for i in range(k) for c in "XY"])


def points_row(name, pts):
    return "\t".join([name] + [str(v) for v in np.asarray(pts).ravel()])


def inside_points(seed=0):
    r = np.random.RandomState(seed)
    return np.stack([r.randint(2, W - 2, K), r.randint(2, H - 2, K)], axis=1)


def save_jpeg(path, w=W, h=H, seed=0, **kw):
    a = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)
    Image.fromarray(a).save(path, quality=90, **kw)


def make_dataset(root, n_train=4, n_test=2, groups=False):
    """A valid tiny dataset: ``t0.jpg..`` (K = 5, 40x48 px, points inside), ``s0.jpg..`` with 3 indices each."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "test" / "images").mkdir(parents=True)
    rows = [header()]
    for i in range(n_train):
        save_jpeg(root / "train" / "images" / f"t{i}.jpg", seed=i)
        rows.append(points_row(f"t{i}.jpg", inside_points(i)))
    (root / "train" / "landmarks.csv").write_text("\n".join(rows) + "\n")
    tp = ["file_name\tpoint_index_list"]
    for i in range(n_test):
        save_jpeg(root / "test" / "images" / f"s{i}.jpg", seed=100 + i)
        tp.append(f"s{i}.jpg\t[0, {i % K}, 4]")
    (root / "test" / "test_points.csv").write_text("\n".join(tp) + "\n")
    if groups:
        (root / "train" / "groups.csv").write_text(
            "file_name\tgroup\n" + "".join(f"t{i}.jpg\t{i // 2}\n" for i in range(n_train)))
    return root


def set_row(root, line, text):
    """Replace line ``line`` (1-based, header = 1) of train/landmarks.csv; append when past the end."""
    p = root / "train" / "landmarks.csv"
    lines = p.read_text().splitlines()
    if line - 1 < len(lines):
        lines[line - 1] = text
    else:
        lines.append(text)
    p.write_text("\n".join(lines) + "\n")


def set_test_row(root, line, text):
    p = root / "test" / "test_points.csv"
    lines = p.read_text().splitlines()
    lines[line - 1] = text
    p.write_text("\n".join(lines) + "\n")


def only(rep, kind):
    ps = [p for p in rep.problems if p.kind == kind]
    assert len(ps) == 1, f"expected one {kind} problem, got {ps}\n{rep}"
    return ps[0]


@pytest.fixture
def ds(tmp_path):
    return make_dataset(tmp_path / "data")


# ------------------------------------------------------------------------------------------------- valid data
def test_valid_dataset_is_ok(ds):
    rep = validate_dataset(ds)
    assert isinstance(rep, ValidationReport)
    assert rep.ok and rep.problems == [], str(rep)
    assert (rep.num_train, rep.num_test, rep.num_points) == (4, 2, K)
    assert rep.counts["total"] == {"fatal": 0, "warning": 0, "info": 0}
    sz = rep.image_sizes
    assert list(sz.columns[:4]) == ["name", "width", "height", "split"]
    assert len(sz) == 6 and (sz["width"] == W).all() and (sz["height"] == H).all()
    assert sorted(sz["split"].unique()) == ["test", "train"]
    assert "OK" in str(rep) and "4 training rows, 2 test rows, 5 points" in str(rep)
    rep.raise_if_fatal()  # no error


def test_full_decode_and_workers_and_no_images_agree_on_valid_data(ds):
    for kw in ({"check_images": "full"}, {"num_workers": 2}, {"check_images": False}, {"progress": True}):
        rep = validate_dataset(ds, **kw)
        assert rep.ok and rep.problems == [], (kw, str(rep))
    assert len(validate_dataset(ds, check_images=False).image_sizes) == 0


def test_missing_data_dir_and_bad_arguments(tmp_path, ds):
    with pytest.raises(FileNotFoundError):
        validate_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="check_images"):
        validate_dataset(ds, check_images="fast")
    with pytest.raises(ValueError, match="bad_rows"):
        validate_dataset(ds, bad_rows="drop")


# ------------------------------------------------------------------------------------------------- landmarks.csv
def test_landmarks_missing(ds):
    (ds / "train" / "landmarks.csv").unlink()
    rep = validate_dataset(ds)
    p = only(rep, "landmarks_missing")
    assert (p.severity, p.file, p.line) == ("fatal", "train/landmarks.csv", None)
    assert not rep.ok
    # The test split is still checked, but its indices cannot be range-checked without K.
    assert only(rep, "range_unchecked").severity == "warning"
    assert rep.num_test == 2


def test_bad_header(ds):
    set_row(ds, 1, header().replace("Point_1_X", "Point_1_x"))
    rep = validate_dataset(ds)
    p = only(rep, "bad_header")
    assert (p.severity, p.file, p.line) == ("fatal", "train/landmarks.csv", 1)
    assert "Point_1_x" in p.message


@pytest.mark.parametrize("text, kind, words", [
    ("t1.jpg\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11", "wrong_field_count", "too many fields"),
    ("t1.jpg\t1\t2\t3", "wrong_field_count", "missing coordinate"),
    ("t1.jpg\t1\tNaN\t3\t4\t5\t6\t7\t8\t9\t10", "bad_coordinates", "NaN"),
    ("t1.jpg\t1\t\t3\t4\t5\t6\t7\t8\t9\t10", "bad_coordinates", "empty coordinate in column Point_0_Y"),
    ("t1.jpg\t1\tabc\t3\t4\t5\t6\t7\t8\t9\t10", "bad_coordinates", "non-numeric 'abc'"),
    ("\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10", "empty_name", "empty file_name"),
])
def test_bad_rows_fatal_by_default_warning_under_skip(ds, text, kind, words):
    set_row(ds, 3, text)  # line 3 = second data row (t1.jpg)
    rep = validate_dataset(ds)
    p = only(rep, kind)
    assert (p.severity, p.file, p.line) == ("fatal", "train/landmarks.csv", 3)
    assert words in p.message
    assert rep.num_train == 3
    skip = validate_dataset(ds, bad_rows="skip")
    q = only(skip, kind)
    assert q.severity == "warning" and q.line == 3 and "dropped" in q.message
    assert skip.ok


def test_bad_row_image_is_not_reported_unlisted(ds):
    set_row(ds, 3, "t1.jpg\t1\tabc\t3\t4\t5\t6\t7\t8\t9\t10")
    rep = validate_dataset(ds)
    assert [p.kind for p in rep.problems] == ["bad_coordinates"]


def test_duplicate_file_name(ds):
    set_row(ds, 6, points_row("t0.jpg", inside_points(9)))
    rep = validate_dataset(ds)
    p = only(rep, "duplicate_name")
    assert (p.severity, p.file, p.line) == ("fatal", "train/landmarks.csv", 6)
    assert "first on line 2" in p.message and "t0.jpg" in p.message


# ------------------------------------------------------------------------------------------------- image files
def test_listed_image_missing(ds):
    (ds / "train" / "images" / "t2.jpg").unlink()
    rep = validate_dataset(ds)
    p = only(rep, "missing_image")
    assert (p.severity, p.file, p.line) == ("fatal", "train/images/t2.jpg", 4)
    assert "train/images/t2.jpg (train/landmarks.csv:4)" in str(p)


def test_zero_byte_image(ds):
    (ds / "train" / "images" / "t1.jpg").write_bytes(b"")
    p = only(validate_dataset(ds), "empty_image")
    assert (p.severity, p.file, p.line) == ("fatal", "train/images/t1.jpg", 3)
    assert "0 bytes" in p.message


@pytest.mark.parametrize("check", [True, "full"])
def test_truncated_jpeg_found_by_default_check(ds, check):
    p = ds / "train" / "images" / "t3.jpg"
    save_jpeg(p, w=120, h=100, seed=7)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    prob = only(validate_dataset(ds, check_images=check), "truncated_image")
    assert (prob.severity, prob.file, prob.line) == ("fatal", "train/images/t3.jpg", 5)


def test_text_file_named_jpg(ds):
    (ds / "test" / "images" / "s1.jpg").write_text("not an image")
    p = only(validate_dataset(ds), "not_an_image")
    assert (p.severity, p.file, p.line) == ("fatal", "test/images/s1.jpg", 3)
    assert "test/test_points.csv:3" in str(p)


def test_images_folder_missing(ds):
    for f in (ds / "test" / "images").iterdir():
        f.unlink()
    (ds / "test" / "images").rmdir()
    p = only(validate_dataset(ds), "images_folder_missing")
    assert (p.severity, p.file) == ("fatal", "test/images") and "2 listed images" in p.message


# ------------------------------------------------------------------------------------------------- warnings, info
def test_points_far_outside_is_warning_near_outside_is_info(ds):
    far = inside_points(1)
    far[2] = [W + int(0.3 * W), 10]  # 30% of the width beyond the right edge
    set_row(ds, 3, points_row("t1.jpg", far))
    near = inside_points(2)
    near[0] = [-5, 10]  # 5 px left of the image: a face cut by the frame
    set_row(ds, 4, points_row("t2.jpg", near))
    rep = validate_dataset(ds)
    assert rep.ok
    p = only(rep, "points_far_outside")
    assert (p.severity, p.file, p.line) == ("warning", "train/images/t1.jpg", 3)
    assert "1 of 5 points" in p.message and "point 2 at (52, 10)" in p.message
    q = only(rep, "points_outside")
    assert (q.severity, q.file, q.line) == ("info", "train/images/t2.jpg", 4)


@pytest.mark.parametrize("mode, name, words", [
    ("L", "gray.png", "grayscale"), ("P", "pal.png", "palette"), ("RGBA", "rgba.png", "alpha composited"),
    ("CMYK", "cmyk.jpg", "CMYK"), ("I;16", "g16.png", "16-bit"), ("1", "bw.png", "1-bit"),
])
def test_odd_modes_are_warnings(ds, mode, name, words):
    im = Image.new(mode, (W, H))
    im.save(ds / "train" / "images" / name)
    set_row(ds, 6, points_row(name, inside_points(5)))
    rep = validate_dataset(ds)
    assert rep.ok
    p = only(rep, "mode_converted")
    assert (p.severity, p.file, p.line) == ("warning", f"train/images/{name}", 6)
    assert words in p.message


def test_exif_orientation_is_warning(ds):
    exif = Image.Exif()
    exif[0x0112] = 6
    save_jpeg(ds / "train" / "images" / "t0.jpg", exif=exif.tobytes())
    rep = validate_dataset(ds)
    p = only(rep, "exif_orientation")
    assert (p.severity, p.file, p.line) == ("warning", "train/images/t0.jpg", 2)
    assert "ignored by policy" in p.message
    # size is reported as stored, not rotated
    row = rep.image_sizes.set_index("name").loc["t0.jpg"]
    assert (row["width"], row["height"]) == (W, H)


def test_tiny_image_is_info(ds):
    save_jpeg(ds / "test" / "images" / "s0.jpg", w=20, h=31)
    rep = validate_dataset(ds)
    assert rep.ok
    p = only(rep, "tiny_image")
    assert (p.severity, p.file, p.line) == ("info", "test/images/s0.jpg", 2)
    assert "20x31" in p.message


def test_unlisted_images_are_info(ds):
    save_jpeg(ds / "train" / "images" / "extra.jpg")
    (ds / "test" / "images" / "notes.txt").write_text("x")
    rep = validate_dataset(ds)
    assert rep.ok
    ps = [p for p in rep.problems if p.kind == "unlisted_image"]
    assert [(p.severity, p.file, p.line) for p in ps] == [("info", "test/images/notes.txt", None),
                                                          ("info", "train/images/extra.jpg", None)]


def test_png_named_jpg_is_info(ds):
    Image.new("RGB", (W, H)).save(ds / "train" / "images" / "t0.jpg", format="PNG")
    p = only(validate_dataset(ds), "format_mismatch")
    assert (p.severity, p.line) == ("info", 2) and "PNG" in p.message


# ------------------------------------------------------------------------------------------------- test_points.csv
@pytest.mark.parametrize("text, kind, words", [
    ("s1.jpg\t[1, 2", "bad_index_list", "not a list of integers"),
    ("s1.jpg\t[1.5, 2, 3]", "bad_index_list", "not a non-empty list of integers"),
    ("s1.jpg\t__import__('os')", "bad_index_list", "not a list of integers"),
    ("s1.jpg\t[0, 5, 1]", "index_out_of_range", "point index 5 out of range [0, 5)"),
    ("s1.jpg\t[0, -1, 1]", "index_out_of_range", "point index -1 out of range"),
    ("s1.jpg\t[0, 1]", "inconsistent_list_length", "2 indices, but line 2 has 3"),
    ("s0.jpg\t[0, 1, 2]", "duplicate_name", "first on line 2"),
    ("s1.jpg\t[0, 1, 2]\textra", "wrong_field_count", "wrong number of tab-separated fields, expected 2, got 3"),
])
def test_test_points_problems(ds, text, kind, words):
    set_test_row(ds, 3, text)
    rep = validate_dataset(ds)
    p = only(rep, kind)
    assert (p.severity, p.file, p.line) == ("fatal", "test/test_points.csv", 3)
    assert words in p.message


def test_test_points_bad_header_and_missing(ds):
    set_test_row(ds, 1, "file_name\tpoints")
    p = only(validate_dataset(ds), "bad_header")
    assert (p.severity, p.file, p.line) == ("fatal", "test/test_points.csv", 1)
    (ds / "test" / "test_points.csv").unlink()
    p = only(validate_dataset(ds), "test_points_missing")
    assert p.severity == "fatal"


def test_unreadable_test_points_names_the_line_and_lists_no_image_as_unlisted(ds):
    p = ds / "test" / "test_points.csv"
    p.write_bytes(p.read_bytes() + b"caf\xe9.jpg\t[0, 1, 2]\n")
    rep = validate_dataset(ds)
    bad = only(rep, "not_utf8")
    assert (bad.severity, bad.file, bad.line) == ("fatal", "test/test_points.csv", 4)
    assert not [q for q in rep.problems if q.kind == "unlisted_image"], str(rep)


def test_missing_test_image(ds):
    (ds / "test" / "images" / "s1.jpg").unlink()
    p = only(validate_dataset(ds), "missing_image")
    assert (p.severity, p.file, p.line) == ("fatal", "test/images/s1.jpg", 3)


# ------------------------------------------------------------------------------------------------- groups.csv
def test_groups(tmp_path):
    ds = make_dataset(tmp_path / "g", groups=True)
    assert validate_dataset(ds).problems == []
    g = ds / "train" / "groups.csv"
    g.write_text("file_name\tgroup\nt0.jpg\t0\nt1.jpg\t0\nzz.jpg\t1\nt0.jpg\t2\nt2.jpg\t1\n")
    rep = validate_dataset(ds)
    dup = only(rep, "duplicate_name")
    assert (dup.severity, dup.file, dup.line) == ("fatal", "train/groups.csv", 5)
    unk = only(rep, "group_unknown_image")
    assert (unk.severity, unk.line) == ("warning", 4)
    nog = only(rep, "image_without_group")
    assert nog.severity == "warning" and "t3.jpg" in nog.message


# ------------------------------------------------------------------------------------------------- report API
def test_counts_frame_and_summary(ds):
    (ds / "train" / "images" / "t1.jpg").unlink()
    (ds / "train" / "images" / "t2.jpg").write_bytes(b"")
    save_jpeg(ds / "train" / "images" / "extra.jpg")
    rep = validate_dataset(ds)
    assert rep.counts["fatal"] == {"missing_image": 1, "empty_image": 1}
    assert rep.counts["info"] == {"unlisted_image": 1}
    assert rep.counts["total"] == {"fatal": 2, "warning": 0, "info": 1}
    assert [p.severity for p in rep.problems] == ["fatal", "fatal", "info"]  # fatal first
    df = rep.to_frame()
    assert list(df.columns) == ["severity", "kind", "file", "line", "message"]
    assert df["line"].tolist()[:2] == [3, 4] and pd.isna(df["line"].iloc[2])
    s = str(rep)
    assert "NOT OK (2 fatal)" in s and "fatal   missing_image: 1" in s and "train/images/t1.jpg" in s


def test_raise_if_fatal_lists_first_20_and_counts_the_rest(tmp_path):
    ds = make_dataset(tmp_path / "many", n_train=25)
    for i in range(25):
        (ds / "train" / "images" / f"t{i}.jpg").unlink()
    rep = validate_dataset(ds)
    assert rep.counts["total"]["fatal"] == 25
    with pytest.raises(DatasetError) as e:
        rep.raise_if_fatal()
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "25 fatal problem(s)" in msg and "... and 5 more fatal problem(s)" in msg
    assert "train/images/t0.jpg (train/landmarks.csv:2): listed but missing" in msg
    assert msg.count("missing_image") == 20


def test_problem_str():
    p = Problem("fatal", "train/landmarks.csv", 7, "bad", "bad_row")
    assert str(p) == "FATAL   bad_row: train/landmarks.csv:7: bad"


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_main_exit_codes(ds, capsys):
    assert main([str(ds)]) == 0
    assert "OK" in capsys.readouterr().out
    (ds / "train" / "images" / "t0.jpg").unlink()
    assert main([str(ds), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "NOT OK" in out and "train/images/t0.jpg" in out
    assert main([str(ds / "nope")]) == 2


def test_cli_subprocess_exit_code(ds):
    (ds / "test" / "images" / "s0.jpg").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "landmarks_lib.validate", str(ds)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 1, r.stderr
    assert "empty_image: test/images/s0.jpg (test/test_points.csv:2)" in r.stdout


def test_the_points_check_in_chunks_equals_the_whole_table_at_once():
    """Bounded memory at contest size: the points-outside check runs in blocks, with the same messages in the same
    order whatever the block size."""
    from types import SimpleNamespace

    import pandas as pd

    from landmarks_lib.data import validate

    rng = np.random.default_rng(0)
    n, k = 11, 7
    pts = rng.integers(-40, 140, (n, k, 2)).astype(np.int16)
    pts[1:5] = rng.integers(-10, 106, (4, k, 2))  # at most a little outside: info, not warning
    pts[0] = 50  # inside
    table = SimpleNamespace(names=[f"{i}.jpg" for i in range(n)], points=pts, num_points=k)
    sizes = pd.DataFrame({"name": table.names + ["test.jpg"], "width": 100, "height": 100,
                          "split": ["train"] * n + ["test"], "mode": "RGB", "format": "JPEG"})
    lines = {name: i + 2 for i, name in enumerate(table.names)}

    def problems(chunk):
        out = []
        validate._check_point_ranges(table, sizes, lines, lambda *a: out.append(a), chunk=chunk)
        return out

    whole = problems(10 ** 6)
    assert {p[3] for p in whole} == {"points_outside", "points_far_outside"}
    assert not any(p[1] == "train/images/0.jpg" for p in whole)
    for chunk in (1, 2, 4):
        assert problems(chunk) == whole
