# On a fresh clone: `make test` (fast lane) or `make demo`. Every target creates .venv when it is missing.
#
# Which torch gets installed (only when .venv has none yet):
#   make test                                                   # TORCH from the default index (on Linux: a CUDA
#                                                               # build with ~17 nvidia-* packages, several GB)
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu  # CPU-only build (~200 MB)
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cu126  # a specific CUDA build
PY ?= python3
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
PIP_TORCH := $(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) )'$(TORCH)'

.PHONY: demo results test test-all lint bench clean-venv

# torch first, on its own, so that TORCH_INDEX decides the build (CPU or CUDA) before anything else pulls one.
$(BIN)/invertible: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "$(PIP_TORCH)"; $(PIP_TORCH); }
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(BIN)/invertible

demo: $(BIN)/invertible
	$(BIN)/invertible reproduce --all --quick --jobs 2 --out runs/demo

# docs/results.md: every reproduction fitted to BUDGET each (measured with JOBS=2: 6m took 19.5 min, 15m 34.5 min).
BUDGET ?= 1h
JOBS ?= 2
results: $(BIN)/invertible
	$(BIN)/invertible reproduce --all --budget $(BUDGET) --jobs $(JOBS) --out runs/results --results docs/results.md

# Fast lane: everything but the tests marked slow.
test: $(BIN)/invertible
	$(BIN)/python -m pytest -x -q -m "not slow" $(PYTEST_ARGS)

# Every test (what CI runs, .ci/run). PYTEST_ARGS="--device cuda" runs the device-aware tests on a GPU.
test-all: $(BIN)/invertible
	$(BIN)/python -m pytest -x -q $(PYTEST_ARGS)

lint: $(BIN)/invertible
	$(BIN)/ruff check src tests benchmarks examples

bench: $(BIN)/invertible
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
