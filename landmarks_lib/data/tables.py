"""Reading the contest's tables and writing files atomically.

- ``train/landmarks.csv``: tab-separated; ``file_name`` then ``Point_0_X, Point_0_Y, ..., Point_{K-1}_Y`` in
  original-image pixels, as *labels* (pixel indices: see ``LABEL_OFFSET``). ``K`` is read from the header.
- ``test/test_points.csv``: tab-separated; ``file_name`` and ``point_index_list``, a list literal of point indices,
  parsed as JSON (never evaluated).
- ``train/groups.csv`` (optional): tab-separated; ``file_name`` and ``group`` (a person: one side of the split).

One parser per table: ``read_landmarks``, ``read_test_points``, ``read_groups``. Each either raises on the first
problem (``DataFormatError``: the message names the file and the line, 1-based, the header is line 1, and its
``problem`` attribute holds the same as a ``RowProblem``), or, given a ``problems`` list, collects every problem there
as a ``RowProblem`` (file, line, kind, message) and drops the rows concerned: ``validate`` reports from that list.
File names in every table must be plain names, checked as written (``file_name_problem``). A table, or an image, that
is a symbolic link resolving outside its data folder is refused (``link_outside``: kind ``link_outside``) unless
``allow_links_outside`` is set (the parameter of that name).
"""

from __future__ import annotations

import contextlib
import csv
import json
import ntpath
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..core.files import atomic_open, atomic_save_npy, file_identity, fingerprint, outside_link

#: The range of a label value: labels are stored as ``int16`` (``LandmarksTable.points``); a value outside it is a
#: bad row (``coordinate_out_of_range``), whatever the table's dtype turns out to be.
LABEL_MIN, LABEL_MAX = -32768, 32767


@dataclass(frozen=True)
class RowProblem:
    """One problem found in a table, as data (``str()`` gives the loaders' error message).

    Attributes:
        file: the table's path, as given to the reader.
        line: 1-based line in the file (header = line 1; blank lines count); ``None`` when no line is known.
        kind: what kind of problem: ``bad_header``, ``unreadable_csv``, ``not_utf8``, ``link_outside`` (the table
            cannot be read on);
            ``wrong_field_count``, ``empty_name``, ``unsafe_name``, ``duplicate_name`` (any table);
            ``bad_coordinates``, ``coordinate_out_of_range`` (``landmarks.csv``); ``bad_index_list``,
            ``index_out_of_range``, ``inconsistent_list_length`` (``test_points.csv``); ``empty_group``
            (``groups.csv``).
        message: what is wrong, in words, without the file and line.
        name: the row's ``file_name`` as written (possibly empty) when the problem concerns a row with a name.
        skippable: ``True`` for a ``landmarks.csv`` row that ``bad_rows="skip"`` drops and lists; every other
            problem stops a loader whatever the policy.
    """

    file: str
    line: int | None
    kind: str
    message: str
    name: str | None = None
    skippable: bool = False

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}: line {self.line}"
        if self.name is not None:
            where += f" ({self.name})"
        return f"{where}: {self.message}"

    def error(self) -> DataFormatError:
        """This problem as the exception a loader raises."""
        return DataFormatError(str(self), self)


class DataFormatError(ValueError):
    """A table that does not follow the contest format; the message names the file and the line.

    Attributes:
        problem: the same as a ``RowProblem`` (file, line, kind, message), or ``None``.
    """

    def __init__(self, message: str, problem: RowProblem | None = None):
        super().__init__(message)
        self.problem = problem


@dataclass
class LandmarksTable:
    """Training landmarks.

    Attributes:
        names: image file names, ``N`` strings, in file order.
        points: ``[N, K, 2]`` (x, y) original-pixel *labels* as in the file (``LABEL_OFFSET``: continuous pixels are
            ``labels_to_points(points)``); ``int16`` when every value is an integer in range (the contest's case),
            else ``float32``. Convert per batch.
        skipped: ``(line, file_name, reason)`` of rows dropped under ``bad_rows="skip"``.
        lines: ``int64 [N]``, the 1-based line of each row in the file (header = line 1); ``None`` for a table not
            read from a file.
    """

    names: list
    points: np.ndarray
    skipped: list = field(default_factory=list)
    lines: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        """``K``, the points per face."""
        return int(self.points.shape[1])

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TestPoints:
    """Which points a submission must give for each test image.

    Attributes:
        names: ``N`` test image file names, in file order (the submission's row order).
        indices: ``int64 [N, M]`` point indices per image, in list order (``M`` = 30 in the contest).
        lines: ``int64 [N]``, the 1-based line of each row in the file; ``None`` for a table not read from a file.
    """

    __test__ = False  # not a pytest test class despite its name

    names: list
    indices: np.ndarray
    lines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Groups:
    """``train/groups.csv``: the person (group) of each training image.

    Attributes:
        names: ``N`` image file names, in file order.
        groups: ``N`` group labels, as written (strings).
        lines: ``int64 [N]``, the 1-based line of each row in the file.
    """

    names: list
    groups: list
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


