"""Checks on the real stand-in dataset (``make test-standin``; skipped when ../shared is absent)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from landmarks_lib.data import symmetry, tables, validate
from landmarks_lib.training import engine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "thousand-standin")
pytestmark = [pytest.mark.standin,
              pytest.mark.skipif(not os.path.isdir(STANDIN), reason="../shared/datasets/thousand-standin absent")]


def test_standin_tables_parse_and_validate():
    table = tables.read_landmarks(os.path.join(STANDIN, "train", "landmarks.csv"))
    assert table.points.shape == (4659, 971, 2) and table.points.dtype == np.int16
    tp = tables.read_test_points(os.path.join(STANDIN, "test", "test_points.csv"), num_points=971)
    assert tp.indices.shape == (1110, 30)
    report = validate.validate_dataset(STANDIN)
    assert report.ok and report.num_points == 971


def test_standin_mirror_permutation_and_group_split():
    table = tables.read_landmarks(os.path.join(STANDIN, "train", "landmarks.csv"))
    pts = np.asarray(table.points[:2000], np.float32)
    perm = symmetry.estimate_mirror_permutation(pts)
    assert np.array_equal(perm[perm], np.arange(971))
    # the refitted reflection maps the (tilted) mean face onto itself within 2 % of its radius, every point paired
    assert symmetry.mirror_error(pts, perm) < 0.02
    assert len(symmetry.mirror_unmatched(pts, perm)) == 0
    # and so from another sample of shapes (a single start of the pairing settled on a wrong axis for this one)
    other = np.asarray(table.points[np.sort(np.random.default_rng(0).choice(len(table.names), 2000, replace=False))],
                       np.float32)
    perm2 = symmetry.estimate_mirror_permutation(other)
    assert symmetry.mirror_error(other, perm2) < 0.02 and len(symmetry.mirror_unmatched(other, perm2)) == 0
    tr, va, mode = engine.split_indices(table.names, STANDIN, 0.1, seed=0)
    assert mode == "groups" and 0.08 < len(va) / len(table.names) < 0.13


def test_cpu_profile_learns_the_standin(standin_dir, tmp_path):
    """``params/cpu.yaml`` through the whole pipeline on the stand-in (15+ minutes on 2 cores; README, "Results":
    validation MSE 3.11): the model must reach a validation MSE of at most 5 px^2."""
    run_dir = tmp_path / "standin-cpu"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    torch_home = os.path.join(REPO, "..", "shared", "torch_home")  # the ImageNet weights offline, as `make` sets it
    if "TORCH_HOME" not in env and os.path.isdir(torch_home):
        env["TORCH_HOME"] = os.path.abspath(torch_home)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "landmarks_lib.pipeline", "--data-dir", standin_dir,
                           "--params", os.path.join(REPO, "params", "cpu.yaml"), "--run-dir", str(run_dir),
                           "-p", "cache_dir", str(tmp_path / "cache"), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3 * 3600)
    seconds = time.time() - t0
    assert proc.returncode == 0, f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    m = json.loads((run_dir / "metrics.json").read_text())
    print(f"cpu.yaml on the stand-in: {seconds / 60:.1f} min, val_mse {m['val_mse']:.3f}, val_nme {m['val_nme']:.3f} %")
    assert m["n_val"] > 0 and np.isfinite(m["val_nme"])
    assert m["val_mse"] <= 5.0, m
