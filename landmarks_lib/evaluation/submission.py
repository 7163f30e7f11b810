"""The contest submission: writer and validator.

Format: comma-separated, header ``file_name,Point_M0_X,Point_M0_Y,...,Point_M{M-1}_Y``; one row per test image in
``test_points.csv`` order; row ``r`` holds x, y of the points listed for that image, in list order, in original-image
pixels in the label convention of ``landmarks.csv`` (``coords.LABEL_OFFSET``: continuous predictions minus 0.5), with
``decimals`` decimals (default 2: the metric is a mean squared error, and rounding to integers would add about
1/12 px^2 to it), or rounded to the nearest integer with ``decimals=0`` (halves up: ``floor(v + 0.5)``), never
truncated.
"""

from __future__ import annotations

import os
from io import StringIO

import numpy as np
import pandas as pd

from ..core import coords
from ..core.coords import points_to_labels
from ..core.files import atomic_open
from ..data.tables import TestPoints


class SubmissionError(ValueError):
    """A submission that does not match ``test_points.csv``; the message says where."""


def submission_columns(m: int) -> list:
    """``["file_name", "Point_M0_X", "Point_M0_Y", ..., "Point_M{m-1}_Y"]``."""
    return ["file_name"] + [f"Point_M{i}_{a}" for i in range(m) for a in "XY"]


def make_submission(test_points: TestPoints, predictions, decimals: int = 2) -> pd.DataFrame:
    """Select each image's listed points from full predictions, as labels.

    Args:
        test_points: ``tables.TestPoints`` (names and ``int64 [N, M]`` indices).
        predictions: ``[N, K, 2]`` continuous original pixels, rows in ``test_points.names`` order.
        decimals: ``> 0``: ``float64`` labels rounded to that many decimals; ``0``: ``int64`` labels rounded to the
            nearest integer, halves up.
    Returns:
        the submission table: label-convention coordinates (``coords.points_to_labels``).
    Raises:
        SubmissionError: row count mismatch, NaN predictions, index outside ``[0, K)``.
        ValueError: negative ``decimals``.
    """
    if int(decimals) < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    p = np.asarray(predictions)  # selected first, then float64: no float64 copy of every point
    n, m = test_points.indices.shape
    if p.ndim != 3 or p.shape[0] != n or p.shape[2] != 2:
        raise SubmissionError(f"predictions have shape {p.shape}, expected [{n}, K, 2] for {n} test images")
    if test_points.indices.size and (test_points.indices.min() < 0 or test_points.indices.max() >= p.shape[1]):
        raise SubmissionError(f"a point index is outside [0, {p.shape[1]})")
    sel = np.take_along_axis(p, test_points.indices[:, :, None].repeat(2, axis=2), axis=1).astype(np.float64)
    if not np.isfinite(sel).all():
        r = int(np.flatnonzero(~np.isfinite(sel).all(axis=(1, 2)))[0])
        raise SubmissionError(f"prediction for {test_points.names[r]} (row {r + 1}) has NaN or infinite values")
    labels = points_to_labels(sel.reshape(n, 2 * m))
    labels = coords.round_half_up(labels) if int(decimals) == 0 else np.round(labels, int(decimals))
    df = pd.DataFrame(labels, columns=submission_columns(m)[1:])
    df.insert(0, "file_name", list(test_points.names))
    return df


def write_submission(path, test_points: TestPoints, predictions, decimals: int = 2) -> pd.DataFrame:
    """``make_submission``, checked by ``validate_submission`` as the CSV text it writes, then written atomically:
    a table that fails the check is never written (``path`` is left as it was). Returns the table.

    Raises:
        SubmissionError: as ``make_submission`` and ``validate_submission`` (the message names ``path``).
    """
    df = make_submission(test_points, predictions, decimals)
    text = df.to_csv(index=False)
    _check_table(StringIO(text), path, test_points)
    with atomic_open(path, "w", newline="") as f:
        f.write(text)
    return df


def validate_submission(path, test_points: TestPoints) -> pd.DataFrame:
    """Check a submission file against ``test_points.csv``: header, row count, row order, numeric, no NaN.

    ``file_name`` is read as text as it stands (a test image named ``NA``, ``nan`` or ``null`` stays that name).
    Blank lines are not allowed (each is reported as a row without a name).

    Returns:
        the table read.
    Raises:
        FileNotFoundError, SubmissionError (the message names the file line, 1-based with the header as line 1,
            or the column).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: submission is missing")
    return _check_table(path, path, test_points)


def _check_table(source, path, test_points: TestPoints) -> pd.DataFrame:
    """``validate_submission`` of ``source`` (a path or a text buffer); messages name ``path``."""
    try:
        df = pd.read_csv(source, dtype={"file_name": str}, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError as e:
        raise SubmissionError(f"{path}: line 1: empty file (no header)") from e
    except pd.errors.ParserError as e:  # e.g. "Expected 5 fields in line 7, saw 6" (file lines, header = 1)
        raise SubmissionError(f"{path}: not a comma-separated table with the header's columns "
                              f"({str(e).strip()})") from e
    n, m = test_points.indices.shape
    want = submission_columns(m)
    if list(df.columns) != want:
        bad = next((i for i, (a, b) in enumerate(zip(df.columns, want)) if a != b), min(len(df.columns), len(want)))
        raise SubmissionError(f"{path}: header differs from the expected {len(want)} columns at column {bad + 1} "
                              f"(got {len(df.columns)} columns)")
    names = df["file_name"].tolist()
    r = next((i for i, (a, b) in enumerate(zip(names, test_points.names)) if a != b), None)
    if r is not None:  # data row r is file line r + 2
        raise SubmissionError(f"{path}: line {r + 2} is {names[r]!r}, test_points.csv has {test_points.names[r]!r} "
                              f"there (rows must follow test_points.csv order)")
    if len(df) > n:
        raise SubmissionError(f"{path}: {len(df)} rows, test_points.csv has {n} (line {n + 2} is one too many)")
    if len(df) < n:
        raise SubmissionError(f"{path}: {len(df)} rows, test_points.csv has {n} ({test_points.names[len(df)]!r}, "
                              f"due on line {len(df) + 2}, is missing)")
    vals = df.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(vals).all():
        r, c = np.argwhere(~np.isfinite(vals))[0]
        raise SubmissionError(f"{path}: line {r + 2} ({names[r]}), column {want[c + 1]}: missing or non-numeric")
    return df
