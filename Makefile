# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/worker.toml
# `make run` is paced so a person can watch it checkpoint and stop it mid-way (1,000,000 numbers
# take about 10 s); `make run RATE=0` runs at full speed.
RATE ?= 100000
PYTEST_ARGS ?=
# The fuzzer: clang's libFuzzer with AddressSanitizer and UBSan over the kernel's C core.
CLANG ?= clang
FUZZER := build/fuzz/kernel_fuzz
FUZZ_SECONDS ?= 600

.PHONY: setup run test lint typecheck alerts unit fuzz fuzz-smoke docker-test kafka-test kafka-jars bench chaos clean

# The Kafka end-to-end tests start a real broker (tests/kafka_broker.py) and are required: a
# broker that cannot start fails them. `REQUIRE_KAFKA=0 make test` lets them skip instead.
export REQUIRE_KAFKA ?= 1

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The native parts are compiled by the editable install; a changed C file is compiled again.
$(BIN)/.kernel: $(BIN)/.installed service/core/_kernel.c service/lifecycle/_deadline.c setup.py
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The package's bytecode, written here (only what changed): where PYTHONDONTWRITEBYTECODE is set,
# as on some machines, every worker would otherwise compile service/ again at each start.
setup: $(BIN)/.installed $(BIN)/.kernel
	@$(BIN)/python -m compileall -q service

## run: set up, generate the input if missing, run the worker (Ctrl+C stops it; run again resumes)
run: setup
	$(BIN)/checkpoint-worker generate --if-missing --config $(CONFIG)
	$(BIN)/checkpoint-worker run --config $(CONFIG) --max-rate $(RATE)

## test: lint, type-check, fuzz the kernel briefly, then every test (Docker tests skip without an
## engine unless REQUIRE_DOCKER=1; the Kafka tests start a real broker and are required)
test: lint typecheck alerts fuzz-smoke kafka-jars unit

lint: setup
	$(BIN)/ruff check service tests bench examples
	$(BIN)/ruff format --check service tests bench examples

typecheck: setup
	$(BIN)/mypy

## alerts: the Prometheus rules (deploy/prometheus/) checked and unit-tested with promtool
alerts:
	@command -v promtool >/dev/null || { \
	  echo "alerts: promtool not found; install it: apt-get install -y prometheus (.ci/run does)" >&2; \
	  exit 1; }
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts.test.yml

# Coverage data of every process the tests start (`patch = subprocess`), combined at the end; a
# worker killed while saving its data leaves a torn file, removed here before the next run. The
# floor (`fail_under`) is the whole suite's: a run of some tests (PYTEST_ARGS) reports, not fails.
unit: setup
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report=term $(if $(PYTEST_ARGS),--cov-fail-under=0) $(PYTEST_ARGS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

$(FUZZER): tests/fuzz/kernel_fuzz.c service/core/_kernel.c
	@command -v $(CLANG) >/dev/null || { \
	  echo "fuzz: $(CLANG) not found; install it: apt-get install -y clang (.ci/run does)" >&2; \
	  exit 1; }
	@mkdir -p $(@D)/corpus
	$(CLANG) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -o $@ $<

## fuzz: the kernel under libFuzzer + ASan + UBSan for FUZZ_SECONDS (default 600); corpus kept
fuzz: $(FUZZER)
	$(FUZZER) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=$(<D)/ \
	  $(<D)/corpus tests/fuzz/seeds

## fuzz-smoke: the same for 30 s, part of `make test`; a finding prints its log and fails
fuzz-smoke: $(FUZZER)
	@echo "fuzz: 30 s of $(FUZZER) (ASan + UBSan)"
	@$(FUZZER) -max_total_time=30 -print_final_stats=1 -artifact_prefix=$(<D)/ \
	  $(<D)/corpus tests/fuzz/seeds > $(<D)/smoke.log 2>&1 \
	  && grep -E '^(kernel_fuzz: path|stat::(number_of_executed_units|new_units_added))' $(<D)/smoke.log \
	  || { tail -n 40 $(<D)/smoke.log; echo "fuzz: the kernel failed under the fuzzer;" \
	       "the input is in $(<D)/ (crash-*), the log in $(<D)/smoke.log" >&2; exit 1; }

docker-test: setup
	REQUIRE_DOCKER=1 $(BIN)/python -m pytest -m docker $(PYTEST_ARGS)

## kafka-jars: resolve the test broker's jars from Maven Central once (deploy/kafka/pom.xml, cached)
kafka-jars: setup
	$(BIN)/python -m tests.kafka_broker fetch

## kafka-test: the Kafka end-to-end tests against a real broker, never skipped
kafka-test: setup kafka-jars
	REQUIRE_KAFKA=1 $(BIN)/python -m pytest -m kafka $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* .hypothesis

## bench: the performance figures against baselines (prints a table, writes bench/results/latest.json);
## Polars and DuckDB, baselines only, go into their own pip target, not the product's venv
BENCH_BASELINES := bench/results/baselines
$(BENCH_BASELINES)/.installed:
	$(BIN)/pip install --quiet --target $(BENCH_BASELINES) polars duckdb
	touch $@

bench: setup $(BENCH_BASELINES)/.installed
	$(BIN)/python -m bench

## chaos: the fault-injection and bad-input campaign (prints a table of faults and outcomes)
chaos: setup
	$(BIN)/python -m tests.chaos
