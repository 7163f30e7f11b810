"""Check a data folder (the contest's format, or another of ``formats``) before EDA or training, and report every
problem found.

``validate_dataset(data_dir)`` reads ``train/landmarks.csv``, the optional ``train/groups.csv``,
``test/test_points.csv`` and the image headers, and returns a ``ValidationReport``: a list of ``Problem`` s, each
with a severity, the file (relative to ``data_dir``), the 1-based line in the CSV that lists it (header = line 1)
and a message. Severities:

- ``fatal``: training or prediction would stop or be wrong: ``landmarks.csv`` missing, with a bad header or with no
  data rows; rows with a wrong number of fields, empty/NaN/non-numeric coordinates, a coordinate outside the
  ``int16`` range the labels are stored in (``tables.LABEL_MIN``..``tables.LABEL_MAX``: ``1e39``, ``40000``), an empty
  or
  duplicate file name (under the default ``bad_rows="error"`` policy; under ``"skip"`` they are warnings, the rows
  being dropped); file names that are not plain names (``tables.file_name_problem``: a ``/`` or ``\\``, ``.``, ``..``,
  a drive, an absolute path) in any table, under both policies; listed images that are missing, empty (0 bytes),
  truncated or not images; ``test_points.csv`` missing, malformed, without data rows, with malformed lists,
  out-of-range indices or lists of different lengths; ``groups.csv`` malformed; a table or a listed image that is a
  symbolic link resolving outside the data folder (``link_outside``: ``tables.link_outside``; the loaders refuse
  it too), unless ``allow_links_outside`` (then an ``info``, ``link_outside_allowed``).
- ``warning``: points more than 25% of the image size beyond an edge; image modes that ``images.load_image``
  converts (grayscale, 1-bit, palette, alpha, CMYK, 16-bit); an EXIF orientation other than 1 (ignored by policy:
  pixels are used as stored); ``groups.csv`` names that do not match the training rows.
- ``info``: tiny images (shorter side under 32 px; upscaling them is the normal path); files in an image folder
  that no CSV lists; an image stored in another format than its extension says; points outside the image but
  within 25% of its size (a face cut by the frame; images with points far outside get the warning instead).

The tables are read by the loaders' own parsers (``tables.read_landmarks``, ``tables.read_test_points``,
``tables.read_groups``)
in collect mode: each ``tables.RowProblem`` they collect (file, line, kind, message) becomes a ``Problem``, so the
report
and the loaders' errors cannot disagree.

Image checks read headers only (``check_images=True``): size, mode, EXIF, plus a look at the last bytes of the file
for the JPEG/PNG end marker; a file without one is fully decoded to tell a truncated file from a merely padded one.
``check_images="full"`` decodes every image with ``load_image``; ``False`` checks only that the files exist.

Command line: ``python -m landmarks_lib.validate DATA_DIR [--full] [--no-images] [--workers N]``; prints the
report and exits with 1 when there is a fatal problem.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..core.coords import POINT_CHUNK, labels_to_points, points_to_labels
from ..core.images import ImageError, load_image, size_problem
from . import formats
from .tables import DataFormatError, RowProblem, link_outside, read_groups, read_landmarks, read_test_points

SEVERITIES = ("fatal", "warning", "info")
TINY_SIDE = 32  # px: shorter side below this is reported as info
MIN_TRAIN_ROWS = 2  # one image to train on, one to validate
FAR_OUTSIDE = 0.25  # share of the image size beyond an edge that makes a point "far outside"
_ORIENTATION = 0x0112
_MODE_NOTES = {
    "L": "grayscale (L), converted to RGB by repeating the channel",
    "1": "1-bit, converted to RGB (0 or 255)",
    "P": "palette (P), converted to RGB",
    "RGBA": "RGBA, alpha composited over black",
    "LA": "grayscale with alpha (LA), composited over black",
    "PA": "palette with alpha (PA), composited over black",
    "RGBa": "premultiplied RGBa, composited over black",
    "La": "premultiplied La, composited over black",
    "CMYK": "CMYK, converted to RGB by PIL (colours may shift)",
    "I;16": "16-bit (I;16), scaled linearly from its own [min, max] to 0..255",
    "I;16L": "16-bit (I;16L), scaled linearly from its own [min, max] to 0..255",
    "I;16B": "16-bit (I;16B), scaled linearly from its own [min, max] to 0..255",
    "I;16N": "16-bit (I;16N), scaled linearly from its own [min, max] to 0..255",
    "I": "32-bit integer (I), scaled linearly from its own [min, max] to 0..255",
    "F": "32-bit float (F), scaled linearly from its own [min, max] to 0..255",
}
_EXT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
                ".tif": "TIFF", ".tiff": "TIFF"}


class DatasetError(ValueError):
    """A data folder with fatal problems; the message lists them (file and line named)."""


@dataclass(frozen=True)
class Problem:
    """One finding.

    Attributes:
        severity: ``"fatal"``, ``"warning"`` or ``"info"``.
        file: path relative to the data folder, ``/``-separated (a CSV or an image).
        line: 1-based line of the CSV row concerned (header = line 1): for an image, the line of the CSV that lists
            it (``train/landmarks.csv`` for ``train/``, ``test/test_points.csv`` for ``test/``); ``None`` when no
            row applies (a missing file, an unlisted image).
        message: what is wrong, in words.
        kind: short machine-readable name of the kind of problem (``counts`` is keyed by it).
    """

    severity: str
    file: str
    line: int | None
    message: str
    kind: str = "other"

    @property
    def where(self) -> str:
        if self.line is None:
            return self.file
        if self.file.endswith(".csv"):
            return f"{self.file}:{self.line}"
        listing = "test/test_points.csv" if self.file.startswith("test/") else "train/landmarks.csv"
        return f"{self.file} ({listing}:{self.line})"

    def __str__(self) -> str:
        return f"{self.severity.upper():7s} {self.kind}: {self.where}: {self.message}"


@dataclass
class ValidationReport:
    """What ``validate_dataset`` found.

    Attributes:
        data_dir: the folder checked.
        problems: every ``Problem``, fatal first, then by file and line.
        num_train: training rows with usable labels (rows dropped as bad are not counted).
        num_test: rows of ``test_points.csv`` that parsed.
        num_points: ``K`` from the landmarks header (``0`` when unknown).
        image_sizes: ``DataFrame`` with columns ``name, width, height, split`` (``"train"``/``"test"``),
            ``mode, format`` for every listed image whose header could be read; pixels as stored.
        elapsed_s: seconds the check took.
    """

    data_dir: str
    problems: list = field(default_factory=list)
    num_train: int = 0
    num_test: int = 0
    num_points: int = 0
    image_sizes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["name", "width", "height", "split", "mode", "format"]))
    elapsed_s: float = 0.0

    @property
    def counts(self) -> dict:
        """``{severity: {kind: n}}`` for every severity (empty dicts when none), plus ``"total"``:
        ``{severity: n}``."""
        out = {s: dict(Counter(p.kind for p in self.problems if p.severity == s)) for s in SEVERITIES}
        out["total"] = {s: sum(out[s].values()) for s in SEVERITIES}
        return out

    @property
    def ok(self) -> bool:
        """True when there is no fatal problem."""
        return not any(p.severity == "fatal" for p in self.problems)

    def to_frame(self) -> pd.DataFrame:
        """The problems as a ``DataFrame`` with columns ``severity, kind, file, line, message`` (line nullable)."""
        df = pd.DataFrame([(p.severity, p.kind, p.file, p.line, p.message) for p in self.problems],
                          columns=["severity", "kind", "file", "line", "message"])
        df["line"] = df["line"].astype("Int64")
        return df

    def summary(self, max_problems: int = 20) -> str:
        """A readable summary: sizes, counts by severity and kind, and the first ``max_problems`` problems."""
        c = self.counts
        status = "OK" if self.ok else f"NOT OK ({c['total']['fatal']} fatal)"
        lines = [f"Dataset {self.data_dir}: {status}",
                 f"  {self.num_train} training rows, {self.num_test} test rows, {self.num_points} points per face; "
                 f"checked in {self.elapsed_s:.1f} s",
                 "  problems: " + ", ".join(f"{c['total'][s]} {s}" for s in SEVERITIES)]
        for s in SEVERITIES:
            for kind, n in sorted(c[s].items(), key=lambda kv: -kv[1]):
                lines.append(f"    {s:7s} {kind}: {n}")
        if self.problems and max_problems > 0:
            shown = self.problems[:max_problems]
            lines.append(f"  first {len(shown)} of {len(self.problems)} problems:")
            lines.extend("    " + str(p) for p in shown)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def raise_if_fatal(self, max_listed: int = 20) -> None:
        """Raise ``DatasetError`` listing the first ``max_listed`` fatal problems and how many there are in all.

        Raises:
            DatasetError: when ``ok`` is False.
        """
        fatal = [p for p in self.problems if p.severity == "fatal"]
        if not fatal:
            return
        msg = [f"{self.data_dir}: {len(fatal)} fatal problem(s) in the data:"]
        msg.extend("  " + str(p) for p in fatal[:max_listed])
        if len(fatal) > max_listed:
            msg.append(f"  ... and {len(fatal) - max_listed} more fatal problem(s)")
        raise DatasetError("\n".join(msg))


# ------------------------------------------------------------------------------------------------- image probe
def _tail_ok(path, fmt) -> bool:
    """True when the file ends with its format's end marker (JPEG EOI, PNG IEND); True for other formats."""
    if fmt not in ("JPEG", "PNG", "MPO"):
        return False  # no cheap end check: decode fully
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        n = f.tell()
        f.seek(max(0, n - 64))
        tail = f.read()
    if fmt == "PNG":
        return b"IEND" in tail
    return tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def _probe(path, full: bool) -> dict:
    """Header (and, when needed, full-decode) facts about one image file; never raises for a bad file.

    Returns:
        dict with ``error`` (``(kind, message)`` or ``None``), ``width``, ``height``, ``mode``, ``format``,
        ``orientation`` (EXIF tag value or ``None``).
    """
    out = {"error": None, "width": None, "height": None, "mode": None, "format": None, "orientation": None}
    try:
        size = os.path.getsize(path)
    except OSError:
        out["error"] = ("missing_image", "listed but missing")
        return out
    if size == 0:
        out["error"] = ("empty_image", "empty file (0 bytes)")
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size_problem names the limit below
            im = Image.open(path)
        with im:
            out.update(width=int(im.size[0]), height=int(im.size[1]), mode=im.mode, format=im.format,
                       transparency="transparency" in im.info)
            try:
                out["orientation"] = im.getexif().get(_ORIENTATION)
            except Exception:  # a broken EXIF block does not matter: orientation is ignored anyway
                out["orientation"] = None
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        out["error"] = ("not_an_image", f"not a readable image ({type(e).__name__}: {e})")
        return out
    except (OSError, SyntaxError, ValueError) as e:
        out["error"] = ("corrupt_image", f"image header cannot be read ({type(e).__name__}: {e})")
        return out
    too_big = size_problem(out["width"], out["height"])
    if too_big:
        out["error"] = ("image_too_large", too_big)
        return out
    if full or not _tail_ok(path, out["format"]):
        try:
            load_image(path)
        except ImageError as e:
            kind = "truncated_image" if "truncated" in str(e) else "corrupt_image"
            out["error"] = (kind, f"cannot be decoded: {str(e).split(': ', 1)[-1]}")
    return out