# ------------------------------------------------------------------------------------------------- problems
class _Stop(Exception):
    """Internal: in collect mode, a problem after which the table cannot be read on was recorded."""


class _Collector:
    """Where one parse's problems go: raised at once as ``DataFormatError``, or (``collect``) recorded in ``found``
    with the rows concerned dropped. Under ``bad_rows="skip"`` skippable rows are recorded, not raised, in both
    modes. ``first_line``: ``{file_name: line}`` of the rows accepted so far (duplicates are found with it)."""

    def __init__(self, path, bad_rows: str = "error", collect: bool = False):
        self.file = str(path)
        self.bad_rows = bad_rows
        self.collect = collect
        self.found = []
        self.first_line = {}

    def reset(self) -> None:
        """Forget everything (a parse that starts over)."""
        self.found, self.first_line = [], {}

    def row(self, line, name, kind, message, skippable=False) -> None:
        """A bad row: raised, or recorded (``collect``, or a skippable row under ``bad_rows="skip"``)."""
        p = RowProblem(self.file, line, kind, message, name, skippable)
        if not (self.collect or (skippable and self.bad_rows == "skip")):
            raise p.error()
        self.found.append(p)

    def stop(self, problem: RowProblem) -> None:
        """A problem after which the table cannot be read on: raised, or recorded and the parse ended (``_Stop``)."""
        if not self.collect:
            raise problem.error()
        self.found.append(problem)
        raise _Stop

    def stop_at(self, line, kind, message) -> None:
        self.stop(RowProblem(self.file, line, kind, message))

    def skipped(self) -> list:
        """``(line, file_name or None, reason)`` of the skippable rows recorded, in line order."""
        return [(p.line, p.name if p.name and p.name.strip() else None, p.message) for p in self.found if p.skippable]


def _collecting(parse, sink: _Collector, problems):
    """Run ``parse()``; in collect mode append what ``sink`` found to ``problems`` and return ``None`` for a table
    that could not be read on."""
    try:
        out = parse()
    except _Stop:
        out = None
    if problems is not None:
        problems.extend(sink.found)
    return out


def file_name_problem(name: str) -> str | None:
    """Why a table's ``file_name`` (checked as written, not normalised) is not a plain file name; ``None`` if it is.

    A plain name names a file directly inside the images folder (which may be a symlink: it is followed): it has no
    ``/`` or ``\\``, is not ``.`` or ``..``, has no drive (``C:``) and is not absolute (every absolute path has a
    separator or a drive). Empty names are reported as such by the readers, not here.

    Returns:
        ``None``, or a sentence naming the file name and what is wrong with it.
    """
    if not ("/" in name or "\\" in name or name[1:2] == ":" or name in (".", "..")):
        return None  # the common case, cheaply
    if os.path.isabs(name) or ntpath.isabs(name):
        why = "is an absolute path"
    elif "/" in name or "\\" in name:
        why = "contains a path separator ('/' or '\\')"
    elif name in (".", ".."):
        why = "is a folder reference"
    else:
        why = f"starts with a drive ({name[:2]!r})"
    return f"file_name {name!r} {why}; it must be a plain file name in the images folder"


def link_outside(path, data_dir) -> str | None:
    """Why ``path`` is refused as a symbolic link out of the data folder, or ``None``: a link (followed to the end)
    whose target lies neither in ``data_dir`` nor in the folder that holds ``path`` (both resolved, so a data folder
    or an images folder that is itself a link is fine). One ``lstat`` for a file that is not a link.

    Returns:
        ``None``, or a sentence (without the path) naming the target and what to do.
    """
    a = os.path.abspath(os.fspath(path))
    try:
        if not os.path.islink(a):
            return None
    except OSError:
        return None
    data = os.path.realpath(os.fspath(data_dir))
    real = outside_link(a, (data, os.path.realpath(os.path.dirname(a))))
    if real is None:
        return None
    return (f"a symbolic link to {real}, outside the data folder {data}; copy the file into the data folder, or set "
            f"the parameter allow_links_outside to true to read it")


