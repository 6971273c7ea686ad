# The two commands of the README:
#   make run   - set up a virtualenv and run all three services on the embedded defaults
#   make test  - set up a virtualenv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench bench-core lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lucid-sessions up

test: $(STAMP)
	$(PY) -m pytest

bench-core: $(STAMP)
	$(PY) -m bench.core

bench: bench-core

lint: $(STAMP)
	$(VENV)/bin/ruff check sessions tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
