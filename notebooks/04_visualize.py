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
# One flat set shared by all notebooks, the YAML profiles in `params/` and `python -m landmarks_lib.pipeline`
# (which injects its values after this cell). The defaults run on the embedded synthetic data.

# %% tags=["parameters"]
data_dir = ""               # contest-format data folder (train/, test/); empty: the embedded synthetic default
run_dir = "runs/default"    # the run folder: executed notebooks, checkpoints, metrics, submission, figures
cache_dir = ""              # folder of preprocessed caches; empty: $LANDMARKS_CACHE or ~/.cache/thousand-landmarks
synthetic_train = 240       # embedded default: number of synthetic training images
synthetic_test = 40         # embedded default: number of synthetic test images
synthetic_points = 971      # embedded default: landmarks per face
max_train_images = 0        # use at most this many training images (0: all)
max_test_images = 0         # predict at most this many test images (0: all; partial runs write submission_partial.csv)
bad_rows = "error"          # landmarks.csv rows with missing/NaN values: 'error' stops, 'skip' drops and reports
val_fraction = 0.1          # share of training images held out for validation
val_split = "auto"          # 'groups' (train/groups.csv), 'random', or 'auto' (groups when the file exists)
backbone = "resnet18"       # torchvision backbone: resnet18/34/50, resnext50_32x4d, mobilenet_v2, ...
pretrained = False          # ImageNet weights through torchvision's weights API (offline via TORCH_HOME)
crop_size = 64              # crop side in pixels fed to the network
crop_mode = "face"          # 'centre' (course baseline), 'letterbox' (whole image), 'face' (two-stage)
face_scale = 1.25           # face crop side over the landmarks' bounding-box longer side
coarse_crop_size = 64       # crop side of the coarse letterbox model that places face crops
coarse_epochs = 16          # epochs of the coarse model (crop_mode 'face' only)
input_norm = "weights"      # 'weights' (the backbone weights' mean/std, ImageNet) or 'half' (mean and std 0.5)
normalize_targets = True    # regress coordinates divided by the crop size, head bias at the mean shape
dropout = 0.0               # dropout before the regression head
head = "linear"             # 'linear' (pooled features), 'spatial' (the feature grid, flattened) or 'softargmax'
epochs = 12                 # training epochs
batch_size = 32             # images per optimisation step
lr = 0.001                  # learning rate of the training stage
optimizer = "adamw"         # adam, adamw or sgd
amsgrad = False             # AMSGrad variant for adam/adamw
weight_decay = 0.0001       # weight decay
scheduler = "cosine"        # plateau, cosine, cosine_restarts, onecycle or none
plateau_factor = 0.25       # ReduceLROnPlateau factor
plateau_patience = 4        # ReduceLROnPlateau patience in epochs
restart_epochs = 5          # first cycle length of cosine_restarts, in epochs
warmup_epochs = 0.5         # linear warm-up at the start of cosine schedules, in epochs
loss = "smooth_l1"          # mse, l1, smooth_l1 or wing
grad_clip = 0.0             # clip the gradient norm to this value (0: off)
time_budget_min = 0.0       # stop a training stage after this many minutes (0: off)
finetune_epochs = 2         # epochs of the finetune stage (0: skip)
finetune_lr = 0.0001        # learning rate of the finetune stage
noise_action = "drop"       # what finetuning does with flagged noisy labels: keep, drop or downweight
noise_threshold = 6.0       # flag a label when its error exceeds median + threshold * MAD of all errors
augment = True              # geometric and photometric augmentation while training
rotate_deg = 10.0           # max rotation, degrees
scale_jitter = 0.15         # max relative scale change
translate_frac = 0.1        # max translation, share of the crop
flip = True                 # horizontal flips with the mirror permutation estimated from the data
photometric = 0.2           # strength of brightness/contrast/saturation jitter (0: off)
cache_margin = 0.125        # extra border kept in the cache around each crop, share of the crop, for augmentation
tta_flip = True             # average predictions on the image and its mirror
refine_steps = 1            # face crops: how often the face model re-places its own crop at inference
tta_scales = "1.0"          # face crops: comma-separated crop scales (times face_scale) of the last pass, averaged
seed = 0                    # random seed
device = "auto"             # auto, cpu, cuda or mps
num_workers = -1            # DataLoader workers (-1: chosen for the device)
threads = 0                 # torch CPU threads (0: all cores)
amp = True                  # bf16 autocast on CUDA (ignored on CPU)
channels_last = True        # channels-last memory format for training (CUDA and CPU)
num_figures = 8             # images per gallery figure
submission_decimals = 2     # decimals of submission coordinates (0: integers, halves up)
ensemble_runs = ""          # comma-separated run folders whose predictions are averaged into this run's submission

