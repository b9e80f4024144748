# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean-venv

$(BIN)/invertible: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# The CPU wheel of torch first, pinned, so that nothing can pull a multi-GB CUDA build.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(BIN)/invertible

demo: $(BIN)/invertible
	$(BIN)/invertible reproduce --all --quick --out runs/demo

test: $(BIN)/invertible
	$(BIN)/python -m pytest -x -q

lint: $(BIN)/invertible
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/invertible
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done