def _refused_link(path, allow: bool, problems) -> bool:
    """Check a table's own path (``link_outside``, data folder = the folder above the table's): ``True`` when it is
    refused in collect mode (recorded in ``problems``); raises ``DataFormatError`` when refused otherwise."""
    if allow:
        return False
    why = link_outside(path, os.path.dirname(os.path.dirname(os.path.abspath(os.fspath(path)))))
    if why is None:
        return False
    problem = RowProblem(str(path), None, "link_outside", why)
    if problems is None:
        raise problem.error()
    problems.append(problem)
    return True


def _name_check(name: str):
    """``(kind, reason)`` for an empty or unsafe file name, else ``(None, None)``."""
    if not name.strip():
        return "empty_name", "empty file_name"
    why = file_name_problem(name)
    return ("unsafe_name", why) if why else (None, None)


# ------------------------------------------------------------------------------------------------- text tables
def _is_blank(row) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _numbered(reader, base: int):
    """``(line, row)`` of the non-blank rows of a ``csv.reader``; ``base`` is added to its line numbers."""
    for row in reader:
        if not _is_blank(row):  # a blank line holds no data (it still counts in line numbers)
            yield base + reader.line_num, row


@contextlib.contextmanager
def _text_errors(path, reader, sink: _Collector):
    """Turn the csv module's and the decoder's errors met while reading ``reader`` into problems of ``sink``."""
    try:
        yield
    except csv.Error as e:
        sink.stop_at(max(reader.line_num, 1), "unreadable_csv", f"not a readable text table ({type(e).__name__}: {e})")
    except UnicodeDecodeError as e:
        sink.stop(_not_utf8(path, e))


def _header(reader, sink: _Collector) -> list:
    """The first row of a ``csv.reader``; an empty file stops the parse."""
    header = next(reader, None)
    if header is None:
        sink.stop_at(1, "bad_header", "empty file (no header)")
    return header


def _not_utf8(path, err: UnicodeDecodeError) -> RowProblem:
    r"""The problem of a table that is not UTF-8 text, naming the file line of the first undecodable byte (lines
    counted as the csv module does: ``\n``, ``\r\n`` or a lone ``\r`` ends one). Error path only: the file is read
    once more, line by line in binary."""
    line = 1
    with open(path, "rb") as f:
        for raw in f:  # split at b"\n", which is never part of a multi-byte UTF-8 character
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line += raw.count(b"\r", 0, e.start)
                return RowProblem(str(path), line, "not_utf8", f"not UTF-8 text (byte 0x{raw[e.start]:02x} cannot be "
                                  f"decoded); save the file as UTF-8")
            line += raw.replace(b"\r\n", b"\n").count(b"\r") + raw.endswith(b"\n")
    return RowProblem(str(path), None, "not_utf8", f"not UTF-8 text ({err}); save the file as UTF-8")


def _named_rows(path, sink: _Collector, columns: list):
    """``(line, file_name, second field)`` of each row of a two-column table (header ``columns``) with a good,
    first-seen file name (recorded in ``sink.first_line``); every other row is a problem of ``sink``."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        with _text_errors(path, reader, sink):
            header = _header(reader, sink)
            if header != columns:
                sink.stop_at(1, "bad_header", f"expected columns {columns}, got {header}")
            for line, row in _numbered(reader, 0):
                if len(row) != 2:
                    sink.row(line, None, "wrong_field_count",
                             f"wrong number of tab-separated fields, expected 2, got {len(row)}")
                    continue
                name = row[0]
                kind, reason = _name_check(name)
                if kind is None and name in sink.first_line:
                    kind, reason = "duplicate_name", f"duplicate file_name (first on line {sink.first_line[name]})"
                if kind is not None:
                    sink.row(line, name, kind, reason)
                    continue
                sink.first_line[name] = line
                yield line, name, row[1]


# ------------------------------------------------------------------------------------------------- landmarks.csv
def parse_header(columns, path="landmarks.csv") -> int:
    """Check a landmarks header and return the number of points ``K``.

    Raises:
        DataFormatError: first column not ``file_name``, an odd number of point columns, or columns out of order
            (line 1 of ``path`` named; ``problem.kind`` is ``bad_header``).
    """
    cols = [str(c).strip() for c in columns]
    if not cols or cols[0] != "file_name":
        raise RowProblem(str(path), 1, "bad_header", f"first column must be 'file_name', got {cols[:1]}").error()
    rest = cols[1:]
    if len(rest) == 0 or len(rest) % 2:
        raise RowProblem(str(path), 1, "bad_header", f"expected file_name and pairs of Point_i_X, Point_i_Y "
                         f"columns, got {len(cols)} columns").error()
    for j, c in enumerate(rest):
        want = f"Point_{j // 2}_{'XY'[j % 2]}"
        if c != want:
            raise RowProblem(str(path), 1, "bad_header", f"column {j + 2} is {c!r}, expected {want!r}").error()
    return len(rest) // 2


def _landmarks_header(header, path, sink: _Collector) -> int:
    """``parse_header`` whose error stops the parse through ``sink``."""
    try:
        return parse_header(header, path)
    except DataFormatError as e:
        sink.stop(e.problem)


def file_fingerprint(path) -> str:
    """A short key for a file's identity: sha1 of its absolute path, size and modification time (not its content)."""
    return fingerprint(file_identity(path))