# %% [markdown]
# Derived values (parameters, data folder, figure folder, torch's CPU threads) and the run's outputs: validation
# predictions (rows in the validation split's order) with their ground truth and per-image NME, and the metrics.

# %%
# %matplotlib inline
import json
import os

import numpy as np
import pandas as pd

from landmarks_lib import engine, geometry, io, metrics, viz, workflow

params = workflow.params_from_namespace(globals())
params["data_dir"] = workflow.resolve_data_dir(params)
torch_threads = workflow.apply_threads(params)
run_dir = params["run_dir"]
figures = os.path.join(run_dir, "figures")
n_fig = params["num_figures"]

data = engine.load_train_data(params, progress=False)
val_names = np.asarray(data.names)[data.val_idx]
val_truth = data.points(data.val_idx)
val_pred = np.load(os.path.join(run_dir, "val_predictions.npy"))
val_nme = metrics.per_image_nme(val_pred, val_truth)
load_val = workflow.image_loader(data.image_dir, val_names)
with open(os.path.join(run_dir, "metrics.json")) as f:
    run_metrics = json.load(f)
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
# Ground truth in green, prediction in red, a yellow segment from each true point to its prediction; titles give
# the image's NME (percent of its landmark box size). First the best images:

# %%
fig = viz.gallery(load_val, val_truth, val_pred, val_nme, which="best", n=n_fig, names=val_names,
                  error_label="NME%")
viz.save_figure(fig, f"{figures}/04_val_best.png")
fig

# %% [markdown]
# Typical images (around the median error): what most predictions look like.

# %%
fig = viz.gallery(load_val, val_truth, val_pred, val_nme, which="median", n=n_fig, names=val_names,
                  error_label="NME%")
viz.save_figure(fig, f"{figures}/04_val_median.png")
fig

# %% [markdown]
# The worst images: misplaced face crops (the whole shape shifted or scaled), unusual poses, or wrong labels.

# %%
fig = viz.gallery(load_val, val_truth, val_pred, val_nme, which="worst", n=n_fig, names=val_names,
                  error_label="NME%")
viz.save_figure(fig, f"{figures}/04_val_worst.png")
fig

# %% [markdown]
# ## Which points are hard?
#
# The mean distance between prediction and truth of each point (original pixels) over the validation images,
# drawn on the mean face: darker points are predicted worse (typically the jaw line and the outer contours, which
# the image defines less precisely than eye corners).

# %%
fig = viz.plot_point_errors(geometry.mean_shape(data.points(data.train_idx)),
                            metrics.per_point_error(val_pred, val_truth).mean(axis=0))
viz.save_figure(fig, f"{figures}/04_point_errors.png")
fig

# %% [markdown]
# ## Cumulative error distribution
#
# The share of validation images whose NME is at most x; the area under the curve up to NME 10 % (AUC, 1 = every
# image perfect) and the failure rate (share above 10 %) summarise it.

# %%
fig = viz.plot_ced(val_nme, threshold=10.0, label=os.path.basename(os.path.abspath(run_dir)))
viz.save_figure(fig, f"{figures}/04_ced.png")
fig

# %% [markdown]
# ## Training curves
#
# Every stage of the run (coarse, train, finetune), from `history.csv`.

# %%
fig = viz.plot_history(os.path.join(run_dir, "history.csv"))
viz.save_figure(fig, f"{figures}/04_history.png")
fig

# %% [markdown]
# ## Predictions on test images
#
# All predicted points (not only the ones the submission lists) on the first test images. There is no ground truth
# here: check that the points sit on the faces.

# %%
test_pred = np.load(os.path.join(run_dir, "test_predictions.npy"))
test_names = io.read_test_points(os.path.join(params["data_dir"], "test", "test_points.csv")).names[: len(test_pred)]
fig = viz.gallery(workflow.image_loader(os.path.join(params["data_dir"], "test", "images"), test_names), None,
                  test_pred, None, which=np.arange(min(n_fig, len(test_pred))), names=test_names)
viz.save_figure(fig, f"{figures}/04_test_predictions.png")
fig
