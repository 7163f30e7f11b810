# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · How good is the model, and where does it fail?
#
# Reads what `03_finetune` wrote into `run_dir` (`val_predictions.npy`, `test_predictions.npy`, `history.csv`,
# `metrics.json`) and draws the run's report figures into `<run_dir>/figures/`: predictions against the ground truth
# on validation images (best, median and worst by per-image error), the error of each point on the mean face, the
# cumulative error distribution, the training curves and predictions on test images.

# %% [markdown]
# ## Parameters
# A run's parameters live in `<run_dir>/params.yaml` (written by the runner or by the first notebook run on it);
# a new run starts from the spec's defaults (the embedded synthetic demo) or `profile`, then `overrides`.
# `python -m landmarks_lib.params` lists every parameter with its default, scope and help.

# %% tags=["parameters"]
run_dir = "runs/default"    # the run folder (in Jupyter: relative to this notebook's folder)
profile = ""                # YAML profile for a new run, e.g. "../params/cpu.yaml" (a run's params.yaml wins)
overrides = {}              # parameter values, e.g. {"epochs": 3}; they are written into the run's params.yaml

# %% [markdown]
# `workflow.start` resolves the parameters and the data folder; the run folder gives the outputs of `03_finetune`:
# validation predictions (rows in the validation split's order) with their ground truth and per-image NME, and the
# metrics.

# %%
# %matplotlib inline
import numpy as np
import pandas as pd
from IPython.display import HTML

from landmarks_lib.core import geometry
from landmarks_lib.evaluation import eda, metrics
from landmarks_lib.reporting import viewer, viz
from landmarks_lib.runs import workflow
from landmarks_lib.training import engine

params, run = workflow.start("04_visualize", globals())
n_fig = params["num_figures"]

data = engine.load_train_data(params, progress=False)
val_names = np.asarray(data.names)[data.val_idx]
val_truth = data.points(data.val_idx)
val_pred = run.read_predictions("val")
val_nme = metrics.per_image_nme(val_pred, val_truth)
load_val = workflow.image_loader(data.image_dir, val_names)
mean_shape = geometry.mean_shape(data.point_view(data.train_idx)[eda.sample_rows(len(data.train_idx))])
run_metrics = run.read_metrics()
pd.Series(run_metrics, name="value").to_frame()

# %% [markdown]
# For scale: the no-model baseline puts the mean training shape (in whole-image units) on every validation image.
# A model that learnt the faces is far below it.

# %%
baseline_pred, baseline = workflow.mean_shape_baseline(data)
pd.DataFrame({"this run": pd.Series(run_metrics), "mean-shape baseline": pd.Series(baseline)}).loc[list(baseline)]

# %% [markdown]
# ## Predictions on validation images
#
# Each panel shows the face: ground truth in cyan, prediction in magenta, and a yellow segment from truth to
# prediction for the 20 points with the largest error; titles give the image's NME (percent of its landmark box
# size). First the best images:

# %%
fig = viz.gallery(load_val, val_truth, val_pred, val_nme, which="best", n=n_fig, names=val_names,
                  error_label="NME%")
viz.save_figure(fig, run.figure("04_val_best"))
fig

# %% [markdown]
# Typical images (around the median error): what most predictions look like.

# %%
fig = viz.gallery(load_val, val_truth, val_pred, val_nme, which="median", n=n_fig, names=val_names,
                  error_label="NME%")
viz.save_figure(fig, run.figure("04_val_median"))
fig

# %% [markdown]
# The worst images: misplaced face crops (the whole shape shifted or scaled), unusual poses, or wrong labels.

# %%
fig = viz.gallery(load_val, val_truth, val_pred, val_nme, which="worst", n=n_fig, names=val_names,
                  error_label="NME%")
viz.save_figure(fig, run.figure("04_val_worst"))
fig

# %% [markdown]
# ## Noisy labels
#
# The training images the trained model disagrees with most (worst NME against their labels; flagged ones are marked):
# labels in cyan, the model's prediction in magenta, a yellow segment from each label to its prediction. Long
# segments all pointing one way mean a shifted label; segments crossing the face mean mirrored or swapped points.

