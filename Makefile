# The two commands of the README:
#   make run   - set up a virtualenv and run all three services on the embedded defaults
#   make test  - set up a virtualenv, lint, type-check (mypy --strict) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-quick bench bench-core bench-e2e bench-deps lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# tus-js-client for the tus end-to-end tests: `npm ci` from the lock file, again only when it
# changes. Without npm the JS tests skip and say so (tests/e2e/test_tus_clients.py).
TUS_JS := tests/tus/node_modules/.installed-stamp
$(TUS_JS): tests/tus/package.json tests/tus/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/tus --no-audit --no-fund && touch $@; \
	else \
		echo "tus-js: npm NOT FOUND: the tus-js-client tests will be SKIPPED (install Node.js >= 18)"; \
	fi

run: $(STAMP)
	$(VENV)/bin/lucid-sessions up

test: $(STAMP) $(TUS_JS)
	$(VENV)/bin/ruff check sessions tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest

# The same without the tests marked heavy (crash loops, fuzzing, long runs): for a developer's loop.
test-quick: $(STAMP)
	$(VENV)/bin/ruff check sessions tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "not heavy"

bench-core: $(STAMP)
	$(PY) -m bench.core

# The rivals of the end-to-end benchmark (restic, borg): Debian packages, installed only if missing.
bench-deps:
	@if command -v restic >/dev/null 2>&1 && command -v borg >/dev/null 2>&1; then \
		echo "bench-deps: restic and borg present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y restic borgbackup; \
	else \
		echo "bench-deps: restic/borg missing and cannot install them here (not root, or no apt-get)."; \
		echo "bench-deps: install them with: sudo apt-get update && sudo apt-get install -y restic borgbackup"; \
		echo "bench-deps: bench.e2e will skip the missing rival(s) and say so."; \
	fi

# End-to-end: the three services on loopback vs restic and borg on the same file.
# Extra flags: make bench-e2e BENCH_E2E_ARGS='--size-mib 256 --rounds 1'
bench-e2e: $(STAMP) bench-deps
	$(PY) -m bench.e2e $(BENCH_E2E_ARGS)

bench: bench-deps bench-core bench-e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check sessions tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