def _list_dir(d) -> tuple[list, set]:
    """The files of folder ``d`` (links to files included), sorted, and the names among them that are symbolic
    links (from the listing itself: no call per file)."""
    try:
        with os.scandir(d) as it:
            entries = [e for e in it if e.is_file()]
    except FileNotFoundError:
        return [], set()
    return sorted(e.name for e in entries), {e.name for e in entries if e.is_symlink()}


# ------------------------------------------------------------------------------------------------- CSV checks
class _Listing:
    """What the tables list: ``rows[split]``: ``(name, line)`` of the rows whose images are checked; ``named[split]``:
    names of bad rows too (their images are not reported as unlisted, nor checked); ``unread``: the splits whose
    table is missing or unreadable (no image of theirs is reported as unlisted); ``allow_links_outside``: the
    policy for links out of the data folder."""

    def __init__(self, allow_links_outside: bool = False):
        self.rows = {"train": [], "test": []}
        self.named = {"train": set(), "test": set()}
        self.unread = set()
        self.allow_links_outside = allow_links_outside


def _row_text(p: RowProblem) -> str:
    """A row problem's message for the report: the row's file name first, when it has one."""
    if p.name is None:
        return p.message
    return f"{p.name if p.name.strip() else '<empty>'}: {p.message}"