def read_landmarks(path, bad_rows: str = "error", cache_dir=None, chunksize: int = 20000,
                   problems: list | None = None, allow_links_outside: bool = False) -> LandmarksTable | None:
    """Read ``landmarks.csv`` into compact arrays.

    Parsing is streamed (peak memory about the final array plus one chunk of ``chunksize`` rows) and, with
    ``cache_dir``, done once: the parsed arrays are saved there as ``landmarks-<fingerprint>-<bad_rows>.npy`` /
    ``.names.json`` and memory-mapped on later calls (the fingerprint is ``file_fingerprint``: path, size, mtime).
    Returns ``points`` as a read-only ``np.memmap`` whenever ``cache_dir`` is given.

    Args:
        path: the tab-separated file.
        bad_rows: ``"error"`` raises on the first bad row; ``"skip"`` drops bad rows and lists them in
            ``LandmarksTable.skipped`` (never silently) with their line numbers. Bad rows: missing, empty, NaN,
            infinite or non-numeric coordinates, a coordinate outside ``[LABEL_MIN, LABEL_MAX]`` (the ``int16``
            labels are stored in: ``1e39`` or ``40000`` is refused), too many or too few fields, an empty file name,
            or a file name already seen on an earlier line (the first occurrence is kept). Blank lines are ignored.
            A file name that is not a plain name (``file_name_problem``) is refused under both policies.
        cache_dir: optional folder for the parsed-once cache.
        chunksize: rows per packed block of the exact parser, and at most the lines per ``np.loadtxt`` call.
        problems: collect mode (the validator's): every problem is appended to this list as a ``RowProblem``
            instead of raised and the rows concerned are dropped (skippable ones also listed in ``skipped``);
            ``cache_dir`` is not used. Returns ``None`` when the table cannot be read on (bad header, text that is
            not UTF-8 or not a table, a link out of the data folder: the last problem says why).
        allow_links_outside: read the table even when it is a symbolic link resolving outside its data folder (the
            folder above the table's; ``link_outside``), refused otherwise.
    Returns:
        ``LandmarksTable`` (``None`` only in collect mode, see ``problems``).
    Raises:
        FileNotFoundError: no such file.
        ValueError: a bad ``bad_rows`` value.
        DataFormatError: bad header, a bad row under ``bad_rows="error"``, a file name that is not plain, text
            that is not UTF-8 (file and line named; ``problem`` holds the ``RowProblem``), or a link out of the data
            folder (kind ``link_outside``). Not in collect mode.
    """
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: landmarks file is missing")
    if _refused_link(path, allow_links_outside, problems):
        return None
    cache_base = None
    if cache_dir is not None and problems is None:
        cache_base = os.path.join(cache_dir, f"landmarks-{file_fingerprint(path)}-{bad_rows}")
        table = _load_cached(cache_base)
        if table is not None:
            return table
    sink = _Collector(path, bad_rows, collect=problems is not None)
    parsed = _collecting(lambda: _parse_landmarks(path, bad_rows, chunksize, sink), sink, problems)
    if parsed is None:
        return None
    names, points = parsed
    lines = np.array([sink.first_line[n] for n in names], dtype=np.int64)
    table = LandmarksTable(names, points, sink.skipped(), lines)
    if cache_base is not None:
        _save_cached(cache_base, table)
    return table


