"""Comparing runs: a table of their parameters and metrics, and nbdime diffs of their executed notebooks.

``python -m landmarks_lib.compare RUN_A RUN_B [--all-params] [--diff] [--web]`` prints the parameters that differ
(all with ``--all-params``) and the metrics of ``metrics.json`` side by side; ``--diff`` then shows nbdime's diff of
each executed notebook pair (``<run>/notebooks/NN_name.ipynb``) in the terminal, ``--web`` opens nbdime's web diff.
With nbdime's git integration enabled (``make .venv`` runs ``nbdime config-git --enable`` in this repository),
``git diff`` of notebooks is also shown cell by cell.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pandas as pd

from .params import load_profile
from .run import RunFolder


def _params(run: RunFolder) -> dict:
    """A run's ``params.yaml`` typed by the spec (empty when missing)."""
    path = run.file("params.yaml")
    return load_profile(path) if os.path.exists(path) else {}


def compare_runs(run_a, run_b, all_params: bool = False) -> pd.DataFrame:
    """Side-by-side table of two runs.

    Returns:
        a DataFrame indexed by ``(kind, name)`` (kind ``param`` from ``params.yaml`` or ``metric`` from
        ``metrics.json``) with columns ``a``, ``b`` and ``same``; parameters that are equal are left out unless
        ``all_params``.
    Raises:
        FileNotFoundError: a run folder that does not exist.
    """
    for r in (run_a, run_b):
        if not os.path.isdir(r):
            raise FileNotFoundError(f"{r}: no such run folder")
    rows = []
    a, b = RunFolder(run_a), RunFolder(run_b)
    pa, pb = _params(a), _params(b)
    for k in sorted(set(pa) | set(pb)):
        same = pa.get(k) == pb.get(k)
        if all_params or not same:
            rows.append(("param", k, pa.get(k), pb.get(k), same))
    ma, mb = a.read_metrics(), b.read_metrics()
    for k in sorted(set(ma) | set(mb)):
        rows.append(("metric", k, ma.get(k), mb.get(k), ma.get(k) == mb.get(k)))
    df = pd.DataFrame(rows, columns=["kind", "name", "a", "b", "same"])
    return df.set_index(["kind", "name"])


def notebook_pairs(run_a, run_b) -> list:
    """``[(path_a, path_b)]`` of executed notebooks present in both runs, by file name."""
    da, db = os.path.join(run_a, "notebooks"), os.path.join(run_b, "notebooks")
    if not (os.path.isdir(da) and os.path.isdir(db)):
        return []
    common = sorted(set(os.listdir(da)) & set(os.listdir(db)))
    return [(os.path.join(da, n), os.path.join(db, n)) for n in common if n.endswith(".ipynb")]


def nbdiff_command(path_a, path_b, web: bool = False) -> list:
    """The nbdime command line for one pair (``nbdiff`` or ``nbdiff-web``), preferring the executables beside this
    Python."""
    exe = "nbdiff-web" if web else "nbdiff"
    found = shutil.which(exe, path=os.path.dirname(sys.executable)) or shutil.which(exe)
    return [found or exe, path_a, path_b]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m landmarks_lib.compare", description=__doc__.split("\n")[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--all-params", action="store_true", help="list equal parameters too")
    ap.add_argument("--diff", action="store_true", help="nbdime diff of each executed notebook pair")
    ap.add_argument("--web", action="store_true", help="nbdime web diff (opens a browser)")
    a = ap.parse_args(argv)
    df = compare_runs(a.run_a, a.run_b, a.all_params)
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 60, "display.width", 160):
        print(df.rename(columns={"a": os.path.basename(os.path.normpath(a.run_a)),
                                 "b": os.path.basename(os.path.normpath(a.run_b))}))
    rc = 0
    if a.diff or a.web:
        for pa, pb in notebook_pairs(a.run_a, a.run_b):
            print(f"\n=== {os.path.basename(pa)}", flush=True)
            rc |= subprocess.run(nbdiff_command(pa, pb, a.web)).returncode
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
