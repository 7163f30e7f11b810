"""Comparing runs: a table of their parameters and metrics, and nbdime diffs of their executed notebooks.

``python -m landmarks_lib.compare RUN_A RUN_B [--all-params] [--diff] [--web] [--plot FILE.png]`` prints the
parameters that differ (all with ``--all-params``; the run's own folders are left out), what produced each run where
it differs (``run_info.json``: commit, Python, CPU model and instruction set, package versions; all of them with
``--all-params``), the metrics of ``metrics.json`` and the training minutes per stage side by side, in a table that
fits the terminal; ``--plot`` draws both runs' training curves and CEDs in one figure; ``--diff`` shows nbdime's
diff of each executed notebook pair (``<run>/notebooks/NN_name.ipynb``) in the terminal, sources and outputs only
(no widget state or timing metadata), ``--web`` opens nbdime's web diff.
With nbdime's git integration enabled (``make venv`` runs ``make git-nbdime`` in this repository),
``git diff`` of notebooks is also shown cell by cell.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pandas as pd

from ..core.params import read_values, resolve, same_value
from ..evaluation import metrics
from ..reporting import viz
from ..training import engine
from .run_folder import RunFolder
from .workflow import resolve_data_dir

INFO_KEYS = ("git_commit", "python", "cpu", "packages")  # run_info.json's entries that can explain a difference


def _params(run: RunFolder) -> dict:
    """A run's ``params.yaml``: known names typed by the spec, names an earlier version used kept as written (an
    old run can be compared with a new one); empty when missing."""
    path = run.file("params.yaml")
    return read_values(path) if os.path.exists(path) else {}


def _run_info(run: RunFolder) -> dict:
    """A run's ``run_info.json`` entries of ``INFO_KEYS``, nested ones flattened (``cpu.capability``,
    ``packages.torch``); empty when missing (runs of earlier versions lack some)."""
    info = run.read_info()
    out = {}
    for k in INFO_KEYS:
        v = info.get(k)
        if isinstance(v, dict):
            out.update({f"{k}.{sub}": sv for sub, sv in v.items()})
        elif k in info:
            out[k] = v
    return out


def train_minutes(run: RunFolder) -> dict:
    """Minutes of training per stage (``history.csv``'s last ``time_s`` of each) and their total."""
    if not os.path.exists(run.file("history.csv")):
        return {}
    h = run.read_history()
    out = {s: round(float(g["time_s"].max()) / 60, 2) for s, g in h.groupby("stage", sort=False)}
    out["total"] = round(sum(out.values()), 2)
    return out


def compare_runs(run_a, run_b, all_params: bool = False) -> pd.DataFrame:
    """Side-by-side table of two runs.

    Returns:
        a DataFrame indexed by ``(kind, name)`` (kind ``param`` from ``params.yaml``, ``run_info`` from
        ``run_info.json``: commit, Python, ``cpu.*``, ``packages.*``; ``metric`` from ``metrics.json``,
        ``train_min`` from ``history.csv``: minutes per stage) with columns ``a``, ``b`` and ``same``; equal
        parameters and ``run_info`` entries are left out unless ``all_params``, and so are the folders of a run
        (``run_dir``, ``cache_dir``; ``data_dir`` counts by the folder it names).
    Raises:
        FileNotFoundError: a run folder that does not exist.
    """
    for r in (run_a, run_b):
        if not os.path.isdir(r):
            raise FileNotFoundError(f"{r}: no such run folder")
        if not RunFolder(r).is_run() and not os.path.isfile(os.path.join(r, "params.yaml")):
            raise FileNotFoundError(f"{r}: not a run folder (no run-folder marker and no params.yaml)")
    rows = []
    a, b = RunFolder(run_a), RunFolder(run_b)
    pa, pb = _params(a), _params(b)
    for k in sorted(set(pa) | set(pb)):
        same = same_value(k, pa.get(k), pb.get(k))
        if all_params or (not same and k not in ("run_dir", "cache_dir")):
            rows.append(("param", k, pa.get(k), pb.get(k), same))
    ia, ib = _run_info(a), _run_info(b)
    for k in sorted(set(ia) | set(ib)):
        if all_params or ia.get(k) != ib.get(k):
            rows.append(("run_info", k, ia.get(k), ib.get(k), ia.get(k) == ib.get(k)))
    ma, mb = a.read_metrics(), b.read_metrics()
    for k in sorted(set(ma) | set(mb)):
        rows.append(("metric", k, ma.get(k), mb.get(k), ma.get(k) == mb.get(k)))
    ta, tb = train_minutes(a), train_minutes(b)
    for k in list(dict.fromkeys([*ta, *tb])):
        rows.append(("train_min", k, ta.get(k), tb.get(k), ta.get(k) == tb.get(k)))
    df = pd.DataFrame(rows, columns=["kind", "name", "a", "b", "same"])
    return df.set_index(["kind", "name"])


def format_table(df: pd.DataFrame, name_a: str, name_b: str, width: int = 80) -> str:
    """``compare_runs``' table as text that fits ``width`` columns: ``kind``, ``name`` and both runs' values, long
    values shortened with ``...`` so the second run always shows."""
    flat = df.reset_index()
    name_w = max([len(f"{k} {n}") for k, n in zip(flat["kind"], flat["name"])] + [4])
    col = max(8, (width - name_w - 4) // 2)

    def cell(v):
        t = f"{v:.4g}" if isinstance(v, float) else str(v)
        return t if len(t) <= col else t[: col - 3] + "..."

    lines = [f"{'':<{name_w}}  {cell(name_a):<{col}} {cell(name_b):<{col}}".rstrip()]
    for k, n, va, vb in zip(flat["kind"], flat["name"], flat["a"], flat["b"]):
        lines.append(f"{k + ' ' + n:<{name_w}}  {cell(va):<{col}} {cell(vb):<{col}}".rstrip())
    return "\n".join(lines)


def notebook_pairs(run_a, run_b) -> list:
    """``[(path_a, path_b)]`` of executed notebooks present in both runs, by file name."""
    da, db = os.path.join(run_a, "notebooks"), os.path.join(run_b, "notebooks")
    if not (os.path.isdir(da) and os.path.isdir(db)):
        return []
    common = sorted(set(os.listdir(da)) & set(os.listdir(db)))
    return [(os.path.join(da, n), os.path.join(db, n)) for n in common if n.endswith(".ipynb")]


# nbdime: sources and outputs only; notebook and cell metadata (widget state, papermill's timings), cell ids and
# execution counts are left out, so the diff shows what changed in the code and the results.
NBDIFF_IGNORE = ("--ignore-metadata", "--ignore-id", "--ignore-details")


def nbdiff_command(path_a, path_b, web: bool = False) -> list:
    """The nbdime command line for one pair (``nbdiff`` or ``nbdiff-web``, ignoring ``NBDIFF_IGNORE``), preferring
    the executables beside this Python."""
    exe = "nbdiff-web" if web else "nbdiff"
    found = shutil.which(exe, path=os.path.dirname(sys.executable)) or shutil.which(exe)
    return [found or exe, *NBDIFF_IGNORE, path_a, path_b]


def _val_nme(run: RunFolder):
    """Per-image validation NME of a run (its ``val_predictions.npy`` against its data's labels), or None."""

    if not os.path.exists(run.file("val_predictions.npy")):
        return None
    p = resolve(run.path)
    data = engine.load_train_data(dict(p, data_dir=resolve_data_dir(p)), progress=False)
    return metrics.per_image_nme(run.read_predictions("val"), data.points(data.val_idx))


def plot_runs(runs, out_path) -> str:
    """Training curves and CEDs of ``runs`` (run folders) overlaid in one figure, saved to ``out_path``."""

    folders = [RunFolder(r) for r in runs]
    hist = {f.name: f.read_history() for f in folders if os.path.exists(f.file("history.csv"))}
    nmes = {f.name: v for f in folders if (v := _val_nme(f)) is not None}
    return str(viz.save_figure(viz.plot_runs(hist, nmes), out_path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="landmarks compare", description=__doc__.split("\n")[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--all-params", action="store_true", help="list equal parameters and run_info entries too")
    ap.add_argument("--diff", action="store_true", help="nbdime diff of each executed notebook pair")
    ap.add_argument("--web", action="store_true", help="nbdime web diff (opens a browser)")
    ap.add_argument("--plot", metavar="FILE.png", help="training curves and CEDs of both runs in one figure")
    a = ap.parse_args(argv)
    try:
        df = compare_runs(a.run_a, a.run_b, a.all_params)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(df, RunFolder(a.run_a).name, RunFolder(a.run_b).name, shutil.get_terminal_size().columns))
    if a.plot:
        print(f"figure: {plot_runs([a.run_a, a.run_b], a.plot)}")
    rc = 0
    if a.diff or a.web:
        for pa, pb in notebook_pairs(a.run_a, a.run_b):
            print(f"\n=== {os.path.basename(pa)}", flush=True)
            rc |= subprocess.run(nbdiff_command(pa, pb, a.web)).returncode
    return rc
