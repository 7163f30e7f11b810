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
# # 03 · Label noise, finetuning, evaluation and the submission
#
# 1. **Noisy labels**: the trained model (`checkpoints/train_best.pt` from `02_train`) predicts every training
#    image; images whose NME against their own labels is far above the others' (`median + noise_threshold ·
#    1.4826 · MAD`) are flagged. Such labels usually are wrong (shifted, mirrored or mismatched), as a small share
#    of the contest's are.
# 2. **Finetune**: training continues from `train_best` at `finetune_lr` for `finetune_epochs`, with flagged images
#    kept, dropped or down-weighted (`noise_action`).
# 3. **Evaluate** on the validation images exactly as on the test set (raw image → coarse model → face crop →
#    model → original pixels, with flip TTA), predict the test images and write `submission.csv` (validated against
#    `test_points.csv`) and `metrics.json`. With `max_test_images` below the number of test images the submission
#    is `submission_partial.csv` instead: only those rows, not for upload.

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
# Derived values: the resolved parameters, the data folder, the figure folder and torch's CPU thread count
# (`threads`; 0 = torch's default).

# %%
# %matplotlib inline
import os

import numpy as np
import pandas as pd

from landmarks_lib import engine, viz, workflow

params = workflow.params_from_namespace(globals())
params["data_dir"] = workflow.resolve_data_dir(params)
torch_threads = workflow.apply_threads(params)
figures = os.path.join(params["run_dir"], "figures")

# %% [markdown]
# ## Noisy labels and the finetune stage
#
# `run_finetune` writes the per-image table to `noise.csv` and then finetunes (resuming like the train stage). The
# run's final model is whichever of `train_best.pt` and `finetune_best.pt` has the lower validation MSE.

# %%
data = engine.load_train_data(params)
finetune = workflow.run_finetune(params, data)
noise_table = finetune["noise"]
print(f"{int(noise_table['flagged'].sum())} of {int((noise_table['split'] == 'train').sum())} training labels "
      f"flagged; final model: {finetune['checkpoint']}")
noise_table.sort_values("nme", ascending=False).head(10)

# %% [markdown]
# The training images the model disagrees with most (worst NME against their labels; flagged ones are marked):
# labels in green, the model's prediction in red, a yellow segment from each label to its prediction. Long
# segments all pointing one way mean a shifted label; segments crossing the face mean mirrored or swapped points.

# %%
worst = noise_table[noise_table["split"] == "train"].nlargest(params["num_figures"], "nme")
worst_idx = worst.index.to_numpy()
worst_pred = workflow.predict_training_images(params, data, workflow.checkpoint_path(params["run_dir"], "train"),
                                              worst_idx)
worst_names = (worst["file_name"] + np.where(worst["flagged"], " FLAGGED", "")).to_numpy()
fig = viz.gallery(workflow.image_loader(data.image_dir, np.asarray(data.names)[worst_idx]),
                  data.points(worst_idx), worst_pred, worst["nme"].to_numpy(), which=np.arange(len(worst_idx)),
                  names=worst_names, error_label="NME%")
viz.save_figure(fig, f"{figures}/03_noisy_labels.png")
fig

# %% [markdown]
# ## Validation, test predictions and the submission
#
# `ensemble_checkpoints` is this run's final model plus those of `ensemble_runs` (averaged in original pixels).
# The validation metrics are in original pixels: `val_mse` (the contest's metric), `val_nme` (percent of the
# landmark box size), the CED's AUC and failure rate at NME 10 %, and the same without validation images whose
# labels the robust rule flags (`*_clean`).

# %%
checkpoints = workflow.ensemble_checkpoints(params)
val_pred, val_metrics = workflow.evaluate_validation(params, data, checkpoints, exclude_flagged=True)
test_points, test_pred = workflow.predict_test(params, params["data_dir"], checkpoints)
metrics = workflow.write_results(params, test_points, test_pred, val_metrics, val_pred)
submission_csv = workflow.submission_file(params["run_dir"])
partial = os.path.basename(submission_csv) == workflow.PARTIAL_SUBMISSION
print(f"{'partial submission (max_test_images; not for upload)' if partial else 'submission'}: {submission_csv} "
      f"({len(test_points)} rows, {2 * test_points.indices.shape[1]} value columns, validated against "
      f"{'the first rows of ' if partial else ''}test_points.csv)")
pd.Series(metrics, name="value").to_frame()