def _add_table_problems(found, rel, add, bad_rows="error") -> None:
    """Report the ``RowProblem`` s a reader collected for the table ``rel``: fatal, except skippable rows under
    ``bad_rows="skip"`` (warnings: training drops them)."""
    for p in found:
        if bad_rows == "skip" and p.skippable:
            add("warning", rel, p.line, p.kind, f"{_row_text(p)} (row dropped under bad_rows='skip')")
        else:
            add("fatal", rel, p.line, p.kind, _row_text(p))


def _check_landmarks(data_dir, bad_rows, report, listing, add):
    """Check ``train/landmarks.csv`` with ``tables.read_landmarks`` in collect mode; returns the table or ``None``."""
    rel = "train/landmarks.csv"
    path = os.path.join(data_dir, rel)
    if not os.path.exists(path):
        add("fatal", rel, None, "landmarks_missing", "landmarks file is missing")
        listing.unread.add("train")
        return None
    found = []
    table = read_landmarks(path, bad_rows="skip", problems=found, allow_links_outside=listing.allow_links_outside)
    _add_table_problems(found, rel, add, bad_rows)
    listing.named["train"].update(p.name for p in found if p.name)
    if table is None:
        listing.unread.add("train")
        return None
    if not len(table) and (not found or bad_rows == "skip"):
        what = "header only" if not found else "every row is bad (all dropped under bad_rows='skip')"
        add("fatal", rel, 1, "no_data_rows", f"no training rows: {what}; training needs at least one")
    elif len(table) < MIN_TRAIN_ROWS and (not found or bad_rows == "skip"):
        add("fatal", rel, 1, "too_few_rows", f"{len(table)} usable training row(s); a train/validation split needs "
                                             f"at least {MIN_TRAIN_ROWS}")
    report.num_train = len(table)
    report.num_points = table.num_points
    listing.rows["train"] = list(zip(table.names, table.lines.tolist()))
    return table


