"""The runner (``python -m landmarks_lib.pipeline``) end to end on a tiny synthetic set, the resume rule, the run-folder
rules (marker, manifest, lock, refuse / --resume / --retrain / --force / failing cell / out-of-sync pair), and the
small library helpers the notebooks call."""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from floats import assert_close

from landmarks_lib.core import geometry
from landmarks_lib.core import params as lp
from landmarks_lib.core.files import MARKER
from landmarks_lib.data import symmetry, tables
from landmarks_lib.evaluation import eda, submission
from landmarks_lib.inference import drawing
from landmarks_lib.reporting import viz
from landmarks_lib.runs import pipeline, workflow
from landmarks_lib.runs.run_folder import RunFolder
from landmarks_lib.training import cpuload

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, N_TEST, LOC_EPOCHS = 68, 8, 30
# The localizer gets what it needs to find the faces (a 64-pixel letterbox, 30 epochs of 16-image batches: 23 s on 2
# cores, the whole run 136 s instead of 101), so that the end-to-end validation NME is far below the mean-shape
# baseline's (11.4 % against 31.4 %; one 32-pixel epoch gave 69.7 %); one epoch of the landmark model is enough.
TINY = ["-p", "synthetic_points", str(K), "-p", "synthetic_train", "48", "-p", "synthetic_test", str(N_TEST),
        "-p", "crop_size", "32", "-p", "localizer_crop_size", "64", "-p", "epochs", "1",
        "-p", "localizer_epochs", str(LOC_EPOCHS), "-p", "localizer_batch_size", "16", "-p", "finetune_epochs", "1",
        "-p", "backbone", "resnet18", "-p", "pretrained", "false", "-p", "batch_size", "16", "-p", "num_figures", "4",
        "-p", "lr", "1e-3"]
FIGURES = ["01_examples", "01_train_image_sizes", "01_test_image_sizes", "01_mean_shape", "01_face_placement",
           "01_mirror_check", "01_shape_outliers", "01_worst_shape", "02_history", "03_robust_worst",
           "04_noisy_labels", "04_val_best", "04_val_median", "04_val_worst", "04_point_errors", "04_ced",
           "04_history", "04_test_predictions", "04_test_least_confident"]
TRUTH, PRED, SEGMENT = viz.TRUTH_COLOR, drawing.PRED_COLOR, viz.SEGMENT_COLOR
# The colours each figure draws its points in (viz.plot_prediction: truth cyan, prediction magenta, a yellow segment
# for the largest errors); a gallery without ground truth draws the labels or predictions as "prediction".
FIGURE_COLORS = {"01_examples": [PRED], "01_shape_outliers": [PRED], "03_robust_worst": [TRUTH, PRED],
                 "04_noisy_labels": [TRUTH, PRED, SEGMENT], "04_val_best": [TRUTH, PRED, SEGMENT],
                 "04_val_median": [TRUTH, PRED, SEGMENT], "04_val_worst": [TRUTH, PRED, SEGMENT],
                 "04_test_predictions": [PRED], "04_test_least_confident": [PRED]}