def _load_cached(cache_base) -> LandmarksTable | None:
    """The table saved by ``_save_cached``, ``points`` memory-mapped; ``None`` when absent (or of an older format)."""
    if not (os.path.exists(cache_base + ".names.json") and os.path.exists(cache_base + ".npy")):
        return None
    with open(cache_base + ".names.json") as f:
        meta = json.load(f)
    if "lines" not in meta:
        return None
    pts = np.load(cache_base + ".npy", mmap_mode="r")
    return LandmarksTable(meta["names"], pts, [tuple(s) for s in meta["skipped"]], np.array(meta["lines"], np.int64))


def _save_cached(cache_base, table: LandmarksTable) -> None:
    """Save ``table`` for ``_load_cached`` (atomically) and memory-map its ``points`` from the saved file."""
    os.makedirs(os.path.dirname(cache_base), exist_ok=True)
    atomic_save_npy(cache_base + ".npy", table.points)
    with atomic_open(cache_base + ".names.json", "w") as f:
        json.dump({"names": table.names, "skipped": [list(s) for s in table.skipped],
                   "lines": table.lines.tolist()}, f)
    table.points = np.load(cache_base + ".npy", mmap_mode="r")


def _parse_landmarks(path, bad_rows, chunksize, sink: _Collector):
    """``(names, points)``: the fast parser (integer tables without quoting: the contest's case), with the exact
    parser's row checks for any group of lines that is not plainly clean; anything it cannot vouch for starts over
    on the exact csv-module parser."""
    try:
        names, points, _ = _read_landmarks_fast(path, bad_rows, chunksize, sink)
    except _Unusual:
        sink.reset()
        names, points, _ = _read_landmarks_exact(path, bad_rows, chunksize, sink)
    return names, points


class _Unusual(Exception):
    """Internal: the fast parser met input only the exact (csv-module) parser handles; start over there."""


def _field_count_reason(row, header, ncol) -> str:
    if len(row) > ncol:
        return f"{len(row)} tab-separated fields, expected {ncol} (too many fields)"
    return (f"{len(row)} tab-separated fields, expected {ncol}: {ncol - len(row)} missing "
            f"coordinate(s) from column {header[len(row)]} (a short row has too few fields)")


def _coordinates(row, header):
    """``(None, None, float64 values)`` of a row with the right field count, or ``(kind, reason, None)``."""
    try:
        vals = np.array(row[1:], dtype=np.float64)
    except ValueError:
        j = next((j for j, v in enumerate(row[1:]) if not is_number(v)), 0)
        what = "empty" if not row[1 + j].strip() else f"non-numeric {row[1 + j][:20]!r}"
        return "bad_coordinates", f"{what} coordinate in column {header[1 + j]}", None
    bad = ~np.isfinite(vals)
    if bad.any():
        cols = np.flatnonzero(bad)
        return "bad_coordinates", (f"{len(cols)} NaN or infinite coordinate(s), first in column "
                                   f"{header[1 + cols[0]]} ({row[1 + cols[0]]!r})"), None
    bad = (vals < LABEL_MIN) | (vals > LABEL_MAX)
    if bad.any():
        cols = np.flatnonzero(bad)
        return "coordinate_out_of_range", (f"{len(cols)} coordinate(s) outside [{LABEL_MIN}, {LABEL_MAX}] (the "
                                           f"int16 range labels are stored in), first in column "
                                           f"{header[1 + cols[0]]} ({row[1 + cols[0]]!r})"), None
    return None, None, vals


def _check_row(row, header, ncol, first_line):
    """The per-row checks shared by both parsers: ``(kind, reason, float64 values)``, ``(None, None, values)`` for
    a good row, ``(kind, reason, None)`` for a bad one."""
    name = row[0]
    kind, reason = _name_check(name)
    if kind is not None:
        return kind, reason, None
    if len(row) != ncol:
        return "wrong_field_count", _field_count_reason(row, header, ncol), None
    kind, reason, vals = _coordinates(row, header)
    if kind is None and name in first_line:
        return "duplicate_name", f"duplicate file_name (first on line {first_line[name]})", None
    return kind, reason, vals


