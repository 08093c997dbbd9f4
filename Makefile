# FLARE22-style challenge harness. `make help` lists the targets.
SHELL := /bin/bash
REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PYTHON ?= python3
DOCKER ?= /usr/bin/docker
BASE_IMAGE ?= flare-base:bookworm
IMAGE ?= flare-predictor:latest
TEAM ?= baseline
DEMO ?= out/demo
PYTEST_ARGS ?=

.PHONY: help setup install engine base image submission test test-fast lint typecheck demo clean phantoms challenge

help:
	@echo "make setup       everything the demo and tests need (root, Debian/Ubuntu): packages, engine, base image"
	@echo "make install     pip-install the harness with CPU torch and test extras"
	@echo "make engine      install/start a Docker engine (docker/engine.sh)"
	@echo "make base        build the local offline base image $(BASE_IMAGE)"
	@echo "make image       build the predictor image IMAGE=$(IMAGE) (builds the base if missing)"
	@echo "make submission  TEAM=name [IMAGE=image] [FORCE=1]: save IMAGE (default name:latest) as name.tar.gz holding name:latest"
	@echo "make phantoms    10 synthetic CT cases with labels in data/phantoms"
	@echo "make challenge   TEAMS=DIR_OF_ARCHIVES IMAGES=IMAGES_DIR LABELS=LABELS_DIR OUT=DIR: the organizer's whole chain"
	@echo "make demo        main job on built-in sample data: phantoms -> image -> monitored run -> scores"
	@echo "make test        the whole test suite (Docker tests need the engine; GPU tests skip without a GPU)"
	@echo "make lint        ruff"
	@echo "make typecheck   mypy on every package (configured in pyproject.toml)"

setup:
	PYTHON=$(PYTHON) BASE_IMAGE=$(BASE_IMAGE) bash docker/setup.sh

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[test]'

engine:
	bash docker/engine.sh

base:
	BASE_IMAGE=$(BASE_IMAGE) bash docker/base/build.sh $(BASE_IMAGE)

image:
	BASE_IMAGE=$(BASE_IMAGE) bash docker/build_image.sh $(IMAGE)

# IMAGE only when given (on the command line or in the environment): without it, TEAM:latest is saved.
submission:
	FORCE=$(FORCE) bash $(REPO)/docker/save_submission.sh $(TEAM) $(if $(filter command line environment,$(origin IMAGE)),$(IMAGE))

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast:
	$(PYTHON) -m pytest -m "not docker and not slow" $(PYTEST_ARGS)

phantoms:
	$(PYTHON) -m phantoms --out data/phantoms --count 10 --seed 0

lint:
	$(PYTHON) -m ruff check .

typecheck:
	$(PYTHON) -m mypy

challenge:
	$(PYTHON) -m organizer challenge --teams $(TEAMS) --images $(IMAGES) --labels $(LABELS) --out $(OUT)

demo:
	bash docker/demo.sh $(DEMO)

clean:
	rm -rf out .pytest_cache .ruff_cache
