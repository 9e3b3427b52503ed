# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/worker.toml
# `make run` is paced so a person can watch it checkpoint and stop it mid-way (1,000,000 numbers
# take about 10 s); `make run RATE=0` runs at full speed.
RATE ?= 100000
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck unit docker-test kafka-test kafka-jars bench chaos clean

# The Kafka end-to-end tests start a real broker (tests/kafka_broker.py) and are required: a
# broker that cannot start fails them. `REQUIRE_KAFKA=0 make test` lets them skip instead.
export REQUIRE_KAFKA ?= 1

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

## test: lint, type-check, then every test (Docker tests skip without an engine unless
## REQUIRE_DOCKER=1; the Kafka tests start a real broker and are required)
test: lint typecheck kafka-jars unit

lint: setup
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

docker-test: setup
	REQUIRE_DOCKER=1 $(BIN)/python -m pytest -m docker $(PYTEST_ARGS)

## kafka-jars: resolve the test broker's jars from Maven Central once (kafka/pom.xml, cached)
kafka-jars: setup
	$(BIN)/python -m tests.kafka_broker fetch

## kafka-test: the Kafka end-to-end tests against a real broker, never skipped
kafka-test: setup kafka-jars
	REQUIRE_KAFKA=1 $(BIN)/python -m pytest -m kafka $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .hypothesis

## bench: the performance figures against baselines (prints a table, writes bench/results/latest.json)
bench: setup
	$(BIN)/python -m bench

## chaos: the fault-injection and bad-input campaign (prints a table of faults and outcomes)
chaos: setup
	$(BIN)/python -m tests.chaos
