# The two user-facing commands: `make demo` and `make test`. Each bootstraps uv (via pip when it is
# missing), creates .venv from the committed uv.lock, then does its job.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/uv/bin/uv)
VENV := .venv
STAMP := $(VENV)/.synced
DEMO_DIR ?= runs/demo

.PHONY: demo test lint bench env clean

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools/uv uv

$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --quiet --compile-bytecode
	touch $(STAMP)

env: $(STAMP)

test: lint
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(VENV)/bin/python -m megastarid.demo --output-dir $(DEMO_DIR)

# bench/gpu_check.py (and its gpu_sections.py) is for a lent CUDA machine; the tests run its --smoke
bench: $(STAMP)
	for b in $(filter-out bench/gpu_check.py bench/gpu_sections.py,$(wildcard bench/*.py)); do \
		$(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache .mypy_cache