def _check_groups(data_dir, table, add, bad_names=(), allow_links_outside=False) -> None:
    """Check the optional ``train/groups.csv`` with ``tables.read_groups``: format (fatal) and agreement with the
    training rows (warnings; ``bad_names``, the names of rows already reported as bad, count as training rows)."""
    rel = "train/groups.csv"
    path = os.path.join(data_dir, rel)
    if not os.path.exists(path):
        return
    found = []
    groups = read_groups(path, problems=found, allow_links_outside=allow_links_outside)
    _add_table_problems(found, rel, add)
    if groups is None or table is None:
        return
    train_names = set(table.names) | set(bad_names)
    for name, line in zip(groups.names, groups.lines.tolist()):
        if name not in train_names:
            add("warning", rel, line, "group_unknown_image", f"{name} is not a training row")
    grouped = set(groups.names)
    for name in table.names:
        if name not in grouped:
            add("warning", rel, None, "image_without_group",
                f"training image {name} has no group (validation split by groups cannot place it)")


def _check_test_points(data_dir, report, listing, add) -> None:
    """Check ``test/test_points.csv`` with ``tables.read_test_points`` in collect mode (every problem, not just the
    first), against ``K`` when the landmarks header gave it."""
    rel = "test/test_points.csv"
    path = os.path.join(data_dir, rel)
    if not os.path.exists(path):
        add("fatal", rel, None, "test_points_missing", "test points file is missing")
        listing.unread.add("test")
        return
    if not report.num_points:
        add("warning", rel, None, "range_unchecked",
            "point indices not checked against K (the landmarks header could not be read)")
    found = []
    tp = read_test_points(path, num_points=report.num_points or None, problems=found,
                          allow_links_outside=listing.allow_links_outside)
    _add_table_problems(found, rel, add)
    listing.named["test"].update(p.name for p in found if p.name)
    if tp is None:
        listing.unread.add("test")
        return
    if not len(tp) and not found:
        add("fatal", rel, 1, "no_data_rows", "no test rows: header only; the submission needs at least one")
    report.num_test = len(tp)
    listing.rows["test"] = list(zip(tp.names, tp.lines.tolist()))


