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
# `test-quick` runs the same checks, without the slow end-to-end tests (real processes,
# a real browser): pytest's own arguments stay out of the loop's word splitting.
test test-quick: install
	@status=0; \
	for check in "ruff check src tests" "ruff format --check src tests" "mypy src" "lint-imports"; do \
		echo "==> $$check"; $(BIN)/$$check || status=1; \
	done; \
	echo '==> pytest $(PYTEST_ARGS)'; $(BIN)/pytest $(PYTEST_ARGS) || status=1; \
	exit $$status

test-quick: PYTEST_ARGS = -m "not slow"

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
