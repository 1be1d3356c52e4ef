# The two commands of the README: `make demo` and `make test`.
# Each does its own set-up from a clean clone: virtualenv, install, brokers.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint brokers bench soak venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,all,bench,embedded]'
	touch $(STAMP)

venv: $(STAMP)

## RabbitMQ and Mosquitto must be running (started if stopped); pulsar-lite
## and tansu are started by the tests themselves on free ports.
brokers:
	bash scripts/ensure_brokers.sh

## The test suite against real brokers (what .ci/run calls).
test: $(STAMP) brokers
	@$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc = 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy trustgraph_schema trustgraph_pubsub bootstrap

## The main job: a broker (pulsar-lite) and the whole control plane, converged,
## its state shown and one request answered; then everything is stopped.
## BACKEND=kafka|rabbitmq|mqtt|memory picks another broker; `tg-pubsub dev`
## without --until-converged keeps it running until Ctrl-C.
BACKEND ?= pulsar
demo: $(STAMP)
	$(BIN)/tg-pubsub dev --pubsub-backend $(BACKEND) --until-converged

bench: $(STAMP) brokers
	$(BIN)/python -m benchmarks.codec

## The long modes of the reliability tests: a 10-minute mixed-traffic soak per
## broker, 10,000 fuzz cases per service test, 40-second link stalls and a
## two-minute service-kill storm (CI runs 12 s, 1,000, 12 s and 20 s).
soak: $(STAMP) brokers
	TG_SOAK_SECONDS=600 TG_FUZZ_EXAMPLES=10000 TG_STALL_SECONDS=40 TG_KILL_KAFKA=1 TG_STORM_SECONDS=120 \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider -o timeout=1200 \
	  tests/backends/test_soak.py tests/backends/test_stall.py tests/backends/test_kill.py \
	  tests/services/test_fuzz.py tests/services/test_secrets.py tests/services/test_storm.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
