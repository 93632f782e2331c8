# ptft_fast — one Makefile: setup, test, lint, bench, demo.
# Each target creates/uses its own virtualenv ($(VENV)) and installs what it needs.
# DeepSpeed installs without prebuilt ops (DS_BUILD_OPS=0; it JIT-builds what it needs).
# TORCH_SPEC pins the torch build: torch==2.13.0 is the CPU wheel on CPU-only machines here;
# on a CUDA machine pass e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index, or pre-install torch.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint format bench bench-micro bench-micro-save bench-micro-compare demo csrc-check clean

setup: $(VENV)/.ptft-installed

$(VENV)/.ptft-installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation -e ".[test,deepspeed]"
	touch $@

# The whole suite on this machine (GPU tests skip without a GPU; Triton kernels run under
# TRITON_INTERPRET=1 on CPU). pytest's exit 5 (no tests collected) fails the target.
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(PY) -m pytest -q $(MICRO) --benchmark-disable

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(VENV)/bin/ptft bench all --plot benchmarks/results/all.png

# pytest-benchmark microbenchmarks of the CPU reference path (fwd+bwd of the four ops). Saved runs
# live in $(MICRO_STORAGE)/<machine>/NNNN_<name>.json; compare fails when the fastest round (min)
# is > 10 % slower than in the latest saved run. The min, not the median: even on an idle 2-core
# machine medians drift by ~12 % between identical runs, minimums stay within a few per cent.
# Compare on the machine that saved the baseline (MICRO_FAIL=median:10% for the median).
MICRO := benchmarks/test_micro_reference.py
MICRO_FAIL ?= min:10%
MICRO_STORAGE := benchmarks/results/pytest-benchmark
MICRO_ARGS := --benchmark-only --benchmark-storage=$(MICRO_STORAGE) --benchmark-min-rounds=20 \
	--benchmark-columns=min,median,iqr,ops,rounds

bench-micro: setup
	$(PY) -m pytest -q $(MICRO) $(MICRO_ARGS)

bench-micro-save: setup
	$(PY) -m pytest -q $(MICRO) $(MICRO_ARGS) --benchmark-save=baseline

bench-micro-compare: setup
	$(PY) -m pytest -q $(MICRO) $(MICRO_ARGS) --benchmark-compare --benchmark-compare-fail=$(MICRO_FAIL)

# Main job on the embedded default (no download).
demo: setup
	$(VENV)/bin/ptft pretrain --config configs/pretrain-bert-tiny.yaml

csrc-check: setup
	PYTHON=$(PY) bash .ci/check_csrc.sh

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
