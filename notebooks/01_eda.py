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
# # 01 · Exploratory data analysis
#
# What the data looks like before any training: is the folder valid, how many images and points, how big the
# images are, where the faces sit in them (and so which crop keeps the face at a useful resolution), which point
# mirrors which (for flip augmentation), and which labels look wrong by their shape alone.
#
# Run the notebooks in order (01 → 04) with the same `run_dir`; each one reads what the previous ones wrote.
# With the default parameters this notebook uses the embedded synthetic dataset, generated into `<run_dir>/data`.

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
# Values derived from the parameters (so that injected values reach them): the resolved parameter dict, the data
# folder (the synthetic default is written once on first use) and the figure folder. `write_run_info` records
# what produced this run (`params.yaml`, `run_info.json`: commit, package versions, data fingerprint).

# %%
# %matplotlib inline
import os

import numpy as np
import pandas as pd

from landmarks_lib import engine, geometry, noise, validate, viz, workflow

params = workflow.params_from_namespace(globals())
params["data_dir"] = workflow.resolve_data_dir(params)
figures = os.path.join(params["run_dir"], "figures")
run_info = workflow.write_run_info(params, params["data_dir"])
pd.Series(run_info, dtype=object)

# %% [markdown]
# ## Is the dataset valid?
#
# `validate_dataset` reads both tables and every image header. **Fatal** problems (unreadable rows, missing or
# broken images, malformed `test_points.csv`, ...) stop the notebook here with the list of files and lines;
# warnings and notes are listed for reading.

# %%
report = validate.validate_dataset(params["data_dir"], bad_rows=params["bad_rows"])
print(report.summary())
report.raise_if_fatal()
report.to_frame().head(20)

# %% [markdown]
# ## Counts
#
# The validation split keeps every person (`train/groups.csv`) on one side when the file exists, so validation
# faces are unseen, as in the hidden test.

# %%
data = engine.load_train_data(params, progress=False)
points = data.points()
pd.Series({"training images": len(data.names), "test images": report.num_test,
           "points per face": data.table.num_points, "train split": len(data.train_idx),
           "validation split": len(data.val_idx), "split by": data.split,
           "rows skipped": len(data.table.skipped)}, dtype=object)

# %% [markdown]
# A few training images with their labels (red), as stored: every point in original pixels.

# %%
load_train = workflow.image_loader(data.image_dir, data.names)
fig = viz.gallery(load_train, None, points, None, which=np.arange(min(params["num_figures"], len(points))),
                  names=data.names)
viz.save_figure(fig, f"{figures}/01_examples.png")
fig

# %% [markdown]
# ## Image sizes
#
# Widths, heights and aspect ratios of the training images (then of the test images). Networks see a fixed
# `crop_size`, so this says how much each crop mode scales the images down (or up).

# %%
sizes = report.image_sizes
train_sizes = sizes[sizes["split"] == "train"].set_index("name").loc[data.names]
test_sizes = sizes[sizes["split"] == "test"]
fig = viz.plot_size_histogram(train_sizes["width"], train_sizes["height"])
viz.save_figure(fig, f"{figures}/01_train_image_sizes.png")
fig

# %%
fig = viz.plot_size_histogram(test_sizes["width"], test_sizes["height"])
viz.save_figure(fig, f"{figures}/01_test_image_sizes.png")
fig

# %% [markdown]
# ## The mean face
#
# Every point of the mean normalised shape (centred, RMS radius 1), coloured by its spread over the training
# images: dark points sit at the same place on every face, bright ones move (contours of the jaw, the mouth).

# %%
fig = viz.plot_mean_shape(points[data.train_idx])
viz.save_figure(fig, f"{figures}/01_mean_shape.png")
fig

# %% [markdown]
# ## Where are the faces, and which crop keeps them?
#
# Left: the centre of each face's landmark box, as a share of the image width and height; right: the face's
# width as a share of the image width. The table places the crop of each `crop_mode` on every training image
# (`face` crops from the labels, as in training; at test time a coarse model places them) and reports the share
# of points outside the image and outside the crop, the share of images the crop cuts, and the face's size in
# crop pixels: the resolution the network gets for the face.

