"""Bad inputs the pipeline would fail on later: the validator reports each first (a Problem with file and line) and
every loader refuses it (a DataFormatError naming file, line and, for a row, its file name).

Each test writes a tiny contest-format folder (``synthetic.write_dataset``) into ``tmp_path`` and breaks one thing.
"""

import os
import shutil

import pytest

from landmarks_lib import synthetic
from landmarks_lib.io import DataFormatError, read_groups, read_landmarks, read_test_points
from landmarks_lib.validate import validate_dataset

LM, TP, GR = "train/landmarks.csv", "test/test_points.csv", "train/groups.csv"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_inputs") / "data"
    synthetic.write_dataset(d, n_train=3, n_test=2, num_points=15, seed=0, min_size=32, max_size=40)
    return d


@pytest.fixture
def ds(pristine, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(pristine, d, symlinks=True)
    return d


def edit_line(path, line, edit):
    """Replace line ``line`` (1-based, header = 1) of a tab-separated file by ``edit(fields)`` (a list of fields)."""
    lines = path.read_text().splitlines()
    lines[line - 1] = "\t".join(edit(lines[line - 1].split("\t")))
    path.write_text("\n".join(lines) + "\n")


def keep_header_only(path):
    path.write_text(path.read_text().splitlines()[0] + "\n")


def fatal(rep, kind):
    """The one fatal problem of the report, which must be of ``kind``."""
    ps = [p for p in rep.problems if p.severity == "fatal"]
    assert [p.kind for p in ps] == [kind], str(rep)
    return ps[0]


def assert_names_file_and_line(problem, rel, line):
    assert (problem.file, problem.line) == (rel, line)
    assert f"{rel}:{line}" in str(problem)


# ------------------------------------------------------------------------------------------------- file names
UNSAFE = ["sub/00001.jpg", "..\\00001.jpg", ".", "..", "C:00001.jpg", "/abs/00001.jpg", "C:\\x\\00001.jpg"]


def rename(name):
    return lambda fields: [name] + fields[1:]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_name_in_landmarks(ds, name):
    path = ds / LM
    edit_line(path, 3, rename(name))
    for bad_rows in ("error", "skip"):  # fatal and refused under both policies: never a row to drop quietly
        p = fatal(validate_dataset(ds, bad_rows=bad_rows), "unsafe_name")
        assert_names_file_and_line(p, LM, 3)
        assert repr(name) in p.message and "plain file name" in p.message
        with pytest.raises(DataFormatError) as e:
            read_landmarks(path, bad_rows=bad_rows)
        assert str(e.value).startswith(f"{path}: line 3 ({name}): file_name {name!r}")
        assert (e.value.problem.kind, e.value.problem.line) == ("unsafe_name", 3)


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_name_in_test_points(ds, name):
    path = ds / TP
    edit_line(path, 2, rename(name))
    p = fatal(validate_dataset(ds), "unsafe_name")
    assert_names_file_and_line(p, TP, 2)
    assert repr(name) in p.message
    with pytest.raises(DataFormatError, match="plain file name") as e:
        read_test_points(path, num_points=15)
    assert str(e.value).startswith(f"{path}: line 2 ({name}): file_name {name!r}")


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_name_in_groups(ds, name):
    path = ds / GR
    edit_line(path, 2, rename(name))
    rep = validate_dataset(ds)
    p = fatal(rep, "unsafe_name")
    assert_names_file_and_line(p, GR, 2)
    assert repr(name) in p.message
    with pytest.raises(DataFormatError, match="plain file name") as e:
        read_groups(path)
    assert str(e.value).startswith(f"{path}: line 2 ({name}): file_name {name!r}")


def test_unsafe_name_is_not_looked_up(ds, tmp_path):
    """An absolute name pointing at a real image outside the folder is refused, not opened."""
    outside = tmp_path / "outside.jpg"
    shutil.copy(ds / "train" / "images" / "00001.jpg", outside)
    edit_line(ds / LM, 3, rename(str(outside)))
    rep = validate_dataset(ds)
    assert_names_file_and_line(fatal(rep, "unsafe_name"), LM, 3)
    assert str(outside) not in set(rep.image_sizes["name"])


def test_symlinked_image_inside_the_folder_is_fine(ds, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    img = ds / "train" / "images" / "00001.jpg"
    shutil.move(img, store / "real.jpg")
    os.symlink(store / "real.jpg", img)
    rep = validate_dataset(ds)
    assert rep.ok, str(rep)
    assert "00001.jpg" in set(rep.image_sizes["name"])  # followed and read
    assert read_landmarks(ds / LM).names[1] == "00001.jpg"


# ------------------------------------------------------------------------------------------------- empty tables
def test_header_only_landmarks(ds):
    keep_header_only(ds / LM)
    p = fatal(validate_dataset(ds), "no_data_rows")
    assert_names_file_and_line(p, LM, 1)
    assert "header only" in p.message


def test_every_landmarks_row_dropped_under_skip(ds):
    for line in (2, 3, 4):
        edit_line(ds / LM, line, lambda f: f[:1] + ["NaN"] + f[2:])
    rep = validate_dataset(ds, bad_rows="skip")
    assert [p.line for p in rep.problems if p.kind == "bad_coordinates"] == [2, 3, 4]  # warnings: dropped rows
    p = fatal(rep, "no_data_rows")
    assert_names_file_and_line(p, LM, 1)
    assert "every row is bad" in p.message


def test_header_only_test_points(ds):
    keep_header_only(ds / TP)
    p = fatal(validate_dataset(ds), "no_data_rows")
    assert_names_file_and_line(p, TP, 1)
    assert "no test rows" in p.message


# ------------------------------------------------------------------------------------------------- coordinate range
@pytest.mark.parametrize("value", ["1e39", "-1e39", "40000", "32768", "-32769", "32767.5"])
def test_coordinate_outside_int16_storage(ds, value):
    """``1e39`` would overflow float32 to inf, ``40000`` does not fit the int16 labels: fatal, and refused."""
    path = ds / LM
    edit_line(path, 3, lambda f: f[:3] + [value] + f[4:])  # Point_1_X of the second row
    p = fatal(validate_dataset(ds), "coordinate_out_of_range")
    assert_names_file_and_line(p, LM, 3)
    assert "int16" in p.message and "Point_1_X" in p.message and repr(value) in p.message
    skip = validate_dataset(ds, bad_rows="skip")
    q = [q for q in skip.problems if q.kind == "coordinate_out_of_range"]
    assert [(q.severity, q.line) for q in q] == [("warning", 3)] and skip.num_train == 2
    with pytest.raises(DataFormatError) as e:
        read_landmarks(path)
    assert str(e.value).startswith(f"{path}: line 3 (00001.jpg): 1 coordinate(s) outside [-32768, 32767]")
    assert [s[:2] for s in read_landmarks(path, bad_rows="skip").skipped] == [(3, "00001.jpg")]


def test_int16_range_ends_are_not_out_of_range(ds):
    edit_line(ds / LM, 3, lambda f: f[:3] + ["32767", "-32768"] + f[5:])
    rep = validate_dataset(ds)
    assert rep.ok and not [p for p in rep.problems if p.kind == "coordinate_out_of_range"], str(rep)
    assert [p.kind for p in rep.problems if p.line == 3 and p.severity == "warning"] == ["points_far_outside"]
