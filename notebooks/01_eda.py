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
# A run's parameters live in `<run_dir>/params.yaml` (written by the runner or by the first notebook run on it);
# a new run starts from the spec's defaults (the embedded synthetic demo) or `profile`, then `overrides`.
# `python -m landmarks_lib.params` lists every parameter with its default, scope and help.

# %% tags=["parameters"]
run_dir = "runs/default"    # the run folder (in Jupyter: relative to this notebook's folder)
profile = ""                # YAML profile for a new run, e.g. "../params/cpu.yaml" (a run's params.yaml wins)
overrides = {}              # parameter values, e.g. {"epochs": 3}; they are written into the run's params.yaml
num_examples = 8            # images in the example gallery
shape_threshold = 6.0       # flag a shape when its residual exceeds median + threshold * MAD

# %% [markdown]
# `workflow.start` resolves the parameters, creates the run folder, writes `params.yaml` and `run_info.json`
# (commit, package versions, data fingerprint) and resolves the data folder (the synthetic default is written once
# on first use).

# %%
# %matplotlib inline
import numpy as np
import pandas as pd

from landmarks_lib.core import geometry
from landmarks_lib.data import symmetry, validate
from landmarks_lib.evaluation import eda
from landmarks_lib.reporting import viz
from landmarks_lib.runs import workflow
from landmarks_lib.training import engine, noise

params, run = workflow.start("01_eda", globals())
pd.Series(run.read_info(), dtype=object)

# %% [markdown]
# ## Is the dataset valid?
#
# `validate_dataset` reads both tables and every image header. **Fatal** problems (unreadable rows, missing or
# broken images, malformed `test_points.csv`, ...) stop the notebook here with the list of files and lines;
# warnings and notes are listed for reading.

# %%
report = validate.validate_dataset(params["data_dir"], bad_rows=params["bad_rows"],
                                   allow_links_outside=params["allow_links_outside"],
                                   data_format=params["data_format"])
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
points = data.point_view()  # original pixels, converted block by block where used: memory stays bounded
pd.Series({"training images": len(data.names), "test images": report.num_test,
           "points per face": data.table.num_points, "train split": len(data.train_idx),
           "validation split": len(data.val_idx), "split by": data.split,
           "rows skipped": len(data.table.skipped)}, dtype=object)

# %% [markdown]
# A few training images with their labels (magenta), as stored: every point in original pixels.

# %%
load_train = workflow.image_loader(data.image_dir, data.names)
fig = viz.gallery(load_train, None, points, None, which=np.arange(min(num_examples, len(points))),
                  names=data.names)
viz.save_figure(fig, run.figure("01_examples"))
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
viz.save_figure(fig, run.figure("01_train_image_sizes"))
fig

# %%
fig = viz.plot_size_histogram(test_sizes["width"], test_sizes["height"])
viz.save_figure(fig, run.figure("01_test_image_sizes"))
fig

# %% [markdown]
# ## The mean face
#
# Every point of the mean normalised shape (centred, RMS radius 1), coloured by its spread over the training
# images: dark points sit at the same place on every face, bright ones move (contours of the jaw, the mouth).
# Figures that would not change with more faces are drawn from a seeded sample of at most
# `geometry.SHAPE_SAMPLE` faces, and say so in their titles; counts and per-image statistics cover every image.

# %%
fig = viz.plot_mean_shape(data.point_view(data.train_idx))
viz.save_figure(fig, run.figure("01_mean_shape"))
fig

# %% [markdown]
# ## Where are the faces, and which crop keeps them?
#
# Left: the centre of each face's landmark box, as a share of the image width and height; right: the face's
# width as a share of the image width. The table places the crop of each `crop_mode` on every training image
# (`face` crops from the labels, as in training; at test time the localizer places them) and reports the share
# of points outside the image and outside the crop, the share of images the crop cuts, and the face's size in
# crop pixels: the resolution the network gets for the face.

# %%
fig = viz.plot_face_placement(points, train_sizes["width"], train_sizes["height"])
viz.save_figure(fig, run.figure("01_face_placement"))
fig

# %%
coverage = pd.DataFrame(eda.crop_coverage(points, train_sizes["width"], train_sizes["height"],
                                               params["crop_size"], params["face_scale"]))
coverage.round(2)

