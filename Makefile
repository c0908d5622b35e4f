# `make demo` and `make test` work on a fresh clone with nothing installed beyond Python >= 3.10.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision are pinned together: mismatched pairs fail to import torchvision (and timm with it).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-fast demo demo-images demo-images-seeds study2d smc2d table1 lint bench bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) -e ".[dev,pretrained]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check lit_mcmc callbacks tests

bench: $(STAMP)
	$(PY) -m lit_mcmc.benchmarks.samplers

# Training ms/step and guided sampling samples/s of the paper's CIFAR networks per precision, compiled or not (GPU).
bench-gpu: $(STAMP)
	$(PY) -m lit_mcmc.benchmarks.gpu --out runs/bench/gpu

# The 2D product experiment (Table 1) at a reduced budget: < 10 min on 2 cores. See docs/results.md.
demo: $(STAMP)
	$(PY) -m lit_mcmc.experiments.toy2d --preset demo --trials 1 --out runs/demo --jobs 2

# MNIST guided sampling (the CIFAR-100 experiment at CPU scale): 4 models trained, 7 samplers x 1000 digits,
# accuracy and classifier-feature FID. 24 min measured on 2 cores. See docs/results.md.
demo-images: $(STAMP)
	$(PY) -m lit_mcmc.experiments.mnist --preset demo --out runs/mnist --jobs 2

# Every demo-images row with 3 sampling seeds, differences from Reverse marked (reuses demo-images' trained models).
demo-images-seeds: $(STAMP)
	$(PY) -m lit_mcmc.experiments.mnist --preset seeds --out runs/mnist --jobs 2

# When the MH correction matters: papers' vs tuned step sizes, 5 trials, score and energy models (30 min on 2 cores).
study2d: $(STAMP)
	$(PY) -m lit_mcmc.experiments.study2d --preset study --trials 5 --out runs/study --jobs 2

# Particle resampling (SMC) in 2D: oracle, energy and score samplers with and without it at equal NFE, 5 trials.
smc2d: $(STAMP)
	$(PY) -m lit_mcmc.experiments.study2d --preset smc --trials 5 --out runs/smc2d --jobs 2

# The paper's budget: 15 001 training steps, 2000 samples, 10 trials (about 27 h on 2 CPU cores).
table1: $(STAMP)
	$(PY) -m lit_mcmc.experiments.toy2d --preset paper --trials 10 --out runs/table1 --jobs 2

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
