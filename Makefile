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

# ---------------------------------------------------------------- local control plane (e2e/)
# Binaries are built once per machine into $(K2T_CACHE)/bin/<versions key>/ (e2e/build/versions.env).
CAMPUS ?= e2e/campus/small.yaml
CLUSTER ?= default
KUBERAY ?= 1
HARNESS := PYTHONPATH=$(CURDIR)/e2e $(PY) -m harness

.PHONY: binaries bindir cluster-up cluster-down cluster-status harness-smoke

## binaries: build (or reuse) kube-apiserver, controller-manager, scheduler, kubectl, etcd, kwok, ray-operator, helm
binaries:
	@bash e2e/scripts/build-binaries.sh

## bindir: print only the absolute directory holding every binary (builds what is missing)
bindir:
	@bash e2e/scripts/build-binaries.sh

## cluster-up: start the campus (CAMPUS=..., KUBERAY=0|1, CLUSTER=name) and print `export KUBECONFIG=...`
cluster-up: venv
	@$(HARNESS) up --name $(CLUSTER) --campus $(CAMPUS) $(if $(filter 1,$(KUBERAY)),--with-kuberay,)

## cluster-down: stop every process of the campus and remove its state
cluster-down: venv
	@$(HARNESS) down --name $(CLUSTER)

cluster-status: venv
	@$(HARNESS) status --name $(CLUSTER)

## harness-smoke: start a throw-away campus with KubeRay, schedule GPU pods and a RayCluster, tear down
harness-smoke: venv
	$(PY) -m pytest -q -p no:cacheprovider e2e/test_harness_smoke.py

## test-dataplane: serve for real on CPU (Ray Serve LLM + vLLM, tiny model); installs .venv-dataplane
.PHONY: test-dataplane
test-dataplane:
	bash e2e/dataplane/run.sh
