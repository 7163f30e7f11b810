"""Check a contest-format data folder before EDA or training, and report every problem found.

``validate_dataset(data_dir)`` reads ``train/landmarks.csv``, the optional ``train/groups.csv``,
``test/test_points.csv`` and the image headers, and returns a ``ValidationReport``: a list of ``Problem`` s, each
with a severity, the file (relative to ``data_dir``), the 1-based line in the CSV that lists it (header = line 1)
and a message. Severities:

- ``fatal``: training or prediction would stop or be wrong: ``landmarks.csv`` missing or with a bad header; rows
  with a wrong number of fields, empty/NaN/non-numeric coordinates or an empty file name (under the default
  ``bad_rows="error"`` policy; under ``"skip"`` they are warnings, the rows being dropped); duplicate file names;
  listed images that are missing, empty (0 bytes), truncated or not images; ``test_points.csv`` missing, malformed,
  with malformed lists, out-of-range indices or lists of different lengths; ``groups.csv`` malformed.
- ``warning``: points more than 25% of the image size beyond an edge; image modes that ``images.load_image``
  converts (grayscale, 1-bit, palette, alpha, CMYK, 16-bit); an EXIF orientation other than 1 (ignored by policy:
  pixels are used as stored); ``groups.csv`` names that do not match the training rows.
- ``info``: tiny images (shorter side under 32 px; upscaling them is the normal path); files in an image folder
  that no CSV lists; an image stored in another format than its extension says; points outside the image but
  within 25% of its size (a face cut by the frame; images with points far outside get the warning instead).

Image checks read headers only (``check_images=True``): size, mode, EXIF, plus a look at the last bytes of the file
for the JPEG/PNG end marker; a file without one is fully decoded to tell a truncated file from a merely padded one.
``check_images="full"`` decodes every image with ``load_image``; ``False`` checks only that the files exist.

Command line: ``python -m landmarks_lib.validate DATA_DIR [--full] [--no-images] [--workers N]``; prints the
report and exits with 1 when there is a fatal problem.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .images import ImageError, load_image
from .io import DataFormatError, labels_to_points, parse_index_list, points_to_labels, read_landmarks

SEVERITIES = ("fatal", "warning", "info")
TINY_SIDE = 32  # px: shorter side below this is reported as info
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
        with Image.open(path) as im:
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
    if full or not _tail_ok(path, out["format"]):
        try:
            load_image(path)
        except ImageError as e:
            kind = "truncated_image" if "truncated" in str(e) else "corrupt_image"
            out["error"] = (kind, f"cannot be decoded: {str(e).split(': ', 1)[-1]}")
    return out


def _list_dir(d) -> list:
    try:
        return sorted(e.name for e in os.scandir(d) if e.is_file())
    except FileNotFoundError:
        return []


def _row_kind(reason: str) -> str:
    """Kind of a row skipped by ``read_landmarks`` from its reason text."""
    r = reason.lower()
    if "duplicate" in r:
        return "duplicate_name"
    if "empty file_name" in r:
        return "empty_name"
    if "fields" in r:
        return "wrong_field_count"
    if "nan" in r or "numeric" in r or "empty" in r or "infinite" in r:
        return "bad_coordinates"
    return "bad_row"


def _first_lines(path) -> dict:
    """``{first field: first line}`` for every line of a tab-separated file (line 1 = header)."""
    out = {}
    with open(path, "r", newline="", encoding="utf-8-sig", errors="replace") as f:
        for i, ln in enumerate(f, start=1):
            name = ln.partition("\t")[0].rstrip("\r\n")
            out.setdefault(name, i)
    return out


# ------------------------------------------------------------------------------------------------- CSV checks
def _check_test_points(path, rel, num_points, add):
    """Check ``test_points.csv`` row by row (all problems, not just the first); returns ``[(name, line)]``."""
    rows = []
    seen = {}
    length = None  # (number of indices, line) of the first good row
    with open(path, "r", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["file_name", "point_index_list"]:
                add("fatal", rel, 1, "bad_header",
                    f"expected the columns ['file_name', 'point_index_list'], got {header}")
                return rows
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2:
                    add("fatal", rel, line, "wrong_field_count", f"{len(row)} tab-separated fields, expected 2")
                    continue
                name, text = row
                if not name.strip():
                    add("fatal", rel, line, "empty_name", "empty file_name")
                    continue
                if name in seen:
                    add("fatal", rel, line, "duplicate_name",
                        f"duplicate file_name {name!r} (first on line {seen[name]})")
                    continue
                seen[name] = line
                rows.append((name, line))
                try:
                    idx = parse_index_list(text, f"{rel}: line {line} ({name})", None)
                except DataFormatError as e:
                    kind = "index_out_of_range" if "out of range" in str(e) else "bad_index_list"
                    add("fatal", rel, line, kind, f"{name}: {str(e).split('): ', 1)[-1]}")
                    continue
                if num_points:
                    bad = [i for i in idx if i >= num_points]
                    if bad:
                        add("fatal", rel, line, "index_out_of_range",
                            f"{name}: point index {bad[0]} out of range [0, {num_points})"
                            + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
                        continue
                if length is None:
                    length = (len(idx), line)
                elif len(idx) != length[0]:
                    add("fatal", rel, line, "inconsistent_list_length",
                        f"{name}: {len(idx)} indices, but line {length[1]} has {length[0]}")
        except (csv.Error, UnicodeDecodeError) as e:
            add("fatal", rel, max(reader.line_num, 1), "unreadable_csv",
                f"not a readable text table ({type(e).__name__}: {e})")
    return rows


def _check_groups(path, rel, train_names, add):
    """Check the optional ``groups.csv``: format (fatal) and agreement with the training rows (warnings)."""
    seen = {}
    with open(path, "r", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["file_name", "group"]:
                add("fatal", rel, 1, "bad_header", f"expected the columns ['file_name', 'group'], got {header}")
                return
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2:
                    add("fatal", rel, line, "wrong_field_count", f"{len(row)} tab-separated fields, expected 2")
                    continue
                name, group = row
                if not name.strip() or not group.strip():
                    add("fatal", rel, line, "empty_field", f"empty file_name or group in {row}")
                    continue
                if name in seen:
                    add("fatal", rel, line, "duplicate_name",
                        f"duplicate file_name {name!r} (first on line {seen[name]})")
                    continue
                seen[name] = line
                if train_names is not None and name not in train_names:
                    add("warning", rel, line, "group_unknown_image", f"{name} is not a training row")
        except (csv.Error, UnicodeDecodeError) as e:
            add("fatal", rel, max(reader.line_num, 1), "unreadable_csv",
                f"not a readable text table ({type(e).__name__}: {e})")
    if train_names is not None:
        for name in train_names:
            if name not in seen:
                add("warning", rel, None, "image_without_group",
                    f"training image {name} has no group (validation split by groups cannot place it)")


# ------------------------------------------------------------------------------------------------- main entry
def validate_dataset(data_dir, check_images=True, progress: bool = False, num_workers: int = 0,
                     bad_rows: str = "error") -> ValidationReport:
    """Check a contest-format folder and report every problem (nothing is dropped silently).

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
            ``"error"`` they are fatal, under ``"skip"`` warnings (the rows are dropped).
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
    problems = report.problems

    def add(severity, file, line, kind, message):
        problems.append(Problem(severity, file, line, message, kind))

    # ---- train/landmarks.csv
    lm_rel = "train/landmarks.csv"
    lm_path = os.path.join(data_dir, lm_rel)
    table = None
    listed = {"train": [], "test": []}  # (name, line) of rows whose images are checked
    also_listed = {"train": set(), "test": set()}  # names in bad rows: their images are not "unlisted"
    if not os.path.exists(lm_path):
        add("fatal", lm_rel, None, "landmarks_missing", "landmarks file is missing")
    else:
        try:
            table = read_landmarks(lm_path, bad_rows="skip")
        except DataFormatError as e:
            msg = str(e)[len(lm_path) + 2:] if str(e).startswith(lm_path + ": ") else str(e)
            m = re.match(r"line (\d+)(?: \([^)]*\))?: (.*)", msg, re.S)
            line, msg = (int(m.group(1)), m.group(2)) if m else (None, msg)
            add("fatal", lm_rel, line, "bad_header" if line == 1 else "unreadable_csv", msg)
        if table is not None:
            row_sev = "fatal" if bad_rows == "error" else "warning"
            for line, name, reason in table.skipped:
                if name:
                    also_listed["train"].add(name)
                dropped = "" if bad_rows == "error" else " (row dropped under bad_rows='skip')"
                add(row_sev, lm_rel, line, _row_kind(reason), f"{name or '<empty>'}: {reason}{dropped}")
            report.num_train = len(table)
            report.num_points = table.num_points
            lines = _first_lines(lm_path)
            listed["train"] = [(n, lines.get(n)) for n in table.names]

    # ---- train/groups.csv (optional)
    g_rel = "train/groups.csv"
    if os.path.exists(os.path.join(data_dir, g_rel)):
        _check_groups(os.path.join(data_dir, g_rel), g_rel, set(table.names) if table is not None else None, add)

    # ---- test/test_points.csv
    tp_rel = "test/test_points.csv"
    tp_path = os.path.join(data_dir, tp_rel)
    if not os.path.exists(tp_path):
        add("fatal", tp_rel, None, "test_points_missing", "test points file is missing")
    else:
        if not report.num_points:
            add("warning", tp_rel, None, "range_unchecked",
                "point indices not checked against K (the landmarks header could not be read)")
        listed["test"] = _check_test_points(tp_path, tp_rel, report.num_points, add)
        report.num_test = len(listed["test"])

    # ---- images
    jobs = []  # (split, name, line)
    for split in ("train", "test"):
        img_dir = os.path.join(data_dir, split, "images")
        if listed[split] and not os.path.isdir(img_dir):
            add("fatal", f"{split}/images", None, "images_folder_missing",
                f"image folder is missing ({len(listed[split])} listed images)")
            continue
        names_in_dir = _list_dir(img_dir)
        wanted = {n for n, _ in listed[split]} | also_listed[split]
        for n in names_in_dir:
            if n not in wanted:
                add("info", f"{split}/images/{n}", None, "unlisted_image",
                    f"in the folder but not listed in {lm_rel if split == 'train' else tp_rel}")
        jobs.extend((split, n, line) for n, line in listed[split])

    probes = {}
    if jobs:
        full = check_images == "full"

        def one(job):
            split, name, _ = job
            path = os.path.join(data_dir, split, "images", name)
            if check_images is False:
                if not os.path.exists(path):
                    return {"error": ("missing_image", "listed but missing")}
                if os.path.getsize(path) == 0:
                    return {"error": ("empty_image", "empty file (0 bytes)")}
                return {"error": None, "width": None}
            return _probe(path, full)

        it = None
        if num_workers and num_workers > 0:
            pool = ThreadPoolExecutor(num_workers)
            it = pool.map(one, jobs)
        else:
            pool = None
            it = map(one, jobs)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, total=len(jobs), desc="checking images")
        try:
            for job, res in zip(jobs, it):
                probes[job[:2]] = res
        finally:
            if pool is not None:
                pool.shutdown()

    sizes = []
    for (split, name, line) in jobs:
        res = probes[(split, name)]
        rel = f"{split}/images/{name}"
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
    report.image_sizes = pd.DataFrame(sizes, columns=["name", "width", "height", "split", "mode", "format"])

    # ---- points far outside their image
    if table is not None and len(table) and len(report.image_sizes):
        tr = report.image_sizes[report.image_sizes["split"] == "train"].set_index("name")
        idx = np.array([i for i, n in enumerate(table.names) if n in tr.index], dtype=np.int64)
        if len(idx):
            names = [table.names[i] for i in idx]
            wh = tr.loc[names, ["width", "height"]].to_numpy(np.float64)[:, None, :]  # [n, 1, 2]
            pts = labels_to_points(table.points[idx]).astype(np.float64)  # [n, K, 2] continuous pixels
            far = ((pts < -FAR_OUTSIDE * wh) | (pts > (1 + FAR_OUTSIDE) * wh)).any(axis=2)  # [n, K]
            out = ((pts < 0) | (pts > wh)).any(axis=2) & ~far  # [n, K] outside, but not far
            line_of = dict(listed["train"])
            for r in np.flatnonzero(out.any(axis=1) & ~far.any(axis=1)):
                add("info", f"train/images/{names[r]}", line_of.get(names[r]), "points_outside",
                    f"{int(out[r].sum())} of {table.num_points} points outside the {int(wh[r, 0, 0])}x"
                    f"{int(wh[r, 0, 1])} image, within {FAR_OUTSIDE:.0%} of its size (a face cut by the frame)")
            for r in np.flatnonzero(far.any(axis=1)):
                name = names[r]
                ks = np.flatnonzero(far[r])
                # the farthest point, by how far beyond the image it lies, in units of the image size
                over = np.maximum(-pts[r, ks] / wh[r], pts[r, ks] / wh[r] - 1).max(axis=1)
                kmax = ks[int(np.argmax(over))]
                x, y = points_to_labels(pts[r, kmax])  # as written in the file
                add("warning", f"train/images/{name}", line_of.get(name), "points_far_outside",
                    f"{len(ks)} of {table.num_points} points more than {FAR_OUTSIDE:.0%} of the image size "
                    f"outside the {int(wh[r, 0, 0])}x{int(wh[r, 0, 1])} image (farthest: point {kmax} at "
                    f"({x:g}, {y:g}))")

    order = {s: i for i, s in enumerate(SEVERITIES)}
    problems.sort(key=lambda p: (order[p.severity], p.file, p.line or 0))
    report.elapsed_s = time.perf_counter() - t0
    return report


def main(argv=None) -> int:
    """Command line entry: print the report; return 1 when there is a fatal problem, else 0."""
    ap = argparse.ArgumentParser(prog="python -m landmarks_lib.validate",
                                 description="Check a contest-format data folder (train/, test/).")
    ap.add_argument("data_dir")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="decode every image (slower)")
    g.add_argument("--no-images", action="store_true", help="only check that image files exist")
    ap.add_argument("--workers", type=int, default=0, help="threads for the image checks")
    ap.add_argument("--bad-rows", choices=("error", "skip"), default="error",
                    help="policy for bad landmarks rows: fatal under 'error', warning under 'skip'")
    ap.add_argument("--show", type=int, default=20, help="how many problems to print")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        rep = validate_dataset(args.data_dir, check_images="full" if args.full else not args.no_images,
                               progress=args.progress, num_workers=args.workers, bad_rows=args.bad_rows)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.summary(max_problems=args.show))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
