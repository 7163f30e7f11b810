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
# - with `crop_mode = "face"`, first the **localizer** on letterboxed whole images (`localizer_crop_size`,
#   `localizer_epochs`, ...) whose predictions place the face crops at test time;
# - then the **train** stage: the main model on crops of `crop_size`, `epochs` epochs at `lr`.
#
# Each stage writes `checkpoints/<stage>_last.pt` after every epoch and `<stage>_best.pt` (lowest validation MSE
# in original pixels), so an interrupted run resumes where it stopped when this notebook runs again. A finished
# stage is not trained again unless a parameter it reads changed; then this notebook stops, listing the change,
# until `retrain = True` (the localizer reads only the `data` and `localizer` scopes, so changing `epochs` keeps
# it). The curves come from `history.csv`.

# %% [markdown]
# ## Parameters
# A run's parameters live in `<run_dir>/params.yaml` (written by the runner or by the first notebook run on it);
# a new run starts from the spec's defaults (the embedded synthetic demo) or `profile`, then `overrides`.
# `python -m landmarks_lib.params` lists every parameter with its default, scope and help.

# %% tags=["parameters"]
run_dir = "runs/default"    # the run folder (in Jupyter: relative to this notebook's folder)
profile = ""                # YAML profile for a new run, e.g. "../params/cpu.yaml" (a run's params.yaml wins)
overrides = {}              # parameter values, e.g. {"epochs": 3}; they are written into the run's params.yaml
retrain = False             # train again the stages whose parameters changed (else such a change stops)

# %% [markdown]
# `workflow.start` resolves the parameters (the run's `params.yaml`, then `overrides`), resolves the data folder
# (the synthetic default of `01_eda` when `data_dir` is empty) and sets torch's CPU thread count (`threads`).

# %%
# %matplotlib inline

from landmarks_lib.reporting import viz
from landmarks_lib.runs import workflow
from landmarks_lib.training import engine

params, run = workflow.start("02_train", globals())

# %% [markdown]
# ## Train
#
# Crops are cached once per geometry (`cache_dir`), so later epochs, notebooks and runs read them from a
# memory-mapped file instead of decoding images again. Each epoch prints its training loss and validation MSE.

# %%
data = engine.load_train_data(params)
result = engine.train_all(params, data, run, retrain=retrain)
history = run.read_history()
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
fig = viz.plot_history(history)
viz.save_figure(fig, run.figure("02_history"))
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
# `checkpoints/localizer_best.pt` and `history.csv`. Running this notebook afterwards with the same parameters
# finds the finished stages and only draws the curves.

# %%
workflow.finish("02_train", params, run)