def _good_rows(rows, header, ncol, sink: _Collector):
    """Yield ``(line, file_name, float64 values)`` of the ``(line, row)`` pairs that pass ``_check_row``; the others
    are problems of ``sink`` (raised, or recorded and dropped). The caller records kept names in
    ``sink.first_line``."""
    for line, row in rows:
        kind, reason, vals = _check_row(row, header, ncol, sink.first_line)
        if kind is None:
            yield line, row[0], vals
        else:
            sink.row(line, row[0], kind, reason, skippable=kind != "unsafe_name")


class _Chunks:
    """Rows of float64 values packed into ``int16`` chunks while every value is an integer of at most 32767 in
    magnitude, else into ``float32``."""

    def __init__(self, k, chunksize):
        self.k, self.chunksize = k, chunksize
        self.block, self.chunks, self.all_int = [], [], True

    def add(self, vals) -> None:
        self.block.append(vals)
        if len(self.block) >= self.chunksize:
            self.pack()

    def pack(self) -> None:
        vals = np.stack(self.block) if self.block else np.zeros((0, 2 * self.k))
        self.block.clear()
        if self.all_int and vals.size and (np.any(vals != np.round(vals)) or np.abs(vals).max() > 32767):
            self.all_int = False
        self.chunks.append(vals.astype(np.int16 if self.all_int else np.float32).reshape(len(vals), self.k, 2))

    def result(self) -> np.ndarray:
        self.pack()
        if not self.all_int:
            self.chunks = [c.astype(np.float32) for c in self.chunks]
        return np.concatenate(self.chunks)


def _read_landmarks_exact(path, bad_rows, chunksize, sink: _Collector | None = None):
    """The reference parser: the csv module row by row, so every bad row is found with its exact line, whatever is
    wrong with it (about 4,000 rows/s). Returns ``(names, points, skipped)``; problems go to ``sink`` (by default
    one that raises, under ``bad_rows``)."""
    sink = sink if sink is not None else _Collector(path, bad_rows)
    names = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        with _text_errors(path, reader, sink):
            header = _header(reader, sink)
            k = _landmarks_header(header, path, sink)
            chunks = _Chunks(k, chunksize)
            for line, name, vals in _good_rows(_numbered(reader, 0), header, 1 + 2 * k, sink):
                sink.first_line[name] = line
                names.append(name)
                chunks.add(vals)
    return names, chunks.result(), sink.skipped()


_READ_BYTES = 1 << 16  # text read and decoded at a time by the fast parser: small buffers are reused by malloc
_GROUP_LINES = 256  # lines per np.loadtxt call (at most chunksize): small outputs, cheap exact re-checks


def _clean_chunk(lines, ncol, first_line, ascii_ok):
    """Parse lines (no terminators) with ``np.loadtxt`` when every one is plainly a good row: ``(names, int16
    [n, 2K])``; ``None`` when some line needs the exact per-row checks (blank, empty, unsafe or duplicate name, wrong
    field count, a value that is not an integer within int16 (-32768 excluded, as in the exact parser), any non-ASCII
    character after the name: np.loadtxt's integers and numpy's float agree on ASCII without U+001C..U+001F)."""
    names, rest = [], []
    for s in lines:
        i = s.find("\t")
        name = s[:i]
        if i <= 0 or not name.strip() or file_name_problem(name) or not (ascii_ok or s[i:].isascii()):
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


def _fast_blocks(f):
    """Yield ``(lines, is_ascii, nbytes)`` for each block of the binary file ``f``: ``_READ_BYTES`` and the rest of
    the line, decoded, split into lines without terminators (a byte-order mark dropped). Raises ``_Unusual`` for
    text that only the csv module reads correctly (quotes, NUL, a lone carriage return, the separators
    U+001C..U+001F, undecodable text, a field longer than the csv module's limit)."""
    field_limit = csv.field_size_limit()
    first = True
    while True:
        raw = f.read(_READ_BYTES)
        if not raw:
            return
        raw += f.readline()
        if first and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        first = False
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
        yield lines, text.isascii(), len(raw)


