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
# 3. **Evaluate** on the validation images exactly as on the test set (raw image → localizer → face crop →
#    model → original pixels, with flip TTA), predict the test images and write `submission.csv` (validated against
#    `test_points.csv`) and `metrics.json`. With `max_test_images` below the number of test images the submission
#    is `submission_partial.csv` instead: only those rows, not for upload.

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
# `workflow.start` resolves the parameters (the run's `params.yaml`, then `overrides`), the data folder and
# torch's CPU thread count (`threads`).

# %%
# %matplotlib inline
import pandas as pd

from landmarks_lib.reporting import viz
from landmarks_lib.runs import workflow
from landmarks_lib.training import engine

params, run = workflow.start("03_finetune", globals())

# %% [markdown]
# ## Noisy labels and the finetune stage
#
# `run_finetune` writes the per-image table to `noise.csv` and then finetunes (resuming like the train stage). The
# run's final model, `model.pt`, holds the localizer, whichever of `train_best.pt` and `finetune_best.pt` has the
# lower validation MSE, and this notebook's inference settings; `04_visualize` shows the noisiest labels.

# %%
data = engine.load_train_data(params)
finetune = workflow.run_finetune(params, data, run, retrain=retrain)
noise_table = finetune["noise"]
print(f"{int(noise_table['flagged'].sum())} of {int((noise_table['split'] == 'train').sum())} training labels "
      f"flagged; final model: {finetune['model']} (face model from the {finetune['source']} stage)")
noise_table.sort_values("nme", ascending=False).head(10)

# %% [markdown]
# ## Validation, test predictions and the submission
#
# `ensemble_models` is this run's final model plus those of `ensemble_runs` (averaged in original pixels).
# The validation metrics are in original pixels: `val_mse` (the contest's metric), `val_nme` (percent of the
# landmark box size), the CED's AUC and failure rate at NME 10 %, and the same without validation images whose
# labels the robust rule flags (`*_clean`). The robustness set re-frames each validation image once (seed 0): an
# aspect ratio from 0.4 to 2.5, the face anywhere and down to a fifth of the frame, and in about a third of them a
# smaller second face pasted further from the centre. `robust_mse` and `robust_nme` score it like the validation
# set; `robust_off_face` counts the images whose final face crop missed the face (under 90 % of the labelled points
# inside, or a side outside 0.7-1.5x the labelled face's).

# %%
models = workflow.ensemble_models(params, data.table.num_points)
val_pred, val_metrics = workflow.evaluate_validation(params, data, models, exclude_flagged=True)
robust_metrics, robust, robust_set = workflow.evaluate_robustness(params, data, models)
val_metrics.update(robust_metrics)
test_points, test_pred, test_faces = workflow.predict_test(params, params["data_dir"], models, with_faces=True)
metrics = workflow.write_results(params, run, test_points, test_pred, val_metrics, val_pred, test_faces)
print(workflow.results_summary(run, test_points))
pd.Series(metrics, name="value").to_frame()

# %% [markdown]
# ## The robustness set's worst images
# The whole re-framed image, labels in cyan, prediction in magenta; titles give the image's MSE (px²) and
# confidence. A prediction on the pasted second face, or a crop on the background, shows here first.

# %%
fig = viz.robustness_gallery(robust_set, robust, n=8)
viz.save_figure(fig, run.figure("03_robust_worst"))
fig

# %%
workflow.finish("03_finetune", params, run)