def run_cli(args, timeout=600):
    """``python -m landmarks_lib.pipeline ARGS`` in a subprocess (one torch thread: the tiny models gain nothing
    from more, and a busy machine loses a lot); returns ``(CompletedProcess, seconds)``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "landmarks_lib.pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


def _tail(proc, n=3000):
    return f"--- stdout ---\n{proc.stdout[-n:]}\n--- stderr ---\n{proc.stderr[-n:]}"


def _color_pixels(rgb, color, tol=8):
    """How many pixels of ``rgb`` (``int [H, W, 3]``) are within ``tol`` per channel of ``color`` (``"#rrggbb"``)."""
    want = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - want).max(axis=-1) <= tol).sum())


def assert_figure(path, colors=(), absent=(), min_side=200, max_side=4000, min_pixels=20):
    """A saved figure is a real picture, not an empty canvas: a PNG of plausible size, many distinct colours, no
    single colour covering almost all of it, some contrast; at least ``min_pixels`` pixels of each of ``colors``
    (the colours it draws points in), fewer than that of each of ``absent``. Returns the ``int [H, W, 3]`` pixels."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG", (path, im.format)
        w, h = im.size
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    assert min_side <= w <= max_side and min_side <= h <= max_side, (path, w, h)
    flat = rgb.reshape(-1, 3)
    _, counts = np.unique(flat @ [65536, 256, 1], return_counts=True)  # one integer per colour: fast
    assert len(counts) >= 32, f"{path}: {len(counts)} distinct colours"
    assert counts.max() / len(flat) < 0.97, f"{path}: one colour covers {counts.max() / len(flat):.1%}"
    assert flat.std() > 10, f"{path}: pixel standard deviation {flat.std():.1f}"
    for c in colors:
        assert _color_pixels(rgb, c) >= min_pixels, f"{path}: {_color_pixels(rgb, c)} pixels of {c}"
    for c in absent:
        assert _color_pixels(rgb, c) < min_pixels, f"{path}: {_color_pixels(rgb, c)} pixels of {c}"
    return rgb


pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One pipeline run of all four notebooks on a tiny synthetic set (68 points)."""
    base = tmp_path_factory.mktemp("pipeline")
    run_dir = base / "run"
    args = ["--run-dir", str(run_dir), "-p", "cache_dir", str(base / "cache"), *TINY]
    proc, seconds = run_cli(args)
    return {"run_dir": run_dir, "proc": proc, "seconds": seconds, "args": args, "base": base}


# ---------------------------------------------------------------------------------------------- end to end
def _state(run_dir):
    return RunFolder(run_dir).state()["notebooks"]


def test_pipeline_runs_all_notebooks(tiny_run):
    proc, run_dir = tiny_run["proc"], tiny_run["run_dir"]
    assert proc.returncode == 0, _tail(proc)
    print(f"pipeline run: {tiny_run['seconds']:.0f} s")
    for name in pipeline.NOTEBOOKS:
        nb = run_dir / "notebooks" / f"{name}.ipynb"
        assert nb.exists() and nb.stat().st_size > 0
        html = run_dir / "reports" / f"{name}.html"
        assert html.exists() and html.stat().st_size > 10_000
    assert not list((run_dir / "notebooks").glob(".*")), "a temporary notebook was left behind"
    assert list(_state(run_dir)) == list(pipeline.NOTEBOOKS)
    assert _state(run_dir)["02_train"]["params"]["epochs"] == 1
    marker = json.loads((run_dir / MARKER).read_text())
    assert marker["format"] == "thousand-landmarks-run/1" and "checkpoints/" in marker["manifest"]
    assert f"submission: {run_dir / 'submission.csv'}" in proc.stdout
    assert "val_mse" in proc.stdout and "val_nme" in proc.stdout


def test_executed_notebooks_get_only_the_run_folder_injected(tiny_run):
    nb = json.loads((tiny_run["run_dir"] / "notebooks" / "02_train.ipynb").read_text())
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    injected = "".join(nb["cells"][[i for i, t in enumerate(tags) if "injected-parameters" in t][0]]["source"])
    assert f'run_dir = "{tiny_run["run_dir"]}"' in injected and "retrain = False" in injected
    assert "epochs" not in injected  # every other value comes from the run's params.yaml
    nb = json.loads((tiny_run["run_dir"] / "notebooks" / "04_visualize.ipynb").read_text())
    pngs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]
            if "image/png" in o.get("data", {})]
    assert len(pngs) >= 8


def test_html_reports_are_titled_offline_and_free_of_widget_state(tiny_run):
    import re

    for name in pipeline.NOTEBOOKS:
        html = (tiny_run["run_dir"] / "reports" / f"{name}.html").read_text(encoding="utf-8")
        assert f"<title>{name} · run</title>" in html
        assert re.findall(r"<script[^>]+src=", html) == []  # nothing loaded from the network
        assert "widget-view+json" not in html and "widget-state" not in html
        assert "overrides = {}" not in html and "run_dir = " not in html  # parameter cells' code hidden
        assert html.count("data:image/png;base64") >= 1


def test_params_yaml_holds_typed_overrides(tiny_run):
    p = yaml.safe_load((tiny_run["run_dir"] / "params.yaml").read_text())
    assert set(p) == set(lp.SPEC)
    assert p["synthetic_points"] == K and type(p["synthetic_points"]) is int
    assert p["pretrained"] is False and p["backbone"] == "resnet18"
    assert p["lr"] == pytest.approx(1e-3) and type(p["lr"]) is float
    assert p["run_dir"] == str(tiny_run["run_dir"])
    info = json.loads((tiny_run["run_dir"] / "run_info.json").read_text())
    assert info["data_fingerprint"] and info["packages"]["torch"] and "onnxruntime" in info["packages"]
    cpu = info["cpu"]  # the instruction set torch dispatches to: another one gives slightly different weights
    import torch

    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability() and cpu["cpus"] == cpuload.available_cpus()
    wait = info["omp_wait_policy"]  # what the kernel's thread setting chose (cpuload.watch)
    assert wait["policy"] in ("adaptive", "default", "user", "unavailable") and wait["threads"] >= 1
    assert (wait["reason"] is None) == (wait["policy"] == "adaptive") and wait["busy_cores"] == cpuload.BUSY_CORES


def test_history_metrics_predictions_and_the_final_model(tiny_run):
    from landmarks_lib.models import checkpoint

    run_dir = tiny_run["run_dir"]
    h = pd.read_csv(run_dir / "history.csv")
    assert {"epoch", "stage", "train_loss", "val_mse", "lr"} <= set(h.columns)
    assert list(h["stage"]) == ["localizer"] * LOC_EPOCHS + ["train", "finetune"]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(m["val_mse"]) and math.isfinite(m["val_nme"]) and m["n_test"] == N_TEST
    assert np.load(run_dir / "test_predictions.npy").shape == (N_TEST, K, 2)
    assert np.load(run_dir / "val_predictions.npy").shape == (m["n_val"], K, 2)
    assert (run_dir / "noise.csv").exists()
    ck = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ck == ["finetune_best.pt", "localizer_best.pt", "train_best.pt"]  # *_last.pt removed when finished
    model = checkpoint.load_model(run_dir)
    assert model["localizer"]["meta"]["crop_mode"] == "letterbox" and model["face"]["meta"]["num_points"] == K
    assert model["inference"] == {"tta_flip": True, "refine_steps": 1, "tta_scales": "1.0"}
    assert model["source"] in ("train", "finetune")


def test_the_model_learns_far_below_the_mean_shape_baseline(tiny_run):
    """The tiny run learns the faces: its end-to-end validation NME (``metrics.json``: localizer, face crop, model,
    as on the test set) is at most half the no-model baseline's (the mean training shape placed by each image's
    letterbox frame, ``workflow.mean_shape_baseline``) on the same validation split."""
    from landmarks_lib.training import engine

    run_dir = tiny_run["run_dir"]
    m = json.loads((run_dir / "metrics.json").read_text())
    params = lp.resolve(run_dir=str(run_dir))  # the run's params.yaml: its data, split and seed
    data = engine.load_train_data(dict(params, data_dir=workflow.resolve_data_dir(params)), progress=False)
    _, base = workflow.mean_shape_baseline(data)
    assert base["n_val"] == m["n_val"] > 0
    print(f"val_nme {m['val_nme']:.2f} % (mean-shape baseline {base['val_nme']:.2f} %), val_mse {m['val_mse']:.2f} "
          f"(baseline {base['val_mse']:.2f})")
    assert m["val_nme"] <= 0.5 * base["val_nme"], (m, base)


def test_submission_is_valid(tiny_run):
    run_dir = tiny_run["run_dir"]
    tp = tables.read_test_points(run_dir / "data" / "test" / "test_points.csv")
    df = submission.validate_submission(run_dir / "submission.csv", tp)
    assert df.shape == (N_TEST, 1 + 60)


def test_figures_are_saved(tiny_run):
    fig_dir = tiny_run["run_dir"] / "figures"
    assert set(FIGURES) <= {p.stem for p in fig_dir.glob("*.png")}
    for p in sorted(fig_dir.glob("*.png")):  # every figure written, with the colours of its points
        # the EDA draws the labels alone, and the test images have no ground truth: none drawn in cyan
        absent = [TRUTH] if p.stem.startswith("04_test_") or p.stem.startswith("01_") else []
        assert_figure(p, FIGURE_COLORS.get(p.stem, ()), absent)


def test_existing_run_folder_is_refused(tiny_run):
    before = (tiny_run["run_dir"] / "metrics.json").stat().st_mtime_ns
    proc, _ = run_cli(tiny_run["args"])
    assert proc.returncode == 2, _tail(proc)
    assert "not empty" in proc.stderr and "--resume" in proc.stderr and "--force" in proc.stderr
    assert (tiny_run["run_dir"] / "metrics.json").stat().st_mtime_ns == before


def test_resume_with_the_runs_own_params_skips_finished_notebooks(tiny_run):
    proc, seconds = run_cli(["--run-dir", str(tiny_run["run_dir"]), "--resume", "-p", "threads", "2"])
    assert proc.returncode == 0, _tail(proc)
    assert proc.stdout.count("skipped (--resume)") == len(pipeline.NOTEBOOKS)  # a runtime value changes freely
    assert "submission:" in proc.stdout


def test_resume_with_other_training_parameters_is_refused_listing_them(tiny_run):
    proc, _ = run_cli(["--run-dir", str(tiny_run["run_dir"]), "--resume", "-p", "epochs", "2"])
    assert proc.returncode == 2, _tail(proc)
    assert "epochs: 1 -> 2 (stages: train, finetune)" in proc.stderr and "--retrain" in proc.stderr
    assert "--force" not in proc.stderr
    assert yaml.safe_load((tiny_run["run_dir"] / "params.yaml").read_text())["epochs"] == 1


def test_a_figures_change_reruns_only_the_figures_in_a_moved_folder(tiny_run):
    moved = tiny_run["base"] / "moved"
    shutil.copytree(tiny_run["run_dir"], moved, symlinks=True)
    proc, _ = run_cli(["--run-dir", str(moved), "--resume", "-p", "num_figures", "2"])
    assert proc.returncode == 0, _tail(proc)
    assert proc.stdout.count("skipped (--resume)") == 3 and "04_visualize: running" in proc.stdout
    assert _state(moved)["04_visualize"]["params"]["num_figures"] == 2
    proc, _ = run_cli(["--run-dir", str(moved), "--resume", "-p", "refine_steps", "0", "-p", "num_figures", "2"])
    assert proc.returncode == 0, _tail(proc)
    assert "02_train: finished earlier" in proc.stdout and "03_finetune: running" in proc.stdout


def test_retrain_keeps_the_localizer_and_retrains_what_reads_epochs(tiny_run):
    run = tiny_run["base"] / "retrain"
    shutil.copytree(tiny_run["run_dir"], run, symlinks=True)
    loc = (run / "checkpoints" / "localizer_best.pt").stat().st_mtime_ns
    proc, _ = run_cli(["--run-dir", str(run), "--resume", "--retrain", "-p", "epochs", "2"])
    assert proc.returncode == 0, _tail(proc)
    h = pd.read_csv(run / "history.csv")
    assert list(h["stage"]) == ["localizer"] * LOC_EPOCHS + ["train", "train", "finetune"]
    assert (run / "checkpoints" / "localizer_best.pt").stat().st_mtime_ns == loc
    assert _state(run)["03_finetune"]["params"]["epochs"] == 2
    from landmarks_lib.runs import compare

    table = compare.compare_runs(tiny_run["run_dir"], run)
    assert table.loc[("param", "epochs"), "a"] == 1 and table.loc[("param", "epochs"), "b"] == 2
    assert ("param", "run_dir") not in table.index and ("train_min", "total") in table.index
    png = compare.plot_runs([tiny_run["run_dir"], run], tiny_run["base"] / "compare.png")
    assert_figure(png)


def _tiny_overrides():
    """``TINY``'s ``-p`` pairs as a notebook's ``overrides`` dict (typed by the spec)."""
    pairs = dict(zip(TINY[1::3], TINY[2::3]))
    return {k: lp.coerce(k, v) for k, v in pairs.items()}


def _papermill(name, run_dir, **parameters):
    """Run one notebook as a Jupyter user would: no runner, the parameters cell's names set (papermill), the
    notebook's own folder as the working directory."""
    import papermill as pm

    out = run_dir.parent / f"{run_dir.name}-{name}.ipynb"
    pm.execute_notebook(os.path.join(pipeline.NOTEBOOK_DIR, f"{name}.ipynb"), str(out), cwd=pipeline.NOTEBOOK_DIR,
                        parameters={"run_dir": str(run_dir), **parameters}, kernel_name="python3",
                        progress_bar=False)
    return out


