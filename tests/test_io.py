"""landmarks_lib.io: reading the contest tables (every bad input named by file and line) and atomic writes."""

import json
import os

import numpy as np
import pytest

from landmarks_lib.core.files import atomic_open, atomic_write_json
from landmarks_lib.data import tables as lio
from landmarks_lib.data.tables import DataFormatError, parse_header, read_landmarks, read_test_points


def header(k):
    return ["file_name"] + [f"Point_{i}_{c}" for i in range(k) for c in "XY"]


def write_rows(path, rows, k=2, head=None):
    """Write a tab-separated file: header for ``k`` points, then ``rows`` (lists of fields or raw strings)."""
    lines = ["\t".join(head if head is not None else header(k))]
    for r in rows:
        lines.append(r if isinstance(r, str) else "\t".join(str(v) for v in r))
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = [["a.jpg", 1, 2, 3, 4], ["b.jpg", 5, 6, 7, 8], ["c.jpg", -1, 0, 300, 400]]


# ------------------------------------------------------------------------------------------- read_landmarks
def test_good_data_int16_k_from_header_names(tmp_path):
    p = write_rows(tmp_path / "landmarks.csv", GOOD)
    t = read_landmarks(p)
    assert t.names == ["a.jpg", "b.jpg", "c.jpg"]
    assert t.points.dtype == np.int16
    assert t.points.shape == (3, 2, 2)
    assert t.num_points == 2 and len(t) == 3
    np.testing.assert_array_equal(t.points[2], [[-1, 0], [300, 400]])
    assert t.skipped == []


def test_k_read_from_header(tmp_path):
    p = write_rows(tmp_path / "l.csv", [["x.jpg"] + list(range(10))], k=5)
    t = read_landmarks(p)
    assert t.num_points == 5
    np.testing.assert_array_equal(t.points[0, 4], [8, 9])


def test_crlf_bom_and_blank_lines_keep_line_numbers(tmp_path):
    p = tmp_path / "l.csv"
    body = "\t".join(header(1)) + "\r\n" + "a.jpg\t1\t2\r\n" + "\r\n" + "b.jpg\t1\tNaN\r\n"
    p.write_bytes(b"\xef\xbb\xbf" + body.encode())
    with pytest.raises(DataFormatError, match=r"line 4 \(b\.jpg\)"):  # the blank line 3 still counts
        read_landmarks(p)
    t = read_landmarks(p, bad_rows="skip")
    assert t.names == ["a.jpg"]
    assert [s[:2] for s in t.skipped] == [(4, "b.jpg")]