# ------------------------------------------------------------------------------------------------- image checks
def _image_jobs(data_dir, listing, add) -> list:
    """``(split, name, line)`` of every listed image to check; reports missing folders, unlisted files and links out
    of the data folder (``_links_outside``: not opened unless allowed)."""
    jobs = []
    tables = {"train": "train/landmarks.csv", "test": "test/test_points.csv"}
    for split in ("train", "test"):
        img_dir = os.path.join(data_dir, split, "images")
        rows = listing.rows[split]
        if rows and not os.path.isdir(img_dir):
            add("fatal", f"{split}/images", None, "images_folder_missing",
                f"image folder is missing ({len(rows)} listed images)")
            continue
        wanted = {n for n, _ in rows} | listing.named[split]
        files, links = ([], set()) if split in listing.unread else _list_dir(img_dir)
        for n in files:
            if n not in wanted:
                add("info", f"{split}/images/{n}", None, "unlisted_image", f"in the folder but not listed in "
                    f"{tables[split]}")
        refused = _links_outside(data_dir, split, [(n, line) for n, line in rows if n in links], listing, add)
        jobs.extend((split, n, line) for n, line in rows if n not in refused)
    return jobs


def _links_outside(data_dir, split, linked, listing, add) -> set:
    """Report the listed images (``(name, line)``, links) that resolve outside the data folder: fatal
    (``link_outside``), or ``info`` (``link_outside_allowed``) under ``allow_links_outside``. Returns the names
    refused (not to be opened)."""
    refused = set()
    for n, line in linked:
        why = link_outside(os.path.join(data_dir, split, "images", n), data_dir)
        if why is None:
            continue
        if listing.allow_links_outside:
            add("info", f"{split}/images/{n}", line, "link_outside_allowed",
                why.split(";")[0] + " (read: allow_links_outside is set)")
        else:
            add("fatal", f"{split}/images/{n}", line, "link_outside", why)
            refused.add(n)
    return refused


def _allowed_table_links(data_dir, add) -> None:
    """Under ``allow_links_outside``: an ``info`` (``link_outside_allowed``) for each table read through a link out
    of the data folder."""
    for rel in ("train/landmarks.csv", "train/groups.csv", "test/test_points.csv"):
        why = link_outside(os.path.join(data_dir, rel), data_dir)
        if why:
            add("info", rel, None, "link_outside_allowed", why.split(";")[0] + " (read: allow_links_outside is set)")


def _exists_only(path) -> dict:
    """The ``check_images=False`` probe: the file exists and is not empty."""
    if not os.path.exists(path):
        return {"error": ("missing_image", "listed but missing")}
    if os.path.getsize(path) == 0:
        return {"error": ("empty_image", "empty file (0 bytes)")}
    return {"error": None, "width": None}


