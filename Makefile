# `make demo` and `make test` work on a fresh clone with nothing installed beyond Python >= 3.10.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision are pinned together: mismatched pairs fail to import torchvision (and timm with it).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-fast demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check lit_mcmc callbacks tests

bench: $(STAMP)
	$(PY) -m lit_mcmc.benchmarks.samplers

demo: $(STAMP)
	$(PY) -m lit_mcmc.benchmarks.samplers

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
