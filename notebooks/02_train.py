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
# # 02 · Training
#
# Trains the landmark regressor on the data that `01_eda` checked, in the same `run_dir`:
#
# - with `crop_mode = "face"`, first a **coarse** model on letterboxed whole images (`coarse_crop_size`,
#   `coarse_epochs`) whose predictions place the face crops at test time;
# - then the **train** stage: the main model on crops of `crop_size`, `epochs` epochs at `lr`.
#
# Each stage writes `checkpoints/<stage>_last.pt` after every epoch and `<stage>_best.pt` (lowest validation MSE
# in original pixels), so an interrupted run resumes where it stopped when this notebook runs again with the same
# parameters. The curves come from `history.csv`.

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
# Derived values: the resolved parameters, the data folder (the synthetic default of `01_eda` when `data_dir` is
# empty), the figure folder and torch's CPU thread count (`threads`; 0 = torch's default).

# %%
# %matplotlib inline
import os

import pandas as pd

from landmarks_lib import engine, viz, workflow

params = workflow.params_from_namespace(globals())
params["data_dir"] = workflow.resolve_data_dir(params)
torch_threads = workflow.apply_threads(params)
figures = os.path.join(params["run_dir"], "figures")
history_path = os.path.join(params["run_dir"], "history.csv")

# %% [markdown]
# ## Train
#
# Crops are cached once per geometry (`cache_dir`), so later epochs, notebooks and runs read them from a
# memory-mapped file instead of decoding images again. Each epoch prints its training loss and validation MSE.

# %%
data = engine.load_train_data(params)
result = engine.train_all(params, data, params["run_dir"])
history = pd.read_csv(history_path)
history.groupby("stage", sort=False).agg(epochs=("epoch", "max"), best_val_mse=("val_mse", "min"),
                                         last_train_loss=("train_loss", "last"), seconds=("time_s", "max"))

# %% [markdown]
# ## Training curves
#
# Training loss (in the loss's own units, on augmented crops), validation MSE (original pixels², the contest
# metric, without test-time flips) and the learning rate, epoch by epoch across stages. A validation curve that
# turns up while the training loss keeps falling means overfitting; one that is still falling means more epochs
# would help.

# %%
fig = viz.plot_history(history_path)
viz.save_figure(fig, f"{figures}/02_history.png")
fig

# %% [markdown]
# ## Training on several GPUs
#
# A notebook kernel is a single process, so data-parallel training runs as a separate command that writes the
# same run folder (`landmarks_lib.train` runs this notebook's `engine.train_all` under `torchrun`):
#
# ```bash
# torchrun --standalone --nproc_per_node N -m landmarks_lib.train \
#     --data-dir DIR --run-dir DIR --params params/gpu.yaml
# ```
#
# `batch_size` stays the global batch (each of the `N` processes takes `batch_size // N`). From a notebook, run
# it in a cell, e.g. `!torchrun --standalone --nproc_per_node 4 -m landmarks_lib.train --data-dir {data_dir}
# --run-dir {run_dir} --params ../params/gpu.yaml` (or with `subprocess.run([...], check=True)`), then skip the
# training cell above and continue with `03_finetune` on the same `run_dir`: it reads `checkpoints/train_best.pt`,
# `checkpoints/coarse_best.pt` and `history.csv`. Running this notebook afterwards with the same parameters
# finds the finished stages and only draws the curves.
