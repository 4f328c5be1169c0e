# Two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# One stamp per kind of install: `make run` needs only what running needs (`pip install -e .`),
# `make test` adds the test extras to the same venv. A test install covers a run install, so
# it renews both stamps; a run install leaves the test stamp alone.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# bench/ may not exist yet in a fresh clone (git keeps no empty directories).
LINT_DIRS := $(wildcard src tests bench)

.PHONY: run test lint typecheck pytest install clean bench

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(TEST_STAMP) $(RUN_STAMP)

install: $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/mailgate migrate
	$(BIN)/mailgate serve

lint: $(TEST_STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/lint-imports --no-cache

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# Two test processes (pytest-xdist): the suite is mostly one core's work waiting on its peers
# (servers, subprocesses, the database); two took it from 11:25 to 7:17 on a 2-core sandbox.
# Each process has its own PostgreSQL database and temporary directories (tests/conftest.py).
# PYTEST_WORKERS=0 runs it in this process (a debugger, -x on the first failure in order).
PYTEST_WORKERS ?= 2

pytest: $(TEST_STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(TEST_STAMP)
	bash bench/setup.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
