# The first two targets are the README's first two commands.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
export NO_ALBUMENTATIONS_UPDATE := 1
export GX_ANALYTICS_ENABLED := false
export ORT_DISABLE_TELEMETRY := 1
export FEAST_USAGE := False

.PHONY: demo test venv setup up down status test-services bench-ingest clean

demo: venv            ## the main job on the embedded profile (bootstraps the venv if needed)
	$(PY) -m gymops demo

test: venv            ## the whole test suite (service tests skip outside CI when a service is down)
	$(PY) -m pytest -q

venv: $(VENV)/.gymops-stamp
$(VENV)/.gymops-stamp: requirements.txt requirements-triton.txt pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh

setup: venv           ## feast apply + database for the current profile (GYMOPS_PROFILE)
	$(PY) -m gymops setup

up: venv setup        ## Dagster UI + ingestion endpoint (+ RabbitMQ consumer on services), in the background
	scripts/up.sh start

down:                 ## stop what `make up` started (by PID)
	scripts/up.sh stop

status:
	scripts/up.sh status

bench-ingest: venv    ## bench/ingest: events/s end to end, both paths; writes bench/results/ingest.json
	$(PY) -m bench.ingest

clean:                ## remove the embedded profile's state (var/ and the version folders its deployments wrote)
	rm -rf var
	rm -rf triton_models/*/[0-9]*/ triton_models/*/.tmp-*/
