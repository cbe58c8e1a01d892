# Two set-up commands on a fresh machine with Python 3.11: `make demo` and `make test`.
SHELL := /bin/bash
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
MARKETDATA_HOME := $(CURDIR)/.marketdata

.PHONY: install test demo seed dev bench clean

install:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode

# Two pytest workers (pytest-xdist): the end-to-end tests wait on daemons and servers as much as
# they compute, so two share this 2-core machine well. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2

test: install
	$(UV) run pytest -n $(TEST_WORKERS) --dist worksteal

# `marketdata seed` against the local emulators (FROM_DATE, TO_DATE, SKIP_<DATASET>=1 apply).
demo: install
	$(UV) run marketdata demo

# Bootstrap: every dataset of the catalog over the last year, from the settings' endpoints.
seed: install
	$(UV) run marketdata seed

# Every speed and memory claim, measured against the emulators; writes bench/RESULTS.md (~50 min).
bench: install
	$(UV) run python bench/bench.py

# The UI, the daemon and the code location (pyproject.toml's [tool.dg]) on http://127.0.0.1:3000.
dev: install
	mkdir -p $(MARKETDATA_HOME)/dagster
	test -f $(MARKETDATA_HOME)/dagster/dagster.yaml \
		|| cp marketdata_assets/dagster_instance.yaml $(MARKETDATA_HOME)/dagster/dagster.yaml
	DAGSTER_HOME=$(MARKETDATA_HOME)/dagster $(UV) run dg dev -h 127.0.0.1 -p 3000

clean:
	rm -rf .marketdata .pytest_cache