def _probe_all(data_dir, jobs, check_images, num_workers, progress, flat: bool = False) -> list:
    """The probe result (``_probe`` or ``_exists_only``) of every job, in job order; ``flat``: the names are paths
    below ``data_dir`` (the other formats' images), not in ``<split>/images``."""
    full = check_images == "full"

    def one(job):
        path = os.path.join(data_dir, *job[1].split("/")) if flat else os.path.join(data_dir, job[0], "images", job[1])
        return _exists_only(path) if check_images is False else _probe(path, full)

    pool = ThreadPoolExecutor(num_workers) if num_workers and num_workers > 0 and jobs else None
    it = pool.map(one, jobs) if pool is not None else map(one, jobs)
    if progress and jobs:
        it = tqdm(it, total=len(jobs), desc="checking images")
    try:
        return list(it)
    finally:
        if pool is not None:
            pool.shutdown()


def _image_findings(jobs, probes, add, prefix=None) -> pd.DataFrame:
    """Report each probe's error, mode, orientation, size and format findings; the sizes of readable images.
    ``prefix``: what the messages put before an image's name (default ``<split>/images/``)."""
    sizes = []
    for (split, name, line), res in zip(jobs, probes):
        rel = f"{split}/images/{name}" if prefix is None else prefix + name
        if res["error"] is not None:
            kind, msg = res["error"]
            add("fatal", rel, line, kind, msg)
            continue
        if res.get("width") is None:
            continue
        w, h, mode, fmt = res["width"], res["height"], res["mode"], res["format"]
        sizes.append((name, w, h, split, mode, fmt))
        if mode != "RGB":
            note = _MODE_NOTES.get(mode, f"mode {mode}, converted to RGB by PIL")
            if mode == "P" and res.get("transparency"):
                note += " (transparency composited over black)"
            add("warning", rel, line, "mode_converted", note)
        orient = res["orientation"]
        if orient is not None and orient != 1:
            add("warning", rel, line, "exif_orientation",
                f"EXIF orientation {orient} is ignored by policy (pixels and labels used as stored)")
        if min(w, h) < TINY_SIDE:
            add("info", rel, line, "tiny_image",
                f"{w}x{h} px, shorter side under {TINY_SIDE} px (upscaled to the crop size: the normal path)")
        ext = os.path.splitext(name)[1].lower()
        expected = _EXT_FORMATS.get(ext)
        if expected and fmt and fmt != expected and not (fmt == "MPO" and expected == "JPEG"):
            add("info", rel, line, "format_mismatch", f"stored as {fmt} despite the {ext} name (decoded by content)")
    return pd.DataFrame(sizes, columns=["name", "width", "height", "split", "mode", "format"])


def _check_point_ranges(table, image_sizes, line_of, add, chunk: int = POINT_CHUNK, prefix: str = "train/images/"
                        ) -> None:
    """Points outside their image: info within ``FAR_OUTSIDE`` of its size (a face cut by the frame), else a
    warning naming the farthest point. The images are checked ``chunk`` at a time (bounded memory at any dataset
    size; the messages and their order do not depend on ``chunk``). Unlabelled (NaN) points are not checked."""
    tr = image_sizes[image_sizes["split"] == "train"].set_index("name")
    idx = np.array([i for i, n in enumerate(table.names) if n in tr.index], dtype=np.int64)
    if not len(idx):
        return
    names = [table.names[i] for i in idx]
    sizes = tr.loc[names, ["width", "height"]].to_numpy(np.float64)  # [n, 2]
    infos, warnings = [], []
    for start in range(0, len(idx), chunk):
        wh = sizes[start: start + chunk, None, :]  # [c, 1, 2]
        pts = labels_to_points(table.points[idx[start: start + chunk]]).astype(np.float64)  # [c, K, 2] continuous
        far = ((pts < -FAR_OUTSIDE * wh) | (pts > (1 + FAR_OUTSIDE) * wh)).any(axis=2)  # [c, K]
        out = ((pts < 0) | (pts > wh)).any(axis=2) & ~far  # [c, K] outside, but not far
        for r in np.flatnonzero(out.any(axis=1) & ~far.any(axis=1)):
            name = names[start + r]
            infos.append((prefix + name, line_of.get(name), "points_outside",
                          f"{int(out[r].sum())} of {table.num_points} points outside the {int(wh[r, 0, 0])}x"
                          f"{int(wh[r, 0, 1])} image, within {FAR_OUTSIDE:.0%} of its size (a face cut by the frame)"))
        for r in np.flatnonzero(far.any(axis=1)):
            name, ks = names[start + r], np.flatnonzero(far[r])
            # the farthest point, by how far beyond the image it lies, in units of the image size
            over = np.maximum(-pts[r, ks] / wh[r], pts[r, ks] / wh[r] - 1).max(axis=1)
            kmax = ks[int(np.argmax(over))]
            x, y = points_to_labels(pts[r, kmax])  # as written in the file
            warnings.append((prefix + name, line_of.get(name), "points_far_outside",
                             f"{len(ks)} of {table.num_points} points more than {FAR_OUTSIDE:.0%} of the image "
                             f"size outside the {int(wh[r, 0, 0])}x{int(wh[r, 0, 1])} image (farthest: point "
                             f"{kmax} at ({x:g}, {y:g}))"))
    for a in infos:
        add("info", *a)
    for a in warnings:
        add("warning", *a)


