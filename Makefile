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

.PHONY: install deps-system chromium test test-latest lint typecheck demo soak bench lock clean

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

# What the tests need from the system: Chromium (below) and a redis-server binary (the
# shared-budget tests start their own, on a free loopback port). Installed with apt-get when missing and we are root
# (`apt-get update` first only if the install fails); otherwise stop, naming the command.
REDIS_INSTALL := apt-get install -y redis-server
deps-system: chromium
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server (the shared-budget tests run a real one)"; \
	    DEBIAN_FRONTEND=noninteractive $(REDIS_INSTALL) -q >/dev/null 2>&1 || { \
	      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive $(REDIS_INSTALL) -q >/dev/null; }; \
	  fi; \
	  command -v redis-server >/dev/null 2>&1 || { \
	    echo "redis-server is missing; install it with: sudo $(REDIS_INSTALL)" >&2; exit 2; }; }

test: deps-system lint typecheck
	$(BIN)/pytest

# tests/test_report.py opens the report's HTML page in a real headless Chromium (the Debian
# package). Installed here when missing and we are root; otherwise the target stops and says how.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; \
	  else \
	    echo "make test needs Chromium (tests/test_report.py): sudo apt-get install -y chromium" >&2; \
	    exit 1; \
	  fi; }

# The suite on the newest releases pyproject.toml allows, in a throwaway environment: run it
# before `make lock`, and whenever a dependency publishes a release (it is what a user who
# runs `pip install growthhub-async` today gets).
test-latest: deps-system | $(UV)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(UV) venv --quiet --python $(PYTHON) "$$tmp/venv"; \
	VIRTUAL_ENV="$$tmp/venv" $(UV) pip install --quiet --resolution highest -e '.[dev]'; \
	VIRTUAL_ENV="$$tmp/venv" $(UV) pip list --quiet 2>/dev/null | grep -E -i '^(aiohttp|msgspec|aiolimiter|backoff) '; \
	"$$tmp/venv/bin/pytest" -p no:cacheprovider

# The full soak (20,000 records under faults, about a minute); `make test` runs a short one.
soak: $(STAMP)
	$(BIN)/pytest -m slow tests/test_soak.py

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
