# Every target installs what it needs: a fresh clone needs only python3 >= 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck demo soak bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check growthhub_async tests benchmarks
	$(BIN)/ruff format --check growthhub_async tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict growthhub_async

test: lint typecheck
	$(BIN)/pytest

# The full soak (20,000 records under faults, about a minute); `make test` runs a short one.
soak: $(STAMP)
	$(BIN)/pytest -m slow tests/test_soak.py

# The benchmark suite (about 10 minutes: the memory run streams 1,000,000 records); writes
# benchmarks/results/*.json and the table in benchmarks/README.md. uvloop figures need the
# `speed` extra: $(BIN)/pip install -e '.[speed]'.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

demo: $(STAMP)
	$(BIN)/growthhub-async demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