# ------------------------------------------------------------------------------------------------- main entry
_ORDER = {s: i for i, s in enumerate(SEVERITIES)}


def _other_format(data_dir) -> bool:
    """Whether ``formats.detect_format`` finds another format than the contest's in ``data_dir`` (a folder where it
    finds none is checked as the contest's, which names every missing file)."""
    try:
        return formats.detect_format(data_dir) != "contest"
    except DataFormatError:
        return False


def _check_other_format(data_dir, data_format, report, add, probing, allow_links_outside) -> None:
    """A data folder in another format than the contest's (``formats``): its reader's checks (the first error is
    fatal: ``bad_labels``, its message names the file and line), then every labelled image as for the contest's
    (names relative to the reader's image folder)."""
    try:
        ds = formats.read_dataset(data_dir, data_format, allow_links_outside=allow_links_outside)
    except DataFormatError as e:
        add("fatal", os.path.basename(os.path.normpath(data_dir)), None, "bad_labels", str(e))
        return
    report.num_train, report.num_points = len(ds), ds.table.num_points
    if len(ds) < MIN_TRAIN_ROWS:
        add("fatal", ds.source, None, "too_few_rows", f"{len(ds)} labelled face(s); a train/validation split needs "
                                                      f"at least {MIN_TRAIN_ROWS}")
    uniq = list(dict.fromkeys(ds.table.names))  # a photo with several labelled faces is checked once
    line = dict(zip(ds.table.names, ds.table.lines.tolist()))
    jobs = [("train", n, line[n]) for n in uniq]
    check_images, num_workers, progress = probing
    probes = _probe_all(ds.root, jobs, check_images, num_workers, progress, flat=True)
    report.image_sizes = _image_findings(jobs, probes, add, prefix="")
    if len(report.image_sizes) and len(uniq) == len(ds):
        _check_point_ranges(ds.table, report.image_sizes, line, add, prefix="")


