# Every target installs what it needs: a fresh clone needs only python3 >= 3.11 and make.
#
# The environment comes from uv.lock, which pins every package (transitive ones too) with hashes,
# so a new release of a dependency cannot change what `make test` runs. pyproject.toml keeps the
# library's ranges open; `make lock` re-resolves them into uv.lock, `make test-latest` runs the
# suite on the newest releases those ranges allow, without touching the lock.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
UV := $(TOOLS)/bin/uv
STAMP := $(VENV)/.installed
# uv uses this machine's python3 (never downloads one) and builds .venv where the README says.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
SYNC := $(UV) sync --locked --python $(PYTHON) --extra dev

.PHONY: install deps-system test test-latest lint typecheck demo soak bench lock clean

install: $(STAMP)

# uv itself, pinned, in a folder of its own (pip is the one installer every python3 has).
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# --locked: refuse to run when pyproject.toml and uv.lock disagree (run `make lock`).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(SYNC) --quiet
	touch $(STAMP)

lock: | $(UV)
	$(UV) lock --python $(PYTHON) --upgrade

lint: $(STAMP)
	$(BIN)/ruff check growthhub_async tests benchmarks examples
	$(BIN)/ruff format --check growthhub_async tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict growthhub_async examples

# What the tests need from the system, from Debian's packages: a redis-server binary (the
# shared-budget tests start their own, on a free loopback port) and Chromium (tests/test_report.py
# opens the report's page in it, headless). $(call need,COMMAND,PACKAGE,WHY) installs PACKAGE
# with apt-get when COMMAND is missing and we are root (`apt-get update` first only if the
# install fails); otherwise it stops, naming the command to run. WHY must hold no comma.
define need
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(2): $(3)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2) >/dev/null 2>&1 || { \
	      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2) >/dev/null; }; \
	  fi; \
	  command -v $(1) >/dev/null 2>&1 || { \
	    echo "$(1) is missing ($(3)); install it with: sudo apt-get install -y $(2)" >&2; \
	    exit 2; }; }
endef

deps-system:
	$(call need,redis-server,redis-server,the shared-budget tests run a real one)
	$(call need,chromium,chromium,the report tests open its page in headless Chromium)

test: deps-system lint typecheck
	$(BIN)/pytest

# The suite on the newest releases pyproject.toml allows, in a throwaway environment: run it
# before `make lock`, and whenever a dependency publishes a release (it is what a user who
# runs `pip install growthhub-async` today gets).
test-latest: deps-system | $(UV)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(UV) venv --quiet --python $(PYTHON) "$$tmp/venv"; \
	VIRTUAL_ENV="$$tmp/venv" $(UV) pip install --quiet --resolution highest -e '.[dev]'; \
	VIRTUAL_ENV="$$tmp/venv" $(UV) pip list --quiet 2>/dev/null | grep -E -i '^(aiohttp|msgspec|aiolimiter|backoff) '; \
	"$$tmp/venv/bin/pytest" -p no:cacheprovider

# The slow tests: the full soak (20,000 records under faults, about a minute; `make test` runs
# a short one) and the web workers benchmark's smoke run (uvicorn workers, Redis).
soak: $(STAMP) deps-system
	$(BIN)/pytest -m slow tests/test_soak.py tests/test_benchmarks_smoke.py

# The benchmark suite (about 10 minutes: the memory run streams 1,000,000 records); writes
# benchmarks/results/*.json and the table in benchmarks/README.md. The uvloop figures come from
# the `speed` extra, which this target adds to the environment.
bench: $(STAMP)
	$(SYNC) --quiet --extra speed
	$(BIN)/python -m benchmarks

demo: $(STAMP)
	$(BIN)/growthhub-async demo

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .coverage