# %% [markdown]
# ## Mirror permutation
#
# Horizontal flips (augmentation and test-time averaging) need to know which point becomes which when a face is
# mirrored; the layout is undocumented, so it is estimated from the training shapes
# (`symmetry.estimate_mirror_permutation`, from at most 2,000 training shapes; the mirror error below from a seeded
# sample of at most `geometry.SHAPE_SAMPLE`). It must be an involution (applying it twice gives the identity), and the
# mean face mirrored through it should land on itself: red rings on blue dots below, a small mirror error (in units
# of the face's RMS radius). Points whose mirror lands more than 10 % of that radius from their partner have no
# partner (`symmetry.mirror_unmatched`): training leaves them out of the loss on flipped images and flip TTA keeps
# their unflipped prediction. Many of them would mean a wrong mirror axis.

# %%
perm = data.flip_perm()
train_shapes = data.point_view(data.train_idx)[eda.sample_rows(len(data.train_idx))]  # seeded sample
mirror_err = symmetry.mirror_error(train_shapes, perm)
pd.Series({"points": len(perm), "mirror pairs": int((perm > np.arange(len(perm))).sum()),
           "midline points": int((perm == np.arange(len(perm))).sum()),
           "involution": bool((perm[perm] == np.arange(len(perm))).all()), "mirror error": mirror_err,
           "points without a partner": len(data.flip_unmatched())},
          dtype=object)

# %%
fig = viz.plot_mirror_check(geometry.mean_shape(train_shapes), perm, error=mirror_err)
viz.save_figure(fig, run.figure("01_mirror_check"))
fig

# %% [markdown]
# ## Labels that look wrong by shape
#
# Each labelled shape is aligned to the reference shape (position, scale, rotation; the reference is the robust
# mean of a seeded sample, `eda.shape_reference`) and its residual is the RMS distance of its points to the
# reference's; every shape gets its residual. Shapes above `median + shape_threshold · 1.4826 · MAD` of all
# residuals are flagged (a robust cut that the few bad labels do not inflate). A high residual is not always an
# error (an open mouth, a turned head); the pictures tell.

# %%
reference = eda.shape_reference(points)
residuals = eda.shape_residuals(points, reference=reference)
shape_flags = noise.flag_outliers(residuals, shape_threshold)
shape_table = pd.DataFrame({"file_name": data.names, "residual": residuals, "flagged": shape_flags})
print(f"{int(shape_flags.sum())} of {len(shape_flags)} training shapes flagged "
      f"(cut {noise.robust_cut(residuals, shape_threshold):.3f})")
shape_table.sort_values("residual", ascending=False).head(10)

# %% [markdown]
# The training images with the largest shape residuals, labels in magenta:

# %%
fig = viz.gallery(load_train, None, points, residuals, which="worst", n=num_examples, names=data.names,
                  error_label="residual")
viz.save_figure(fig, run.figure("01_shape_outliers"))
fig

# %% [markdown]
# The worst one, each point coloured by its own distance to the mean shape (after alignment): where the labels
# disagree with an ordinary face.

# %%
worst = int(np.argmax(residuals))
_, point_residuals = eda.shape_residuals(points[worst:worst + 1], per_point=True, reference=reference)
fig = viz.show_points(load_train(worst), points[worst], values=point_residuals[0],
                      title=f"{data.names[worst]}: shape residual {residuals[worst]:.3f}",
                      value_label="distance to the mean shape, shape radii")
viz.save_figure(fig, run.figure("01_worst_shape"))
fig

# %% [markdown]
# ## Conclusion: which crop
#
# - **center** (the course baseline) crops the centre square of the shorter side: it cuts the faces that sit off
#   centre (`images_cut_pct`; on the synthetic data faces are placed anywhere, on real photos they are roughly
#   centred), and the face fills only part of the crop (`face_px_median`), so much of the network's resolution goes
#   to background.
# - **letterbox** keeps every point inside the crop, at the price of an even smaller face.
# - **face** puts the face at about `1 / face_scale` of the crop side, so the network sees it at the highest
#   resolution for a given `crop_size`. At test time the face box is unknown: the letterbox localizer
#   (`localizer_crop_size`, `localizer_epochs`, ...) predicts the points first and the face crop is placed from
#   them.
#
# On the real stand-in data faces are about 40 % of the image width and roughly centred, so centre crops waste
# most of their pixels; the default `crop_mode` is therefore `face`, with the localizer placing the crop.

# %%
workflow.finish("01_eda", params, run)