def validate_dataset(data_dir, check_images=True, progress: bool = False, num_workers: int = 0,
                     bad_rows: str = "error", allow_links_outside: bool = False,
                     data_format: str = "auto") -> ValidationReport:
    """Check a data folder and report every problem (nothing is dropped silently). A contest-format folder is
    checked table by table, row by row, as below; a folder in another format (``data_format``, detected when
    ``auto``: ``formats``) by its reader (the first error is fatal, named by file and line) and then every image.

    The tables are read by the loaders' own parsers (``tables.read_landmarks``, ``tables.read_groups``,
    ``tables.read_test_points``) in collect mode, so every row a loader would refuse is reported, with its file and
    line.

    Args:
        data_dir: folder with ``train/`` (``images/``, ``landmarks.csv``, optional ``groups.csv``) and ``test/``
            (``images/``, ``test_points.csv``).
        check_images: ``True`` (default, alias ``"header"``): read every listed image's header (size, mode,
            EXIF) and check its end marker, fully decoding only files without one (about 0.1 ms per image);
            ``"full"``: decode every image with ``load_image`` (about 1 ms per 200 px image); ``False``: only check
            that the image files exist and are not empty (no sizes, so no far-outside-point check).
        progress: show a tqdm progress bar over the images.
        num_workers: threads for the image checks (``0`` = in this thread).
        bad_rows: the policy training will use for bad ``landmarks.csv`` rows (``read_landmarks``): under
            ``"error"`` they are fatal, under ``"skip"`` warnings (the rows are dropped). File names that are not
            plain names are fatal under both.
        allow_links_outside: the parameter of that name: tables and images that are symbolic links resolving
            outside the data folder are read (an ``info`` each) instead of fatal (``link_outside``).
        data_format: the parameter of that name (``auto``, ``contest``, ``pts``, ``wflw``, ``coco``).
    Returns:
        ``ValidationReport``; call ``raise_if_fatal()`` to stop on fatal problems.
    Raises:
        FileNotFoundError: ``data_dir`` is not a folder.
        ValueError: a bad ``check_images`` or ``bad_rows`` value.
    """
    t0 = time.perf_counter()
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: data folder is missing")
    if check_images not in (True, False, "full", "header"):
        raise ValueError(f"check_images must be True, False or 'full', got {check_images!r}")
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    report = ValidationReport(data_dir=data_dir)

    def add(severity, file, line, kind, message):
        report.problems.append(Problem(severity, file, line, message, kind))

    if data_format not in ("auto", "contest") or (data_format == "auto" and _other_format(data_dir)):
        _check_other_format(data_dir, data_format, report, add, (check_images, num_workers, progress),
                            allow_links_outside)
        report.problems.sort(key=lambda p: (_ORDER[p.severity], p.file, p.line or 0))
        report.elapsed_s = time.perf_counter() - t0
        return report
    listing = _Listing(allow_links_outside)
    if allow_links_outside:
        _allowed_table_links(data_dir, add)
    table = _check_landmarks(data_dir, bad_rows, report, listing, add)
    _check_groups(data_dir, table, add, listing.named["train"], allow_links_outside)
    _check_test_points(data_dir, report, listing, add)
    jobs = _image_jobs(data_dir, listing, add)
    report.image_sizes = _image_findings(jobs, _probe_all(data_dir, jobs, check_images, num_workers, progress), add)
    if table is not None and len(table) and len(report.image_sizes):
        _check_point_ranges(table, report.image_sizes, dict(listing.rows["train"]), add)
    report.problems.sort(key=lambda p: (_ORDER[p.severity], p.file, p.line or 0))
    report.elapsed_s = time.perf_counter() - t0
    return report


def main(argv=None) -> int:
    """Command line entry: print the report; return 1 when there is a fatal problem, else 0."""
    ap = argparse.ArgumentParser(prog="landmarks validate",
                                 description="Check a data folder: the contest's (train/, test/) or another format "
                                             "(docs/data.md).")
    ap.add_argument("data_dir")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="decode every image (slower)")
    g.add_argument("--no-images", action="store_true", help="only check that image files exist")
    ap.add_argument("--workers", type=int, default=0, help="threads for the image checks")
    ap.add_argument("--bad-rows", choices=("error", "skip"), default="error",
                    help="policy for bad landmarks rows: fatal under 'error', warning under 'skip'")
    ap.add_argument("--allow-links-outside", action="store_true",
                    help="read tables and images that are symbolic links resolving outside the data folder "
                         "(parameter allow_links_outside; refused by default)")
    ap.add_argument("--data-format", choices=("auto", *formats.FORMATS), default="auto",
                    help="the folder's format (parameter data_format; auto: detected)")
    ap.add_argument("--show", type=int, default=20, help="how many problems to print")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        rep = validate_dataset(args.data_dir, check_images="full" if args.full else not args.no_images,
                               progress=args.progress, num_workers=args.workers, bad_rows=args.bad_rows,
                               allow_links_outside=args.allow_links_outside, data_format=args.data_format)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a vanished folder: one line naming the path
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(rep.summary(max_problems=args.show))
    return 0 if rep.ok else 1
