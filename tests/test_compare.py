"""Comparing two runs: parameter/metric table and nbdime diffs of executed notebooks."""

import json
import subprocess
import sys

import nbformat
import pandas as pd
import pytest
import yaml

from landmarks_lib.runs import compare


def _run(path, lr, mse, source, minutes=(1.0, 2.0), capability="AVX2"):
    (path / "notebooks").mkdir(parents=True)
    (path / "run_info.json").write_text(json.dumps({
        "git_commit": "1af5be3", "python": "3.11.7", "platform": f"Linux-{capability}",
        "cpu": {"model": "Intel(R) Xeon(R) Processor", "capability": capability, "cpus": 2},
        "packages": {"torch": "2.14.1", "onnxruntime": "1.24.1"}}))
    (path / "params.yaml").write_text(yaml.safe_dump({"lr": lr, "seed": 0, "run_dir": str(path),
                                                      "cache_dir": str(path / "cache")}))
    (path / "metrics.json").write_text(json.dumps({"val_mse": mse}))
    (path / "history.csv").write_text("epoch,stage,train_loss,val_mse,lr,time_s\n"
                                      f"1,localizer,1.0,9.0,0.001,{60 * minutes[0]}\n"
                                      f"1,train,1.0,5.0,0.001,{60 * minutes[1]}\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbformat.write(nb, str(path / "notebooks" / "02_train.ipynb"))


def test_table_shows_differing_params_and_metrics(tmp_path):
    _run(tmp_path / "a", 0.001, 9.5, "x = 1")
    _run(tmp_path / "b", 0.0003, 7.25, "x = 2")
    df = compare.compare_runs(tmp_path / "a", tmp_path / "b")
    assert df.loc[("param", "lr"), "a"] == 0.001 and df.loc[("param", "lr"), "b"] == 0.0003
    assert ("param", "seed") not in df.index  # equal parameters are left out by default
    assert df.loc[("metric", "val_mse"), "b"] == 7.25 and not df.loc[("metric", "val_mse"), "same"]
    assert ("param", "seed") in compare.compare_runs(tmp_path / "a", tmp_path / "b", all_params=True).index
    assert ("param", "run_dir") not in df.index and ("param", "cache_dir") not in df.index  # a run's own folders
    assert df.loc[("train_min", "train"), "a"] == 2.0 and df.loc[("train_min", "total"), "b"] == 3.0
    assert not [k for k in df.index if k[0] == "run_info"]  # the same commit, CPU and packages: nothing shown
    text = compare.format_table(df, "a" * 50, "b" * 50, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "bbbbb" in text.splitlines()[0] and "0.0003" in text  # the second run always shows
    with pytest.raises(FileNotFoundError, match="no such run"):
        compare.compare_runs(tmp_path / "a", tmp_path / "zzz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        compare.compare_runs(tmp_path / "a", tmp_path / "empty")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "zzz")]) == 2


def test_table_shows_what_produced_the_runs_where_it_differs(tmp_path):
    """Same parameters, different numbers: the CPU's instruction set (or the commit, or a package) says why."""
    _run(tmp_path / "a", 0.001, 3.062, "x = 1", capability="AVX2")
    _run(tmp_path / "b", 0.001, 3.106, "x = 1", capability="AVX512")
    df = compare.compare_runs(tmp_path / "a", tmp_path / "b")
    infos = [k for k in df.index if k[0] == "run_info"]
    assert infos == [("run_info", "cpu.capability")]  # platform is not compared; equal entries are left out
    assert (df.loc[infos[0], "a"], df.loc[infos[0], "b"]) == ("AVX2", "AVX512")
    every = compare.compare_runs(tmp_path / "a", tmp_path / "b", all_params=True)
    assert every.loc[("run_info", "packages.torch"), "same"] and ("run_info", "cpu.model") in every.index
    (tmp_path / "b" / "run_info.json").unlink()  # an older run without one: its entries show as missing
    gone = compare.compare_runs(tmp_path / "a", tmp_path / "b")
    assert gone.loc[("run_info", "git_commit"), "a"] == "1af5be3" and pd.isna(gone.loc[("run_info", "git_commit"), "b"])


def test_cli_diffs_executed_notebooks_with_nbdime(tmp_path):
    _run(tmp_path / "a", 0.001, 9.5, "x = 1")
    _run(tmp_path / "b", 0.001, 9.5, "x = 2")
    assert len(compare.notebook_pairs(tmp_path / "a", tmp_path / "b")) == 1
    out = subprocess.run([sys.executable, "-m", "landmarks_lib.compare", str(tmp_path / "a"), str(tmp_path / "b"),
                          "--diff"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "02_train.ipynb" in out.stdout
    assert "x = 1" in out.stdout and "x = 2" in out.stdout  # nbdime shows the changed source lines
    assert "--ignore-metadata" in compare.nbdiff_command("a", "b")  # no widget state or timing metadata
