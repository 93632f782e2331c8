# ptft_fast — one Makefile: setup, test, lint, bench, demo.
# Each target creates/uses its own virtualenv ($(VENV)) and installs what it needs.
# DeepSpeed installs without prebuilt ops (DS_BUILD_OPS=0; it JIT-builds what it needs).
# TORCH_SPEC pins the torch build: torch==2.13.0 is the CPU wheel on CPU-only machines here;
# on a CUDA machine pass e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index, or pre-install torch.
# Every other package is pinned by $(LOCK) (exact versions of a green venv, used as pip constraints),
# so an upstream release cannot change what setup installs. `make upgrade-check` tries the newest
# allowed versions in a throw-away venv; `make lock` does that and, when its tests pass, rewrites
# $(LOCK) from it.
# numpy goes in with torch: setup.py imports torch (to decide on the CUDA build), and torch without
# numpy warns "Failed to initialize NumPy" in the middle of an install that is going fine.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
LOCK ?= requirements-lock.txt
UPGRADE_VENV ?= .venv-upgrade
UPGRADE_PY := $(UPGRADE_VENV)/bin/python

.PHONY: setup test test-fast lint format bench bench-micro bench-micro-save bench-micro-compare demo csrc-check \
	upgrade-check lock clean

setup: $(VENV)/.ptft-installed

$(VENV)/.ptft-installed: pyproject.toml setup.py $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip setuptools setuptools-scm wheel
	$(PY) -m pip install -q -c $(LOCK) "$(TORCH_SPEC)" numpy
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation -c $(LOCK) -e ".[test,deepspeed]"
	$(PY) -m pip check
	touch $@

# The newest versions pyproject allows, in a throw-away venv ($(UPGRADE_VENV)), against the fast tests.
upgrade-check:
	rm -rf $(UPGRADE_VENV)
	python3 -m venv $(UPGRADE_VENV)
	$(UPGRADE_PY) -m pip install -q --upgrade pip setuptools setuptools-scm wheel
	$(UPGRADE_PY) -m pip install -q "$(TORCH_SPEC)" numpy
	DS_BUILD_OPS=0 $(UPGRADE_PY) -m pip install -q --no-build-isolation -e ".[test,deepspeed]"
	$(UPGRADE_PY) -m pip check
	$(UPGRADE_PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Regenerate $(LOCK) from a green upgrade-check venv (torch stays with TORCH_SPEC); then commit it
# and let CI run the whole suite on it.
lock: upgrade-check
	{ echo "# Exact versions from a green \`make upgrade-check\` venv ($$(date -u +%F), $$($(UPGRADE_PY) -c 'import platform; print(platform.python_version(), platform.machine())'))."; \
	  echo "# Used as pip constraints by every Makefile target that builds .venv; regenerate: make lock."; \
	  echo "# torch is not here: TORCH_SPEC in the Makefile pins it (the CPU wheel here, a CUDA build elsewhere)."; \
	  $(UPGRADE_PY) -m pip freeze --all --exclude-editable | grep -v -i -E '^(torch|nvidia-[a-z0-9_-]+)=='; \
	} > $(LOCK).new
	mv $(LOCK).new $(LOCK)

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
	rm -rf build *.egg-info .pytest_cache .ruff_cache $(UPGRADE_VENV)
