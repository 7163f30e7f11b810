"""Reading the contest's tables and writing files atomically.

- ``train/landmarks.csv``: tab-separated; ``file_name`` then ``Point_0_X, Point_0_Y, ..., Point_{K-1}_Y`` in
  original-image pixels, as *labels* (pixel indices: see ``LABEL_OFFSET``). ``K`` is read from the header.
- ``test/test_points.csv``: tab-separated; ``file_name`` and ``point_index_list``, a list literal of point indices,
  parsed as JSON (never evaluated).

Every error names the file and the line (1-based, the header is line 1).
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from .files import atomic_open, atomic_save_npy, atomic_write_json, fingerprint, file_identity  # noqa: F401


#: The contest's label convention: a label value ``v`` is a pixel *index* coordinate (``v = i`` is the centre of pixel
#: ``i``), i.e. the continuous coordinate of the package convention (``landmarks_lib``) is ``v + LABEL_OFFSET``, and a
#: horizontal mirror maps labels ``v -> W - 1 - v``. Evidence on the stand-in data: a model trained with flips under
#: the other reading (labels continuous, mirrored ``v -> W - v``) predicts x 0.37 px to the right of the labels on
#: average (y: -0.06 px), the shift that reading predicts (up to +0.5 px: flipped targets one pixel off). Files in
#: label convention: ``landmarks.csv``, submissions, ``predict.write_points_csv``; everything else is continuous.
LABEL_OFFSET = 0.5


def labels_to_points(labels) -> np.ndarray:
    """Label-convention coordinates (``LABEL_OFFSET``; any numeric dtype, any shape ``[..., 2]``) -> continuous
    pixels, ``float32``: ``labels + 0.5``."""
    return np.asarray(labels, dtype=np.float32) + np.float32(LABEL_OFFSET)


def points_to_labels(points) -> np.ndarray:
    """Continuous pixels ``[..., 2]`` -> label-convention coordinates, ``float64`` (not rounded): ``points - 0.5``."""
    return np.asarray(points, dtype=np.float64) - LABEL_OFFSET


class DataFormatError(ValueError):
    """A table that does not follow the contest format; the message names the file and the line."""


@dataclass
class LandmarksTable:
    """Training landmarks.

    Attributes:
        names: image file names, ``N`` strings, in file order.
        points: ``[N, K, 2]`` (x, y) original-pixel *labels* as in the file (``LABEL_OFFSET``: continuous pixels are
            ``labels_to_points(points)``); ``int16`` when every value is an integer in range (the contest's case),
            else ``float32``. Convert per batch.
        skipped: ``(line, file_name, reason)`` of rows dropped under ``bad_rows="skip"``.
    """

    names: list
    points: np.ndarray
    skipped: list = field(default_factory=list)

    @property
    def num_points(self) -> int:
        return int(self.points.shape[1])

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TestPoints:
    """Which points a submission must give for each test image.

    Attributes:
        names: ``N`` test image file names, in file order (the submission's row order).
        indices: ``int64 [N, M]`` point indices per image, in list order (``M`` = 30 in the contest).
    """

    __test__ = False  # not a pytest test class despite its name

    names: list
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


_POINT_RE = re.compile(r"^Point_(\d+)_([XY])$")


def parse_header(columns, path="landmarks.csv") -> int:
    """Check a landmarks header and return the number of points ``K``.

    Raises:
        DataFormatError: first column not ``file_name``, an odd number of point columns, or columns out of order.
    """
    cols = [str(c).strip() for c in columns]
    if not cols or cols[0] != "file_name":
        raise DataFormatError(f"{path}: line 1: first column must be 'file_name', got {cols[:1]}")
    rest = cols[1:]
    if len(rest) == 0 or len(rest) % 2:
        raise DataFormatError(f"{path}: line 1: expected file_name and pairs of Point_i_X, Point_i_Y columns, "
                              f"got {len(cols)} columns")
    for j, c in enumerate(rest):
        want = f"Point_{j // 2}_{'XY'[j % 2]}"
        if c != want:
            raise DataFormatError(f"{path}: line 1: column {j + 2} is {c!r}, expected {want!r}")
    return len(rest) // 2


def file_fingerprint(path) -> str:
    """A short key for a file's identity: sha1 of its absolute path, size and modification time (not its content)."""
    return fingerprint(file_identity(path))


def read_landmarks(path, bad_rows: str = "error", cache_dir=None, chunksize: int = 20000) -> LandmarksTable:
    """Read ``landmarks.csv`` into compact arrays.

    Parsing is streamed (peak memory about the final array plus one chunk of ``chunksize`` rows) and, with
    ``cache_dir``, done once: the parsed arrays are saved there as ``landmarks-<fingerprint>-<bad_rows>.npy`` /
    ``.names.json`` and memory-mapped on later calls (the fingerprint is ``file_fingerprint``: path, size, mtime).
    Returns ``points`` as a read-only ``np.memmap`` whenever ``cache_dir`` is given.

    Args:
        path: the tab-separated file.
        bad_rows: ``"error"`` raises on the first bad row; ``"skip"`` drops bad rows and lists them in
            ``LandmarksTable.skipped`` (never silently) with their line numbers. Bad rows: missing, empty, NaN,
            infinite or non-numeric coordinates, too many or too few fields, an empty file name, or a file name
            already seen on an earlier line (the first occurrence is kept). Blank lines are ignored.
        cache_dir: optional folder for the parsed-once cache.
    Returns:
        ``LandmarksTable``.
    Raises:
        FileNotFoundError: no such file.
        DataFormatError: bad header, a bad row under ``bad_rows="error"``, or text that is not UTF-8 (file and
            line named).
    """
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: landmarks file is missing")
    cache_base = None
    if cache_dir is not None:
        cache_base = os.path.join(cache_dir, f"landmarks-{file_fingerprint(path)}-{bad_rows}")
        if os.path.exists(cache_base + ".names.json") and os.path.exists(cache_base + ".npy"):
            with open(cache_base + ".names.json") as f:
                meta = json.load(f)
            pts = np.load(cache_base + ".npy", mmap_mode="r")
            return LandmarksTable(meta["names"], pts, [tuple(s) for s in meta["skipped"]])

    # Fast path (integer tables without quoting: the contest's case) with the exact path's row checks for any chunk
    # that is not plainly clean; anything it cannot vouch for restarts on the exact csv-module path.
    try:
        names, points, skipped = _read_landmarks_fast(path, bad_rows, chunksize)
    except _Unusual:
        names, points, skipped = _read_landmarks_exact(path, bad_rows, chunksize)
    table = LandmarksTable(names, points, skipped)
    if cache_base is not None:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_save_npy(cache_base + ".npy", points)
        with atomic_open(cache_base + ".names.json", "w") as f:
            json.dump({"names": names, "skipped": [list(s) for s in skipped]}, f)
        table.points = np.load(cache_base + ".npy", mmap_mode="r")
    return table


class _Unusual(Exception):
    """Internal: the fast parser met input only the exact (csv-module) parser handles; start over there."""


def _check_row(row, line, header, ncol, first_line):
    """The exact per-row checks shared by both parsers: ``(reason or None, float64 values or None)``."""
    name = row[0]
    reason, vals = None, None
    if not name.strip():
        reason = "empty file_name"
    elif len(row) > ncol:
        reason = f"{len(row)} tab-separated fields, expected {ncol} (too many fields)"
    elif len(row) < ncol:
        reason = (f"{len(row)} tab-separated fields, expected {ncol}: {ncol - len(row)} missing "
                  f"coordinate(s) from column {header[len(row)]} (a short row has too few fields)")
    else:
        try:
            vals = np.array(row[1:], dtype=np.float64)
        except ValueError:
            j = next((j for j, v in enumerate(row[1:]) if not _is_number(v)), 0)
            what = "empty" if not row[1 + j].strip() else f"non-numeric {row[1 + j][:20]!r}"
            reason = f"{what} coordinate in column {header[1 + j]}"
            vals = None
        if vals is not None and not np.isfinite(vals).all():
            cols = np.flatnonzero(~np.isfinite(vals))
            reason = (f"{len(cols)} NaN or infinite coordinate(s), first in column "
                      f"{header[1 + cols[0]]} ({row[1 + cols[0]]!r})")
        if reason is None and name in first_line:
            reason = f"duplicate file_name (first on line {first_line[name]})"
    return reason, vals


def _is_blank(row) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _header(reader, path) -> list:
    """The first row of a ``csv.reader``; ``DataFormatError`` for an empty file."""
    header = next(reader, None)
    if header is None:
        raise DataFormatError(f"{path}: line 1: empty file (no header)")
    return header


def _read_landmarks_exact(path, bad_rows, chunksize):
    """The reference parser: the csv module row by row, so every bad row is found with its exact line, whatever is
    wrong with it (about 4,000 rows/s). Returns ``(names, points, skipped)``."""
    names, chunks, skipped = [], [], []
    block = []  # float64 rows not yet packed into a chunk
    first_line = {}  # file_name -> line of its first kept row
    all_int = True
    k = None

    def pack():
        nonlocal all_int
        vals = np.stack(block) if block else np.zeros((0, 2 * k))
        block.clear()
        if all_int and vals.size and (np.any(vals != np.round(vals)) or np.abs(vals).max() > 32767):
            all_int = False
        chunks.append(vals.astype(np.int16 if all_int else np.float32).reshape(len(vals), k, 2))

    with open(path, "r", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = _header(reader, path)
            k = parse_header(header, path)
            ncol = 1 + 2 * k
            for line, name, vals in _good_rows(reader, 0, header, ncol, first_line, bad_rows, path, skipped):
                first_line[name] = line
                names.append(name)
                block.append(vals)
                if len(block) >= chunksize:
                    pack()
        except csv.Error as e:
            raise DataFormatError(f"{path}: line {max(reader.line_num, 1)}: not a readable text table "
                                  f"({type(e).__name__}: {e})") from e
        except UnicodeDecodeError as e:
            raise _not_utf8(path, e) from e
    pack()
    if not all_int:
        chunks = [c.astype(np.float32) for c in chunks]
    return names, np.concatenate(chunks), skipped


def _good_rows(reader, base, header, ncol, first_line, bad_rows, path, skipped):
    """Yield ``(line, file_name, float64 values)`` of the rows of a ``csv.reader`` that pass ``_check_row``; blank
    lines are passed over; a bad row raises ``DataFormatError`` (``bad_rows="error"``) or is appended to
    ``skipped`` as ``(line, file_name or None, reason)``. ``base`` is added to the reader's line numbers."""
    for row in reader:
        line = base + reader.line_num
        if _is_blank(row):
            continue  # a blank line holds no data
        name = row[0]
        reason, vals = _check_row(row, line, header, ncol, first_line)
        if reason is not None:
            if bad_rows == "error":
                raise DataFormatError(f"{path}: line {line} ({name}): {reason}")
            skipped.append((line, name if name.strip() else None, reason))
            continue
        yield line, name, vals


_READ_BYTES = 1 << 16  # text read and decoded at a time by the fast parser: small buffers are reused by malloc
_GROUP_LINES = 256  # lines per np.loadtxt call (at most chunksize): small outputs, cheap exact re-checks


def _clean_chunk(lines, ncol, first_line, ascii_ok):
    """Parse lines (no terminators) with ``np.loadtxt`` when every one is plainly a good row: ``(names, int16
    [n, 2K])``; ``None`` when some line needs the exact per-row checks (blank, empty or duplicate name, wrong field
    count, a value that is not an integer within int16 (-32768 excluded, as in the exact parser), any non-ASCII
    character after the name: np.loadtxt's integers and numpy's float agree on ASCII without U+001C..U+001F)."""
    names, rest = [], []
    for s in lines:
        i = s.find("\t")
        name = s[:i]
        if i <= 0 or not name.strip() or not (ascii_ok or s[i:].isascii()):
            return None
        names.append(name)
        rest.append(s[i + 1:])
    if len(set(names)) != len(names) or not first_line.keys().isdisjoint(names):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "input contained no data": let the exact checks say why
            vals = np.loadtxt(rest, delimiter="\t", dtype=np.int16, comments=None, ndmin=2)
    except (ValueError, OverflowError, TypeError, Warning):  # includes "the number of columns changed"
        return None
    if vals.shape != (len(lines), ncol - 1) or (vals.size and vals.min() == -32768):
        return None
    return names, vals


def _read_landmarks_fast(path, bad_rows, chunksize):
    """Integer tables at about 100 MB/s: text read in small blocks, split into lines, ``np.loadtxt`` (C) on the
    coordinates of a few hundred lines at a time, into a preallocated ``int16`` array. A group of lines that is not
    plainly clean goes line by line through ``csv`` and ``_check_row`` (same results, messages and line numbers as
    ``_read_landmarks_exact``). Raises ``_Unusual`` where only the exact parser is sure to read the file the same
    way (quotes, NUL, a lone carriage return, the separators U+001C..U+001F, undecodable text, an over-long field, an
    odd header) or must decide the whole table's dtype (non-integer or out-of-int16 values)."""
    field_limit = csv.field_size_limit()
    file_size = os.path.getsize(path)
    group_lines = max(1, min(int(chunksize), _GROUP_LINES))
    names, skipped, first_line = [], [], {}
    header, points, k, ncol = None, None, 0, 0
    n, base = 0, 1  # rows kept; lines (header included) before pending[0]
    pending, pending_ascii, data_bytes, data_lines = [], True, 0, 0

    def process(group, ascii_ok):
        nonlocal n, points
        if points is None:  # size the table from the bytes per line seen so far; grown in place if short
            est = int(file_size / max(1.0, data_bytes / max(1, data_lines)) * 1.02) + group_lines
            points = np.empty((est, k, 2), np.int16)
        if n + len(group) > len(points):
            points.resize((max(n + len(group), int(len(points) * 1.25)), k, 2), refcheck=False)
        got = _clean_chunk(group, ncol, first_line, ascii_ok)
        if got is not None:
            group_names, vals = got
            points[n: n + len(vals)] = vals.reshape(len(vals), k, 2)
            first_line.update(zip(group_names, range(base + 1, base + 1 + len(group_names))))
            names.extend(group_names)
            n += len(vals)
            return
        reader = csv.reader(group, delimiter="\t")
        try:
            for line, name, vals in _good_rows(reader, base, header, ncol, first_line, bad_rows, path, skipped):
                if np.any(vals != np.round(vals)) or np.abs(vals).max() > 32767:
                    raise _Unusual  # float32 output: the exact parser converts the whole table
                first_line[name] = line
                names.append(name)
                points[n] = vals.reshape(k, 2)
                n += 1
        except csv.Error as e:
            raise _Unusual from e

    with open(path, "rb") as f:
        while True:
            raw = f.read(_READ_BYTES)
            if raw:
                raw += f.readline()
                if header is None and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _Unusual from e
                if any(c in text for c in '"\0\x1c\x1d\x1e\x1f'):
                    raise _Unusual
                if "\r" in text:
                    if text.count("\r") != text.count("\r\n"):
                        raise _Unusual
                    text = text.replace("\r\n", "\n")
                lines = text.split("\n")
                if text.endswith("\n"):
                    lines.pop()
                if max(map(len, lines), default=0) > field_limit and any(
                        len(v) > field_limit for s in lines if len(s) > field_limit for v in s.split("\t")):
                    raise _Unusual
                if header is None:
                    if not lines or "\t" not in lines[0]:
                        raise _Unusual  # empty file or a one-column header: the exact parser words the error
                    header = lines[0].split("\t")
                    k = parse_header(header, path)
                    ncol = 1 + 2 * k
                    data_bytes -= len(lines[0]) + 1
                    lines = lines[1:]
                data_bytes += len(raw)
                data_lines += len(lines)
                pending.extend(lines)
                pending_ascii = pending_ascii and text.isascii()
            elif header is None:
                raise _Unusual  # empty file
            while len(pending) >= group_lines or (not raw and pending):
                group = pending[:group_lines]
                del pending[:group_lines]
                process(group, pending_ascii)
                base += len(group)
                if not pending:
                    pending_ascii = True
            if not raw:
                break
    if points is None:
        points = np.empty((0, k, 2), np.int16)
    if n < len(points):
        points.resize((n, k, 2), refcheck=False)  # in place: no second copy of a large table
    return names, points, skipped


def _not_utf8(path, err: UnicodeDecodeError) -> DataFormatError:
    r"""The error for a table that is not UTF-8 text, naming the file line of the first undecodable byte (lines
    counted as the csv module does: ``\n``, ``\r\n`` or a lone ``\r`` ends one). Error path only: the file is read
    once more, line by line in binary."""
    line = 1
    with open(path, "rb") as f:
        for raw in f:  # split at b"\n", which is never part of a multi-byte UTF-8 character
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line += raw.count(b"\r", 0, e.start)
                return DataFormatError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} cannot be "
                                       f"decoded); save the file as UTF-8")
            line += raw.replace(b"\r\n", b"\n").count(b"\r") + raw.endswith(b"\n")
    return DataFormatError(f"{path}: not UTF-8 text ({err}); save the file as UTF-8")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_index_list(text: str, where: str, num_points: int | None = None) -> list:
    """Parse one ``point_index_list`` cell, e.g. ``"[3, 17, 970]"``, as JSON (never evaluated).

    Raises:
        DataFormatError: not a list of integers, or an index outside ``[0, num_points)`` (``where`` names the line).
    """
    try:
        v = json.loads(str(text))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{where}: point_index_list {str(text)[:60]!r} is not a list of integers ({e})") from e
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise DataFormatError(f"{where}: point_index_list {str(text)[:60]!r} is not a non-empty list of integers")
    hi = num_points if num_points is not None else 2 ** 63
    badi = [i for i in v if i < 0 or i >= hi]
    if badi:
        rng = f"[0, {num_points})" if num_points is not None else "(negative or too large)"
        raise DataFormatError(f"{where}: point index {badi[0]} out of range {rng}")
    return v


def read_test_points(path, num_points: int | None = None) -> TestPoints:
    """Read ``test_points.csv``.

    Args:
        path: the tab-separated file with ``file_name`` and ``point_index_list``; UTF-8 (a byte-order mark is
            allowed), any line ends. Blank lines are ignored (they still count in line numbers).
        num_points: when given, every index must lie in ``[0, num_points)``.
    Returns:
        ``TestPoints``; all rows must list the same number of indices (the submission has fixed columns).
    Raises:
        FileNotFoundError, DataFormatError (file and line named: a bad header, a row without exactly two
        tab-separated fields, a bad list, an empty or duplicate file name, text that is not UTF-8).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: test points file is missing")
    names, rows = [], []
    first_line = {}  # file_name -> its line
    with open(path, "r", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = _header(reader, path)
            if header != ["file_name", "point_index_list"]:
                raise DataFormatError(f"{path}: line 1: expected columns ['file_name', 'point_index_list'], "
                                      f"got {header}")
            for row in reader:
                line = reader.line_num
                if _is_blank(row):
                    continue  # a blank line holds no data
                if len(row) != 2:
                    raise DataFormatError(f"{path}: line {line}: wrong number of tab-separated fields, expected 2, "
                                          f"got {len(row)}")
                name, lst = row
                where = f"{path}: line {line} ({name})"
                if not name.strip():
                    raise DataFormatError(f"{where}: empty file_name")
                if name in first_line:
                    raise DataFormatError(f"{where}: duplicate file_name (first on line {first_line[name]})")
                idx = parse_index_list(lst, where, num_points)
                if rows and len(idx) != len(rows[0]):
                    raise DataFormatError(f"{where}: {len(idx)} indices, but line {first_line[names[0]]} has "
                                          f"{len(rows[0])}")
                first_line[name] = line
                names.append(name)
                rows.append(idx)
        except csv.Error as e:
            raise DataFormatError(f"{path}: line {max(reader.line_num, 1)}: not a readable text table "
                                  f"({type(e).__name__}: {e})") from e
        except UnicodeDecodeError as e:
            raise _not_utf8(path, e) from e
    indices = np.array(rows, dtype=np.int64).reshape(len(rows), -1 if rows else 0)
    return TestPoints(names, indices)
