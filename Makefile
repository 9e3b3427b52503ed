# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/worker.toml
# `make run` is paced so a person can watch it checkpoint and stop it mid-way (1,000,000 numbers
# take about 10 s); `make run RATE=0` runs at full speed.
RATE ?= 100000
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck unit docker-test bench chaos clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

## run: set up, generate the input if missing, run the worker (Ctrl+C stops it; run again resumes)
run: setup
	$(BIN)/checkpoint-worker generate --if-missing --config $(CONFIG)
	$(BIN)/checkpoint-worker run --config $(CONFIG) --max-rate $(RATE)

## test: lint, type-check, then every test (Docker tests skip without an engine unless REQUIRE_DOCKER=1)
test: lint typecheck unit

lint: setup
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

typecheck: setup
	$(BIN)/mypy

# Coverage data of every process the tests start (`patch = subprocess`), combined at the end; a
# worker killed while saving its data leaves a torn file, removed here before the next run. The
# floor (`fail_under`) is the whole suite's: a run of some tests (PYTEST_ARGS) reports, not fails.
unit: setup
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report=term $(if $(PYTEST_ARGS),--cov-fail-under=0) $(PYTEST_ARGS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

docker-test: setup
	REQUIRE_DOCKER=1 $(BIN)/python -m pytest -m docker $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* .hypothesis

## bench: the performance figures against baselines (prints a table, writes bench/results/latest.json)
bench: setup
	$(BIN)/python -m bench

## chaos: the fault-injection and bad-input campaign (prints a table of faults and outcomes)
chaos: setup
	$(BIN)/python -m tests.chaos
