# OpenMind: `make run` runs the Week-1 flow on the embedded default; `make test` runs the tests.
# Both set up .venv first (scripts/setup.sh: CPU torch without CUDA).
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup run test bench clean-lake

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/openmind run $(ARGS)

# two processes (pytest-xdist), whole modules each, in collection order: the longest first (tests/conftest.py);
# TEST_PROCS=0: one process
TEST_PROCS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_PROCS) --dist loadfile --no-loadscope-reorder --durations=30 $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(ARGS)

clean-lake:
	rm -rf data_lake/raw data_lake/curated data_lake/quarantine data_lake/runs