def test_interactive_and_batch_runs_give_the_same_results(tiny_run):
    run = tiny_run["base"] / "interactive"
    over = dict(_tiny_overrides(), cache_dir=str(tiny_run["base"] / "cache"))
    _papermill("01_eda", run, overrides=over)
    _papermill("02_train", run)  # later notebooks read the run's params.yaml, as in Jupyter
    a, b = pd.read_csv(tiny_run["run_dir"] / "history.csv"), pd.read_csv(run / "history.csv")
    np.testing.assert_array_equal(a[a["stage"] != "finetune"]["val_mse"].to_numpy(), b["val_mse"].to_numpy())


def test_changing_epochs_and_running_02_again_as_in_jupyter(tiny_run):
    import papermill as pm

    run = tiny_run["base"] / "jupyter"
    shutil.copytree(tiny_run["run_dir"], run, symlinks=True)
    loc = (run / "checkpoints" / "localizer_best.pt").stat().st_mtime_ns
    with pytest.raises(pm.PapermillExecutionError, match=r"epochs: 1 -> 3.*Stages affected: train, finetune.*"
                                                         r"retrain = True"):
        _papermill("02_train", run, overrides={"epochs": 3})
    _papermill("02_train", run, overrides={"epochs": 3}, retrain=True)
    h = pd.read_csv(run / "history.csv")
    assert list(h["stage"]) == ["localizer"] * LOC_EPOCHS + ["train", "train", "train", "finetune"]
    assert (run / "checkpoints" / "localizer_best.pt").stat().st_mtime_ns == loc  # the localizer was kept
    assert _state(run)["02_train"]["params"]["epochs"] == 3