# %%
noise_table = run.read_noise()
worst = noise_table[noise_table["split"] == "train"].nlargest(n_fig, "nme")
worst_idx = worst.index.to_numpy()
worst_pred = workflow.predict_training_images(params, data, run.checkpoint("train"),
                                              worst_idx)
worst_names = (worst["file_name"] + np.where(worst["flagged"], " FLAGGED", "")).to_numpy()
fig = viz.gallery(workflow.image_loader(data.image_dir, np.asarray(data.names)[worst_idx]),
                  data.points(worst_idx), worst_pred, worst["nme"].to_numpy(), which=np.arange(len(worst_idx)),
                  names=worst_names, error_label="NME%")
viz.save_figure(fig, run.figure("04_noisy_labels"))
fig

# %% [markdown]
# ## Which points are hard?
#
# The mean distance between prediction and truth of each point (original pixels) over the validation images,
# drawn on the mean face: darker points are predicted worse (typically the jaw line and the outer contours, which
# the image defines less precisely than eye corners).

# %%
fig = viz.plot_point_errors(mean_shape, metrics.per_point_error(val_pred, val_truth).mean(axis=0))
viz.save_figure(fig, run.figure("04_point_errors"))
fig

# %% [markdown]
# ## Looking closely: the interactive viewer
#
# Zoom and pan with the mouse, hover a point for its index, face region and error (px), click `truth` or
# `prediction` in the legend to hide or show them, and pick an image from the menus (by NME, worst first, or by
# name): validation images (the worst and some around the median), then every point on the mean face coloured by
# its mean error (hover: its error across the validation set), then test images. It is plotly's own HTML, so it
# works the same in Jupyter and in this run's HTML report, offline.

# %%
test_pred = run.read_predictions("test")
load_test, test_names = workflow.test_images(params, len(test_pred))
viewer_html, region_errors = viewer.report(load_val, val_names, val_pred, val_truth, mean_shape, val_nme,
                                           test=(load_test, test_names, test_pred))
HTML(viewer_html)

# %% [markdown]
# The regions are clusters of the mean face, named by where they lie (left and right as seen in the image); the
# table gives each region's error on the validation images, worst first.

# %%
region_errors.round(3)

# %% [markdown]
# ## Cumulative error distribution
#
# The share of validation images whose NME is at most x; the area under the curve up to NME 10 % (AUC, 1 = every
# image perfect) and the failure rate (share above 10 %) summarise it.

# %%
fig = viz.plot_ced(val_nme, threshold=10.0, label=run.name)
viz.save_figure(fig, run.figure("04_ced"))
fig

# %% [markdown]
# ## Training curves
#
# Every stage of the run (localizer, train, finetune), from `history.csv`.

# %%
fig = viz.plot_history(run.read_history())
viz.save_figure(fig, run.figure("04_history"))
fig

# %% [markdown]
# ## Predictions on test images
#
# All predicted points (not only the ones the submission lists) on the first test images. There is no ground truth
# here: check that the points sit on the faces.

# %%
fig = viz.gallery(load_test, None, test_pred, None, which=np.arange(min(n_fig, len(test_pred))), names=test_names)
viz.save_figure(fig, run.figure("04_test_predictions"))
fig

# %% [markdown]
# ## The least confident test predictions
#
# Each prediction's confidence (`test_faces.csv`) is the localizer's score of the face it chose times how well the
# final points agree with the box that placed their crop. The least confident test images come first: misplaced
# crops, faces cut by the frame, several faces, hard poses. `faces` is the number of faces the localizer found.

# %%
test_faces = run.read_test_faces()
least = np.argsort(test_faces["confidence"].to_numpy(), kind="stable")[:n_fig]
titles = [f"{n} (conf {c:.2f}, faces {f})" for n, c, f in zip(test_names, test_faces["confidence"],
                                                              test_faces["faces"])]
fig = viz.gallery(load_test, None, test_pred, None, which=least, names=titles, crop=False)
viz.save_figure(fig, run.figure("04_test_least_confident"))
fig

# %%
workflow.finish("04_visualize", params, run)