def test_too_many_fields_names_file_and_line(tmp_path):
    p = write_rows(tmp_path / "landmarks.csv", [GOOD[0], ["b.jpg", 1, 2, 3, 4, 5], GOOD[2]])
    with pytest.raises(DataFormatError) as e:
        read_landmarks(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3 (b.jpg)" in msg and "too many fields" in msg
    t = read_landmarks(p, bad_rows="skip")
    assert t.names == ["a.jpg", "c.jpg"]
    assert t.skipped[0][:2] == (3, "b.jpg") and "6 tab-separated fields, expected 5" in t.skipped[0][2]


def test_too_few_fields_detected_as_missing(tmp_path):
    p = write_rows(tmp_path / "landmarks.csv", [GOOD[0], GOOD[1], ["c.jpg", 1, 2, 3]])
    with pytest.raises(DataFormatError, match=r"landmarks\.csv: line 4 \(c\.jpg\): .*1 missing coordinate.*Point_1_Y"):
        read_landmarks(p)


@pytest.mark.parametrize("value, what", [("NaN", "NaN"), ("nan", "NaN"), ("inf", "infinite"), ("", "empty"),
                                         ("abc", "non-numeric 'abc'"), ("1,5", "non-numeric '1,5'")])
def test_bad_coordinate_names_file_line_column(tmp_path, value, what):
    p = write_rows(tmp_path / "landmarks.csv", [GOOD[0], ["b.jpg", 5, value, 7, 8], GOOD[2]])
    with pytest.raises(DataFormatError) as e:
        read_landmarks(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3 (b.jpg)" in msg and what in msg and "Point_0_Y" in msg
    t = read_landmarks(p, bad_rows="skip")
    assert t.names == ["a.jpg", "c.jpg"]
    np.testing.assert_array_equal(t.points[1], [[-1, 0], [300, 400]])
    assert len(t.skipped) == 1 and t.skipped[0][:2] == (3, "b.jpg")


def test_skip_lists_every_bad_row_in_line_order(tmp_path):
    rows = [GOOD[0], ["b.jpg", "x", 1, 1, 1], ["", 1, 2, 3, 4], GOOD[1], ["d.jpg", 1, 2], ["a.jpg", 9, 9, 9, 9]]
    p = write_rows(tmp_path / "l.csv", rows)
    t = read_landmarks(p, bad_rows="skip")
    assert t.names == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(t.points[0], [[1, 2], [3, 4]])  # the first a.jpg is kept
    assert [s[0] for s in t.skipped] == [3, 4, 6, 7]
    assert [s[1] for s in t.skipped] == ["b.jpg", None, "d.jpg", "a.jpg"]
    assert "empty file_name" in t.skipped[1][2]
    assert "duplicate file_name (first on line 2)" in t.skipped[3][2]


@pytest.mark.parametrize("head, match", [
    (["name", "Point_0_X", "Point_0_Y"], "first column must be 'file_name'"),
    (["file_name", "Point_0_X", "Point_0_Y", "Point_1_X"], "pairs of Point_i_X"),
    (["file_name", "Point_0_Y", "Point_0_X"], "column 2 is 'Point_0_Y', expected 'Point_0_X'"),
    (["file_name"], "pairs of Point_i_X"),
])
def test_bad_header(tmp_path, head, match):
    p = write_rows(tmp_path / "l.csv", [], head=head)
    with pytest.raises(DataFormatError, match=match) as e:
        read_landmarks(p)
    assert f"{p}: line 1:" in str(e.value)


def test_empty_file_and_missing_file(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("")
    with pytest.raises(DataFormatError, match="line 1: empty file"):
        read_landmarks(p)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_landmarks(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="bad_rows"):
        read_landmarks(p, bad_rows="drop")


def test_duplicate_file_names(tmp_path):
    p = write_rows(tmp_path / "l.csv", [GOOD[0], GOOD[1], ["a.jpg", 9, 9, 9, 9]])
    with pytest.raises(DataFormatError, match=r"line 4 \(a\.jpg\): duplicate file_name \(first on line 2\)"):
        read_landmarks(p)


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_not_utf8_names_file_and_line(tmp_path, eol):
    """A Latin-1 name on line 13 (after a blank line 3): a DataFormatError naming the file and that line, in both
    bad_rows modes (the fast parser hands the file to the exact one, which reports it)."""
    p = tmp_path / "landmarks.csv"
    lines = ["\t".join(header(1)), "a0.jpg\t1\t2", ""] + [f"a{i}.jpg\t1\t2" for i in range(1, 10)]
    p.write_bytes(eol.join(lines).encode() + eol.encode() + b"caf\xe9.jpg\t1\t2" + eol.encode())
    for bad_rows in ("error", "skip"):
        with pytest.raises(DataFormatError, match=rf"^{p}: line 13: not UTF-8 text \(byte 0xe9"):
            read_landmarks(p, bad_rows=bad_rows)


def test_non_integer_values_stored_float32(tmp_path):
    p = write_rows(tmp_path / "l.csv", [GOOD[0], ["b.jpg", 1.5, 2, 3, 4.25]])
    t = read_landmarks(p)
    assert t.points.dtype == np.float32
    np.testing.assert_array_equal(t.points[1], [[1.5, 2], [3, 4.25]])
    np.testing.assert_array_equal(t.points[0], [[1, 2], [3, 4]])


def test_non_integer_in_a_later_chunk_converts_earlier_chunks(tmp_path):
    rows = [[f"{i}.jpg", i, i, i, i] for i in range(5)] + [["z.jpg", 0.5, 1, 32767, -32768]]
    p = write_rows(tmp_path / "l.csv", rows)
    t = read_landmarks(p, chunksize=2)
    assert t.points.dtype == np.float32 and t.points.shape == (6, 2, 2)
    np.testing.assert_array_equal(t.points[3], [[3, 3], [3, 3]])
    np.testing.assert_array_equal(t.points[5], [[0.5, 1], [32767, -32768]])  # the int16 range's ends are kept


def test_cache_parses_once_and_is_invalidated_by_a_change(tmp_path, monkeypatch):
    p = write_rows(tmp_path / "l.csv", GOOD)
    cache = tmp_path / "cache"
    t1 = read_landmarks(p, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1

    def no_parse(*a, **k):
        raise AssertionError("the CSV was parsed again")

    monkeypatch.setattr(lio, "parse_header", no_parse)
    t2 = read_landmarks(p, cache_dir=cache)
    assert isinstance(t2.points, np.memmap)
    assert t2.names == t1.names and t2.points.dtype == np.int16
    np.testing.assert_array_equal(t2.points, t1.points)
    monkeypatch.undo()

    write_rows(p, [GOOD[0], ["b.jpg", 50, 60, 70, 80]])
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a certain mtime change even on coarse clocks
    t3 = read_landmarks(p, cache_dir=cache)
    assert t3.names == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(t3.points[1], [[50, 60], [70, 80]])


def test_cache_keeps_skipped_rows(tmp_path):
    p = write_rows(tmp_path / "l.csv", [GOOD[0], ["b.jpg", "NaN", 1, 1, 1]])
    read_landmarks(p, bad_rows="skip", cache_dir=tmp_path / "c")
    t = read_landmarks(p, bad_rows="skip", cache_dir=tmp_path / "c")
    assert t.names == ["a.jpg"] and t.skipped[0][:2] == (3, "b.jpg")
    with pytest.raises(DataFormatError, match="line 3"):  # the policies are cached separately
        read_landmarks(p, bad_rows="error", cache_dir=tmp_path / "c")


def test_parse_header_returns_k():
    assert parse_header(header(971)) == 971


# ------------------------------------------------------------------------------------------- read_test_points
def write_tp(path, rows, head="file_name\tpoint_index_list"):
    path.write_text(head + "\n" + "".join(f"{n}\t{v}\n" for n, v in rows))
    return path


def test_test_points_good(tmp_path):
    p = write_tp(tmp_path / "test_points.csv", [("a.jpg", "[0, 4, 2]"), ("b.jpg", "[1, 1, 3]")])
    tp = read_test_points(p, num_points=5)
    assert tp.names == ["a.jpg", "b.jpg"] and len(tp) == 2
    assert tp.indices.dtype == np.int64
    np.testing.assert_array_equal(tp.indices, [[0, 4, 2], [1, 1, 3]])


@pytest.mark.parametrize("text", ["[1, 2", '"abc"', "abc", "[1.5]", "[true]", "[]", '{"a": 1}', "",
                                  "(1, 2)", "__import__('pathlib').Path('PWNED').touch()"])
def test_test_points_malformed_lists(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    p = write_tp(tmp_path / "tp.csv", [("a.jpg", "[1, 2]"), ("b.jpg", text)])
    with pytest.raises(DataFormatError) as e:
        read_test_points(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3 (b.jpg)" in msg and "list of integers" in msg
    assert not (tmp_path / "PWNED").exists()  # never evaluated


def test_test_points_out_of_range(tmp_path):
    p = write_tp(tmp_path / "tp.csv", [("a.jpg", "[1, 2]"), ("b.jpg", "[4, 5]")])
    with pytest.raises(DataFormatError, match=r"line 3 \(b\.jpg\): point index 5 out of range \[0, 5\)"):
        read_test_points(p, num_points=5)
    assert read_test_points(p, num_points=6).indices[1, 1] == 5
    q = write_tp(tmp_path / "tq.csv", [("a.jpg", "[-1, 2]")])
    with pytest.raises(DataFormatError, match=r"line 2 \(a\.jpg\): point index -1 out of range"):
        read_test_points(q)  # negative even without num_points


def test_test_points_inconsistent_lengths(tmp_path):
    p = write_tp(tmp_path / "tp.csv", [("a.jpg", "[1, 2]"), ("b.jpg", "[1, 2]"), ("c.jpg", "[1, 2, 3]")])
    with pytest.raises(DataFormatError, match=r"line 4 \(c\.jpg\): 3 indices, but line 2 has 2"):
        read_test_points(p)


def test_test_points_duplicate_and_empty_names(tmp_path):
    p = write_tp(tmp_path / "tp.csv", [("a.jpg", "[1]"), ("b.jpg", "[1]"), ("a.jpg", "[2]")])
    with pytest.raises(DataFormatError, match=r"line 4 \(a\.jpg\): duplicate file_name"):
        read_test_points(p)
    q = write_tp(tmp_path / "tq.csv", [("a.jpg", "[1]"), (" ", "[1]")])
    with pytest.raises(DataFormatError, match=r"line 3 .*empty file_name"):
        read_test_points(q)


def test_test_points_bad_header_and_field_count(tmp_path):
    p = write_tp(tmp_path / "tp.csv", [("a.jpg", "[1]")], head="file_name\tpoints")
    with pytest.raises(DataFormatError, match=r"line 1: expected columns"):
        read_test_points(p)
    q = tmp_path / "tq.csv"
    q.write_text("file_name\tpoint_index_list\na.jpg\t[1]\nb.jpg\t[1]\textra\n")
    with pytest.raises(DataFormatError, match=rf"{q}: line 3: wrong number of tab-separated fields"):
        read_test_points(q)
    with pytest.raises(FileNotFoundError):
        read_test_points(tmp_path / "none.csv")


def test_test_points_blank_lines_keep_line_numbers(tmp_path):
    p = tmp_path / "tp.csv"
    p.write_text("file_name\tpoint_index_list\na.jpg\t[1, 2]\n\nb.jpg\t[1, 99]\n")
    with pytest.raises(DataFormatError, match=r"line 4 \(b\.jpg\): point index 99 out of range"):  # blank line 3
        read_test_points(p, num_points=10)
    p.write_text("file_name\tpoint_index_list\na.jpg\t[1, 2]\n\n\nb.jpg\t[1, 2]\na.jpg\t[3, 4]\n")
    with pytest.raises(DataFormatError, match=r"line 6 \(a\.jpg\): duplicate file_name \(first on line 2\)"):
        read_test_points(p)
    p.write_text("file_name\tpoint_index_list\n\na.jpg\t[1, 2]\nb.jpg\t[1]\n")
    with pytest.raises(DataFormatError, match=r"line 4 \(b\.jpg\): 1 indices, but line 3 has 2"):
        read_test_points(p)
    p.write_text("file_name\tpoint_index_list\na.jpg\t[1, 2]\n\nb.jpg\n")
    with pytest.raises(DataFormatError, match=rf"{p}: line 4: wrong number of tab-separated fields, expected 2, got 1"):
        read_test_points(p)
    p.write_bytes(b"\xef\xbb\xbffile_name\tpoint_index_list\r\n\r\na.jpg\t[1, 2]\r\n\r\nNA\t[0, 3]\r\n")
    tp = read_test_points(p)  # BOM, CRLF and blank lines are fine; a name that pandas would read as NaN stays text
    assert tp.names == ["a.jpg", "NA"]
    np.testing.assert_array_equal(tp.indices, [[1, 2], [0, 3]])


def test_test_points_not_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "tp.csv"
    p.write_bytes(b"file_name\tpoint_index_list\na.jpg\t[1]\n\ncaf\xe9.jpg\t[2]\n")
    with pytest.raises(DataFormatError, match=rf"^{p}: line 4: not UTF-8 text \(byte 0xe9"):
        read_test_points(p)


# ------------------------------------------------------------------------------------------- atomic writes
def test_atomic_open_keeps_old_file_when_writer_raises(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old content")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(p, "w") as f:
            f.write("partial new")
            raise RuntimeError("boom")
    assert p.read_text() == "old content"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]  # no temp file left behind


def test_atomic_open_replaces_on_success_and_json(tmp_path):
    p = tmp_path / "sub" / "out.json"
    atomic_write_json(p, {"b": np.int64(3), "a": np.float32(0.5), "c": np.arange(2)})
    assert json.loads(p.read_text()) == {"a": 0.5, "b": 3, "c": [0, 1]}
    with atomic_open(p, "w") as f:
        f.write("new")
    assert p.read_text() == "new"
    assert os.listdir(p.parent) == ["out.json"]


def test_labels_are_pixel_indices_converted_at_the_boundary(tmp_path):
    from landmarks_lib.core.coords import LABEL_OFFSET, labels_to_points, points_to_labels

    lab = np.array([[[0, 3], [-2, 7]]], dtype=np.int16)
    pts = labels_to_points(lab)
    assert pts.dtype == np.float32 and LABEL_OFFSET == 0.5
    np.testing.assert_array_equal(pts, [[[0.5, 3.5], [-1.5, 7.5]]])
    np.testing.assert_array_equal(points_to_labels(pts), lab)
    # the mirror of label column x in a W-wide image is W - 1 - x; in continuous pixels it is W - x
    w = 10
    np.testing.assert_array_equal(labels_to_points(w - 1 - lab[..., 0]), w - labels_to_points(lab[..., 0]))