def test_failing_cell_stops_with_its_notebook_and_cell(tiny_run):
    run_dir = tiny_run["base"] / "failing"  # the figures notebook alone, before anything was predicted
    args = ["--run-dir", str(run_dir), "-p", "cache_dir", str(tiny_run["base"] / "cache"), *TINY, "--notebooks", "04"]
    proc, _ = run_cli(args)
    assert proc.returncode == 1, _tail(proc)
    assert "notebook 04_visualize failed in cell" in proc.stderr and "val_predictions.npy" in proc.stderr
    nb = json.loads((run_dir / "notebooks" / "04_visualize.ipynb").read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"] if o["output_type"] == "error"]
    assert len(errors) == 1
    assert (run_dir / "reports" / "04_visualize.html").exists()
    assert _state(run_dir) == {}


# -------------------------------------------------------------------------------------------- runner pieces
def test_select_notebooks():
    assert pipeline.select_notebooks(None) == list(pipeline.NOTEBOOKS)
    assert pipeline.select_notebooks("3,01") == ["01_eda", "03_finetune"]
    assert pipeline.select_notebooks("train,04_visualize") == ["02_train", "04_visualize"]
    with pytest.raises(pipeline.PipelineError, match="05"):
        pipeline.select_notebooks("05")


def test_absolute_paths(tmp_path):
    p = lp.absolute_paths({"data_dir": "", "run_dir": "runs/a", "cache_dir": "", "ensemble_runs": "runs/b, /x/c"},
                          base=str(tmp_path))
    assert p["data_dir"] == "" and p["cache_dir"] == ""
    assert p["run_dir"] == str(tmp_path / "runs" / "a")
    assert p["ensemble_runs"] == f"{tmp_path / 'runs' / 'b'},/x/c"


def test_finish_records_the_data_as_start_saw_it(tmp_path, monkeypatch):
    """One listing of the images per notebook: finish records start's fingerprint, so data that changed while the
    notebook ran makes the runner run it again."""
    monkeypatch.delenv("LANDMARKS_RUN_LOCK", raising=False)
    ns = {"run_dir": str(tmp_path / "r"), "overrides": {"synthetic_train": 8, "synthetic_test": 2,
                                                        "synthetic_points": 15}}
    params, run = workflow.start("01_eda", ns)
    fp = workflow.data_fingerprint(params["data_dir"])
    assert run.read_info()["data_fingerprint"] == fp
    images = os.path.join(params["data_dir"], "train", "images")
    os.utime(os.path.join(images, sorted(os.listdir(images))[0]), ns=(0, 0))  # an image changes meanwhile
    workflow.finish("01_eda", params, run)
    run.unlock()
    recorded = run.state()["notebooks"]["01_eda"]["data_fingerprint"]
    assert recorded == fp != workflow.data_fingerprint(params["data_dir"])
    first, training = pipeline.plan(run, lp.resolve(run_dir=run.path))
    assert first == 0 and "changed (tables or images) since 01_eda ran" in training[0]
    workflow.finish("01_eda", params, run)  # no start in this process for it any more: taken now
    assert run.state()["notebooks"]["01_eda"]["data_fingerprint"] == workflow.data_fingerprint(params["data_dir"])
    assert pipeline.plan(run, lp.resolve(run_dir=run.path)) == (1, [])
    params, run = workflow.start("01_eda", ns)  # finished on another folder than start saw: that folder's
    other = tmp_path / "other"
    shutil.copytree(params["data_dir"], other)
    os.utime(other / "train" / "landmarks.csv", ns=(0, 0))
    workflow.finish("01_eda", dict(params, data_dir=str(other)), run)
    run.unlock()
    recorded = run.state()["notebooks"]["01_eda"]["data_fingerprint"]
    assert recorded == workflow.data_fingerprint(other) != workflow.data_fingerprint(params["data_dir"])


def test_plan_follows_the_scopes_each_notebook_reads(tmp_path):
    run = RunFolder(tmp_path / "r").create("test")
    p = lp.resolve(run_dir=run.path)
    assert pipeline.plan(run, p) == (0, [])  # nothing ran yet
    for nb in pipeline.NOTEBOOKS:
        run.record_notebook(nb, p)
    assert pipeline.plan(run, p) == (4, [])
    assert pipeline.plan(run, dict(p, device="cpu", threads=2, run_dir="/elsewhere")) == (4, [])
    assert pipeline.plan(run, dict(p, num_figures=3)) == (3, [])
    assert pipeline.plan(run, dict(p, tta_flip=False)) == (2, [])
    assert pipeline.plan(run, dict(p, localizer_epochs=2)) == (1, ["localizer_epochs: 16 -> 2 (stages: localizer)"])
    assert pipeline.plan(run, dict(p, seed=1))[1] == ["seed: 0 -> 1 (stages: localizer, train, finetune)"]
    data = os.path.join(run.file("data"), "train")  # the data itself changes: refused like a training value
    os.makedirs(data)
    with open(os.path.join(data, "landmarks.csv"), "w") as f:
        f.write("file_name\n")
    for nb in pipeline.NOTEBOOKS:
        run.record_notebook(nb, p, workflow.data_fingerprint(run.file("data")))
    assert pipeline.plan(run, p) == (4, [])
    with open(os.path.join(data, "landmarks.csv"), "a") as f:
        f.write("a.jpg\n")
    first, training = pipeline.plan(run, p)
    assert first == 0 and len(training) == 1 and "changed (tables or images) since 01_eda ran" in training[0]


# ------------------------------------------------------------------------------------------ notebook helpers
def test_crop_coverage_counts_points_outside_image_and_crop():
    # image 200 x 100; a face in the middle (x 80..120, y 30..70) and one point at x = 10 (outside the centre crop)
    pts = np.array([[[80, 30], [120, 30], [80, 70], [120, 70], [10, 50]]], np.float64)
    cov = pd.DataFrame(eda.crop_coverage(pts, [200], [100], crop_size=64, face_scale=1.25)).set_index("crop_mode")
    assert list(cov.index) == ["center", "letterbox", "face"]
    assert cov.loc["center", "points_outside_crop_pct"] == pytest.approx(20.0)
    assert cov.loc["center", "images_cut_pct"] == pytest.approx(100.0)
    assert cov.loc["letterbox", "points_outside_crop_pct"] == 0.0
    assert cov.loc["face", "points_outside_crop_pct"] == 0.0
    assert (cov["points_outside_image_pct"] == 0.0).all()
    # face box longer side 110 px: centre crop side 100, letterbox 200, face crop 137.5 px
    assert cov.loc["center", "face_px_median"] == pytest.approx(110 / 100 * 64)
    assert cov.loc["letterbox", "face_px_median"] == pytest.approx(110 / 200 * 64)
    assert cov.loc["face", "face_share_median"] == pytest.approx(1 / 1.25)
    out = pts.copy()
    out[0, 4] = [-5, 50]
    assert eda.crop_coverage(out, [200], [100], 64)[0]["points_outside_image_pct"] == pytest.approx(20.0)
    with pytest.raises(ValueError):
        eda.crop_coverage(pts, [200], [100], 64, modes=["zoom"])


def test_shape_residuals_ignore_pose_and_find_a_broken_shape():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    base = np.stack([np.cos(t) * 30, np.sin(t) * 40 + 5 * np.cos(3 * t)], axis=1)
    shapes = []
    for _ in range(30):
        a = rng.uniform(-0.4, 0.4)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        shapes.append(base @ r.T * rng.uniform(0.5, 2) + rng.uniform(0, 200, 2))
    shapes = np.array(shapes)
    assert eda.shape_residuals(shapes).max() < 1e-6
    broken = shapes.copy()
    broken[7] = broken[7][rng.permutation(20)]
    res, per_point = eda.shape_residuals(broken, per_point=True)
    assert int(np.argmax(res)) == 7 and res[7] > 0.3
    assert per_point.shape == (30, 20)
    from landmarks_lib.training import noise

    assert np.flatnonzero(noise.flag_outliers(res + rng.normal(0, 1e-3, 30), 6.0)).tolist() == [7]


def test_image_loader(tiny_dataset):
    names = tables.read_test_points(tiny_dataset["test_points"]).names
    load = workflow.image_loader(tiny_dataset["test_images"], names)
    img = load(np.int64(1))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_mirror_check_and_face_placement_plots(tiny_dataset, tmp_path):
    table = tables.read_landmarks(tiny_dataset["train_landmarks"])
    pts = table.points.astype(np.float32)
    perm = symmetry.estimate_mirror_permutation(pts)
    fig = viz.plot_mirror_check(geometry.mean_shape(pts), perm, error=symmetry.mirror_error(pts, perm))
    assert "mirror pairs" in fig.axes[0].get_title()
    assert_figure(viz.save_figure(fig, tmp_path / "m.png"))
    with pytest.raises(ValueError):
        viz.plot_mirror_check(geometry.mean_shape(pts), perm[:-1])
    from landmarks_lib.core import images

    sizes = np.array([images.image_size(os.path.join(tiny_dataset["train_images"], n)) for n in table.names])
    fig = viz.plot_face_placement(pts, sizes[:, 0], sizes[:, 1])
    assert len(fig.axes) == 2
    assert_figure(viz.save_figure(fig, tmp_path / "f.png"))


def test_mean_shape_baseline(tiny_dataset, cache_dir):
    from landmarks_lib.training import engine

    p = lp.resolve(data_dir=tiny_dataset["out_dir"], overrides={"val_fraction": 0.25, "cache_dir": cache_dir})
    data = engine.load_train_data(p, progress=False)
    pred, m = workflow.mean_shape_baseline(data)
    assert pred.shape == (len(data.val_idx), K, 2)
    assert m["n_val"] == len(data.val_idx) and math.isfinite(m["val_mse"]) and m["val_nme"] > 1.0
    # every prediction is the same shape in whole-image units: inside the letterboxed image area
    assert np.isfinite(pred).all()
    from landmarks_lib.core import images

    frames = [geometry.letterbox_frame(*images.image_size(os.path.join(data.image_dir, data.names[i])), 1)
              for i in data.val_idx]
    units = np.stack([f.to_crop(p) for f, p in zip(frames, pred)])  # [0, 1]^2 is the letterbox frame
    assert_close(units, np.broadcast_to(units[0], units.shape), ulps=8)  # one shape, placed by each image's frame
    assert (units > 0).all() and (units < 1).all(), (units.min(axis=(0, 1)), units.max(axis=(0, 1)))
    for f, p in zip(frames, pred):  # in original pixels: inside the square around the whole image
        assert (p >= [f.x0, f.y0]).all() and (p <= [f.x0 + f.side, f.y0 + f.side]).all()


@pytest.mark.standin
def test_eda_notebook_on_the_standin(standin_dir, tmp_path):
    """01_eda on the real stand-in (4,659 photos, 971 points): validation passes, the mirror permutation is an
    involution, every figure is written (reads the data in place; nothing is copied)."""
    run_dir = tmp_path / "standin-eda"
    proc, seconds = run_cli(["--data-dir", standin_dir, "--run-dir", str(run_dir), "--notebooks", "01",
                             "-p", "cache_dir", str(tmp_path / "cache")])
    assert proc.returncode == 0, _tail(proc)
    print(f"01_eda on the stand-in: {seconds:.0f} s")
    for name in ["01_examples", "01_train_image_sizes", "01_test_image_sizes", "01_mean_shape", "01_face_placement",
                 "01_mirror_check", "01_shape_outliers", "01_worst_shape"]:
        assert_figure(run_dir / "figures" / f"{name}.png", FIGURE_COLORS.get(name, ()))
    nb = json.loads((run_dir / "notebooks" / "01_eda.ipynb").read_text())
    text = "".join("".join(o.get("data", {}).get("text/plain", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c["outputs"])
    involution = [line.split()[-1] for line in text.splitlines() if line.startswith("involution")]
    assert involution == ["True"]
    assert not (run_dir / "data").exists()  # the stand-in was read in place


def test_apply_threads():
    import torch

    before = torch.get_num_threads()
    try:
        assert workflow.apply_threads({"threads": 1}) == 1 == torch.get_num_threads()
        assert workflow.apply_threads({"threads": 0}) == 1  # 0 leaves the count as it is
    finally:
        torch.set_num_threads(before)