# %%
fig = viz.plot_face_placement(points, train_sizes["width"], train_sizes["height"])
viz.save_figure(fig, f"{figures}/01_face_placement.png")
fig

# %%
coverage = workflow.crop_coverage(points, train_sizes["width"], train_sizes["height"], params["crop_size"],
                                  params["face_scale"])
coverage.round(2)

# %% [markdown]
# ## Mirror permutation
#
# Horizontal flips (augmentation and test-time averaging) need to know which point becomes which when a face is
# mirrored; the layout is undocumented, so it is estimated from the training shapes
# (`geometry.estimate_mirror_permutation`). It must be an involution (applying it twice gives the identity), and the
# mean face mirrored through it should land on itself: red rings on blue dots below, a small mirror error (in units
# of the face's RMS radius). Points whose mirror lands more than 10 % of that radius from their partner have no
# partner (`geometry.mirror_unmatched`): training leaves them out of the loss on flipped images and flip TTA keeps
# their unflipped prediction. Many of them would mean a wrong mirror axis.

# %%
perm = data.flip_perm()
mirror_err = geometry.mirror_error(points[data.train_idx], perm)
pd.Series({"points": len(perm), "mirror pairs": int((perm > np.arange(len(perm))).sum()),
           "midline points": int((perm == np.arange(len(perm))).sum()),
           "involution": bool((perm[perm] == np.arange(len(perm))).all()), "mirror error": mirror_err,
           "points without a partner": len(data.flip_unmatched())},
          dtype=object)

# %%
fig = viz.plot_mirror_check(geometry.mean_shape(points[data.train_idx]), perm, error=mirror_err)
viz.save_figure(fig, f"{figures}/01_mirror_check.png")
fig

# %% [markdown]
# ## Labels that look wrong by shape
#
# Each labelled shape is aligned to the mean shape (position, scale, rotation) and its residual is the RMS distance
# of its points to the mean's. Shapes above `median + noise_threshold · 1.4826 · MAD` of all residuals are flagged
# (a robust cut that the few bad labels do not inflate). A high residual is not always an error (an open mouth,
# a turned head); the pictures tell.

# %%
residuals, point_residuals = workflow.shape_residuals(points, per_point=True)
shape_flags = noise.flag_outliers(residuals, params["noise_threshold"])
shape_table = pd.DataFrame({"file_name": data.names, "residual": residuals, "flagged": shape_flags})
print(f"{int(shape_flags.sum())} of {len(shape_flags)} training shapes flagged "
      f"(cut {noise.robust_cut(residuals, params['noise_threshold']):.3f})")
shape_table.sort_values("residual", ascending=False).head(10)

# %% [markdown]
# The training images with the largest shape residuals, labels in red:

# %%
fig = viz.gallery(load_train, None, points, residuals, which="worst", n=params["num_figures"], names=data.names,
                  error_label="residual")
viz.save_figure(fig, f"{figures}/01_shape_outliers.png")
fig

# %% [markdown]
# The worst one, each point coloured by its own distance to the mean shape (after alignment): where the labels
# disagree with an ordinary face.

# %%
worst = int(np.argmax(residuals))
fig = viz.show_points(load_train(worst), points[worst], values=point_residuals[worst],
                      title=f"{data.names[worst]}: shape residual {residuals[worst]:.3f}")
viz.save_figure(fig, f"{figures}/01_worst_shape.png")
fig

# %% [markdown]
# ## Conclusion: which crop
#
# - **centre** (the course baseline) crops the centre square of the shorter side: it cuts the faces that sit off
#   centre (`images_cut_pct`; on the synthetic data faces are placed anywhere, on real photos they are roughly
#   centred), and the face fills only part of the crop (`face_px_median`), so much of the network's resolution goes
#   to background.
# - **letterbox** keeps every point inside the crop, at the price of an even smaller face.
# - **face** puts the face at about `1 / face_scale` of the crop side, so the network sees it at the highest
#   resolution for a given `crop_size`. At test time the face box is unknown: a coarse letterbox model
#   (`coarse_crop_size`, `coarse_epochs`) predicts the points first and the face crop is placed from them.
#
# On the real stand-in data faces are about 40 % of the image width and roughly centred, so centre crops waste
# most of their pixels; the default `crop_mode` is therefore `face`, with a coarse model placing the crop.
