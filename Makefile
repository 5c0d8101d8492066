# k2think-operator — every entry point a developer or CI uses.
# Heavy artefacts (Kubernetes binaries, venvs for the data plane) are cached outside the repo.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export K2T_CACHE ?= $(HOME)/.cache/k2think-operator

.PHONY: venv lint typecheck unit test

## venv: create .venv with the package and its test extras (idempotent)
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check operator tests e2e
	$(VENV)/bin/ruff format --check operator tests e2e

typecheck: venv
	$(VENV)/bin/mypy

## unit: offline tests (models, planner, renderer, status, CLI, Ray schema contracts)
unit: venv
	$(PY) -m pytest -q tests
