# The two commands a fresh machine needs:  make serve  |  make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODELS ?= efficientnet_lite0 efficientnet_lite0_int8 tiny
HOST   ?= 0.0.0.0
PORT   ?= 8000
ARGS   ?=

.PHONY: serve test lint install models services system-packages bench loadtest workload clean

serve: install models  ## run the server on $(HOST):$(PORT)
	$(BIN)/batchserve serve --host $(HOST) --port $(PORT) $(ARGS)

test: install lint models services system-packages  ## everything CI runs: lint, type checks, the tests
	$(BIN)/python -m pytest $(ARGS)

lint: install  ## ruff (lint, import order) and mypy (through scripts/typecheck.py); both report before it fails
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/python scripts/typecheck.py || status=1; \
	exit $$status

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

models: install  ## build the ONNX graphs that are missing (no-op when built)
	@for m in $(MODELS); do $(BIN)/batchserve models build $$m --if-missing || exit 1; done

services:  ## make sure PostgreSQL answers on 127.0.0.1:5432
	bash scripts/ensure-services.sh

system-packages:  ## Debian packages the tests drive: chromium (UI tests), wrk (bench)
	bash scripts/ensure-system-packages.sh

bench: install models system-packages  ## in-process limit vs server throughput (see docs/performance.md)
	$(BIN)/batchserve bench $(ARGS)

loadtest: install  ## Locust against a running server: make loadtest ARGS="--url http://127.0.0.1:8000 --profile raw"
	$(BIN)/batchserve loadtest $(ARGS)

workload: install  ## 50 labelled photos at once: make workload ARGS="--url http://127.0.0.1:8000"
	$(BIN)/python -m batchserve.loadtest.workload $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