class _FastTable:
    """The fast parser's state: lines fed block by block are parsed a group at a time into names and a
    preallocated ``int16`` array (sized from the bytes per line of the first block, grown in place if short)."""

    def __init__(self, path, sink: _Collector, group_lines: int):
        self.path, self.sink, self.group_lines = path, sink, group_lines
        self.file_size = os.path.getsize(path)
        self.header, self.k, self.ncol = None, 0, 0
        self.names, self.points, self.n = [], None, 0  # rows kept
        self.base = 1  # lines (header included) before pending[0]
        self.pending, self.pending_ascii = [], True
        self.data_bytes = self.data_lines = 0

    def feed(self, lines, is_ascii, nbytes) -> None:
        """Take one block's lines (the first block starts with the header) and parse every full group."""
        if self.header is None:
            if not lines or "\t" not in lines[0]:
                raise _Unusual  # empty file or a one-column header: the exact parser words the error
            self.header = lines[0].split("\t")
            self.k = _landmarks_header(self.header, self.path, self.sink)
            self.ncol = 1 + 2 * self.k
            self.data_bytes -= len(lines[0]) + 1
            lines = lines[1:]
        self.data_bytes += nbytes
        self.data_lines += len(lines)
        self.pending.extend(lines)
        self.pending_ascii = self.pending_ascii and is_ascii
        self._drain(final=False)

    def finish(self):
        """Parse the lines left; ``(names, int16 [N, K, 2] points)``."""
        if self.header is None:
            raise _Unusual  # empty file
        self._drain(final=True)
        if self.points is None:
            self.points = np.empty((0, self.k, 2), np.int16)
        if self.n < len(self.points):
            self.points.resize((self.n, self.k, 2), refcheck=False)  # in place: no second copy of a large table
        return self.names, self.points

    def _drain(self, final: bool) -> None:
        while len(self.pending) >= self.group_lines or (final and self.pending):
            group = self.pending[:self.group_lines]
            del self.pending[:self.group_lines]
            self._reserve(len(group))
            got = _clean_chunk(group, self.ncol, self.sink.first_line, self.pending_ascii)
            if got is None:
                self._add_checked(group)
            else:
                self._add_clean(*got)
            self.base += len(group)
            if not self.pending:
                self.pending_ascii = True

    def _reserve(self, m: int) -> None:
        if self.points is None:
            per_line = max(1.0, self.data_bytes / max(1, self.data_lines))
            self.points = np.empty((int(self.file_size / per_line * 1.02) + self.group_lines, self.k, 2), np.int16)
        if self.n + m > len(self.points):
            self.points.resize((max(self.n + m, int(len(self.points) * 1.25)), self.k, 2), refcheck=False)

    def _add_clean(self, names, vals) -> None:
        self.points[self.n: self.n + len(vals)] = vals.reshape(len(vals), self.k, 2)
        self.sink.first_line.update(zip(names, range(self.base + 1, self.base + 1 + len(names))))
        self.names.extend(names)
        self.n += len(vals)

    def _add_checked(self, group) -> None:
        """A group that is not plainly clean: line by line through ``csv`` and ``_check_row``."""
        reader = csv.reader(group, delimiter="\t")
        try:
            for line, name, vals in _good_rows(_numbered(reader, self.base), self.header, self.ncol, self.sink):
                if np.any(vals != np.round(vals)) or np.abs(vals).max() > 32767:
                    raise _Unusual  # float32 output: the exact parser converts the whole table
                self.sink.first_line[name] = line
                self.names.append(name)
                self.points[self.n] = vals.reshape(self.k, 2)
                self.n += 1
        except csv.Error as e:
            raise _Unusual from e


def _read_landmarks_fast(path, bad_rows, chunksize, sink: _Collector | None = None):
    """Integer tables at about 100 MB/s: text read in small blocks, split into lines, ``np.loadtxt`` (C) on the
    coordinates of a few hundred lines at a time, into a preallocated ``int16`` array. A group of lines that is not
    plainly clean goes line by line through ``csv`` and ``_check_row`` (same results, messages and line numbers as
    ``_read_landmarks_exact``). Returns ``(names, points, skipped)``; problems go to ``sink``. Raises ``_Unusual``
    where only the exact parser is sure to read the file the same way (``_fast_blocks``, an odd header) or must
    decide the whole table's dtype (non-integer or out-of-int16 values)."""
    sink = sink if sink is not None else _Collector(path, bad_rows)
    table = _FastTable(path, sink, max(1, min(int(chunksize), _GROUP_LINES)))
    with open(path, "rb") as f:
        for lines, is_ascii, nbytes in _fast_blocks(f):
            table.feed(lines, is_ascii, nbytes)
    names, points = table.finish()
    return names, points, sink.skipped()


def is_number(text: str) -> bool:
    """Whether ``float(text)`` parses."""
    try:
        float(text)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------- test_points.csv
def _index_list(text: str, num_points: int | None):
    """``(indices, None, None)`` for a good ``point_index_list`` cell, else ``(None, kind, message)``."""
    try:
        v = json.loads(str(text))
    except (json.JSONDecodeError, RecursionError) as e:
        return None, "bad_index_list", f"point_index_list {str(text)[:60]!r} is not a list of integers ({e})"
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        return None, "bad_index_list", f"point_index_list {str(text)[:60]!r} is not a non-empty list of integers"
    hi = num_points if num_points is not None else 2 ** 63
    badi = [i for i in v if i < 0 or i >= hi]
    if badi:
        rng = f"[0, {num_points})" if num_points is not None else "(negative or too large)"
        more = f" and {len(badi) - 1} more" if len(badi) > 1 else ""
        return None, "index_out_of_range", f"point index {badi[0]} out of range {rng}{more}"
    return v, None, None


def read_test_points(path, num_points: int | None = None, problems: list | None = None,
                     allow_links_outside: bool = False) -> TestPoints | None:
    """Read ``test_points.csv``.

    Args:
        path: the tab-separated file with ``file_name`` and ``point_index_list``; UTF-8 (a byte-order mark is
            allowed), any line ends. Blank lines are ignored (they still count in line numbers).
        num_points: when given, every index must lie in ``[0, num_points)``.
        problems: collect mode (the validator's): every problem is appended to this list as a ``RowProblem``
            instead of raised, and the rows concerned are dropped; returns ``None`` when the table cannot be read
            on (bad header, text that is not UTF-8 or not a table, a link out of the data folder).
        allow_links_outside: as in ``read_landmarks``.
    Returns:
        ``TestPoints``; all rows must list the same number of indices (the submission has fixed columns).
    Raises:
        FileNotFoundError: no such file.
        DataFormatError: file and line named (``problem`` holds the ``RowProblem``): a bad header, a row without
            exactly two tab-separated fields, a bad list, an empty, duplicate or not plain (``file_name_problem``)
            file name, lists of different lengths, text that is not UTF-8, a link out of the data folder. Not in
            collect mode.
    """
    def check(text, rows, lines):
        idx, kind, message = _index_list(text, num_points)
        if idx is not None and rows and len(idx) != len(rows[0]):
            return None, "inconsistent_list_length", f"{len(idx)} indices, but line {lines[0]} has {len(rows[0])}"
        return idx, kind, message

    got = _read_two_columns(path, "test points", ["file_name", "point_index_list"], check, problems,
                            allow_links_outside)
    if got is None:
        return None
    names, rows, lines = got
    return TestPoints(names, np.array(rows, dtype=np.int64).reshape(len(rows), -1 if rows else 0), lines)


def _read_two_columns(path, what, columns, check, problems, allow_links_outside=False):
    """The good rows of a two-column table as ``(names, values, int64 lines)``, or ``None`` (collect mode, a table
    that cannot be read on). ``check(text, values, lines)`` judges a row's second field against the rows accepted
    so far: ``(value, None, None)`` or ``(None, kind, message)``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: {what} file is missing")
    if _refused_link(path, allow_links_outside, problems):
        return None
    sink = _Collector(path, collect=problems is not None)

    def parse():
        names, values, lines = [], [], []
        for line, name, text in _named_rows(path, sink, columns):
            value, kind, message = check(text, values, lines)
            if kind is not None:
                sink.row(line, name, kind, message)
                continue
            names.append(name)
            values.append(value)
            lines.append(line)
        return names, values, np.array(lines, dtype=np.int64)

    return _collecting(parse, sink, problems)


# ------------------------------------------------------------------------------------------------- groups.csv
def read_groups(path, problems: list | None = None, allow_links_outside: bool = False) -> Groups | None:
    """Read ``train/groups.csv`` (tab-separated ``file_name``, ``group``; UTF-8, blank lines ignored).

    Args:
        path: the file.
        problems: collect mode, as in ``read_test_points``.
        allow_links_outside: as in ``read_landmarks``.
    Returns:
        ``Groups`` (``None`` only in collect mode, for a table that cannot be read on).
    Raises:
        FileNotFoundError: no such file.
        DataFormatError: file and line named: a bad header, a row without exactly two fields, an empty, duplicate
            or not plain file name, an empty group, text that is not UTF-8, a link out of the data folder. Not in
            collect mode.
    """
    def check(text, groups, lines):
        return (text, None, None) if text.strip() else (None, "empty_group", "empty group")

    got = _read_two_columns(path, "groups", ["file_name", "group"], check, problems, allow_links_outside)
    return None if got is None else Groups(*got)
