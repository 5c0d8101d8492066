# k2think-operator — every entry point a developer or CI uses.
# Heavy artefacts (Kubernetes binaries, venvs for the data plane) are cached outside the repo.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export K2T_CACHE ?= $(HOME)/.cache/k2think-operator

.PHONY: venv lint typecheck unit test image

## venv: create .venv with the package and its test extras (idempotent)
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,cachefill]'
	touch $@

## lint: ruff, and the package's layers (.importlinter: no upward import, no cycle; docs/architecture.md)
lint: venv
	$(VENV)/bin/ruff check operator tests e2e
	$(VENV)/bin/ruff format --check operator tests e2e
	$(VENV)/bin/lint-imports
	bash e2e/scripts/actionlint.sh

## image: the operator image from docker/Dockerfile without a Docker daemon (mmdebstrap base +
## buildah --isolation=chroot), as localhost/k2think-operator:<chart appVersion> in buildah's
## local store; a no-op when its inputs are unchanged (docker/build-image.sh, docs/install.md)
image: system-deps
	bash docker/build-image.sh

## typecheck: mypy strict on the package, tests/ and e2e/ (the data-plane helpers separately: their
## conftest.py shares a module name with e2e/'s; vllm/torch are not in .venv and are skipped)
typecheck: venv
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests e2e --exclude '^e2e/dataplane/' --exclude '^e2e/chain/' --exclude '^e2e/userpath/'
	$(VENV)/bin/mypy e2e/dataplane
	$(VENV)/bin/mypy e2e/chain
	$(VENV)/bin/mypy e2e/userpath

## unit: offline tests (models, planner, renderer, status, CLI, Ray schema contracts)
unit: venv
	$(PY) -m pytest -q tests

# ---------------------------------------------------------------- local control plane (e2e/)
# Binaries are built once per machine into $(K2T_CACHE)/bin/<versions key>/ (e2e/build/versions.env).
CAMPUS ?= e2e/campus/small.yaml
CLUSTER ?= default
KUBERAY ?= 1
# KUEUE=1: also run Kueue and the GPU bin-packing scheduler profile (docs/scheduling.md)
KUEUE ?= 0
BINPACK ?= $(KUEUE)
HARNESS := PYTHONPATH=$(CURDIR)/e2e $(PY) -m harness

.PHONY: binaries bindir cluster-up cluster-down cluster-status harness-smoke

## binaries: build (or reuse) kube-apiserver, controller-manager, scheduler, kubectl, etcd, kwok, ray-operator, helm
binaries:
	@bash e2e/scripts/build-binaries.sh

## bindir: print only the absolute directory holding every binary (builds what is missing)
bindir:
	@bash e2e/scripts/build-binaries.sh

## cluster-up: start the campus (CAMPUS=..., KUBERAY=0|1, KUEUE=0|1, BINPACK=0|1, CLUSTER=name) and print `export KUBECONFIG=...`
cluster-up: venv
	@$(HARNESS) up --name $(CLUSTER) --campus $(CAMPUS) $(if $(filter 1,$(KUBERAY)),--with-kuberay,) \
		$(if $(filter 1,$(KUEUE)),--with-kueue,) $(if $(filter 1,$(BINPACK)),--gpu-binpacking,)

## cluster-down: stop every process of the campus and remove its state
cluster-down: venv
	@$(HARNESS) down --name $(CLUSTER)

cluster-status: venv
	@$(HARNESS) status --name $(CLUSTER)

## harness-smoke: start a throw-away campus with KubeRay, schedule GPU pods and a RayCluster, tear down
harness-smoke: venv
	$(PY) -m pytest -q -p no:cacheprovider e2e/test_harness_smoke.py

## test-cache: the model cache on the local control plane (static PV, fill Jobs completed/failed by KWOK)
.PHONY: test-cache
test-cache: venv binaries
	$(PY) -m pytest -q -p no:cacheprovider e2e/test_model_cache.py

## test-dataplane: serve for real on CPU (Ray Serve LLM + vLLM, tiny model); installs .venv-dataplane
.PHONY: test-dataplane
test-dataplane:
	bash e2e/dataplane/run.sh

## bench-ingress: CPU s of the Serve LLM ingress and proxy per request / 1k tokens (heavy lock; not in `test`)
.PHONY: bench-ingress
bench-ingress:
	bash e2e/dataplane/install.sh
	flock /tmp/k2t-heavy.lock unshare -n bash -c 'ip link set lo up && exec .venv-dataplane/bin/python e2e/bench/ingress_capacity.py'

## bench-autoscaling: GPU-hours and TTFT of static / ongoingRequests / latencyTarget on simulated traces (Serve's own policy code; not in `test`)
.PHONY: bench-autoscaling
bench-autoscaling: venv
	$(PY) e2e/bench/autoscaling_sim.py

## bench-routing: TTFT and vLLM prefix-cache hit rate, prefixAware vs powerOfTwo, one run (heavy lock; not in `test`)
.PHONY: bench-routing
bench-routing:
	bash e2e/dataplane/install.sh
	flock /tmp/k2t-heavy.lock unshare -n bash -c 'ip link set lo up && exec .venv-dataplane/bin/python e2e/bench/routing.py'

## test-chain: Serve demand -> Ray autoscaler -> KubeRay -> scheduler -> real Ray nodes (own netns; takes the heavy lock)
## CHAIN_ARGS go to pytest (e.g. CHAIN_ARGS="-k spill")
.PHONY: test-chain test-chain-gpu-pools
test-chain: venv system-deps binaries
	bash e2e/chain/run.sh $(CHAIN_ARGS)

## test-chain-gpu-pools: the GPU pools scenarios alone (H200 -> H100 spill of TP=2 groups, ~10 min on
## 2 cores; `make test-chain` and `make test` run them with the rest)
test-chain-gpu-pools: venv system-deps binaries
	bash e2e/chain/run.sh -k test_10_gpu_pools
## test-observability: alert rules under promtool, dashboard drift, a real Prometheus against the
## operator (e2e) and the Ray head serving a completion (data plane), the chart's monitors on a
## real API server. `make test` runs all of it through unit, e2e and test-dataplane.
.PHONY: test-observability dashboard
test-observability: venv system-deps binaries
	$(PY) -m pytest -q tests/test_alert_rules.py tests/test_dashboard.py tests/test_metrics.py
	$(PY) -m pytest -q -p no:cacheprovider e2e/test_observability.py e2e/install/test_helm_monitoring.py
	bash e2e/dataplane/run.sh -k observability

## dashboard: regenerate the Grafana dashboard JSON (chart + docs) from charts/tools/dashboard.py
dashboard: venv
	$(PY) charts/tools/dashboard.py

# ---------------------------------------------------------------- operator e2e, demo, CI
.PHONY: e2e demo test crds system-deps

## crds: regenerate crds/ from the code (a unit test fails when they drift)
crds: venv
	$(VENV)/bin/k2think-operator crd > crds/k2think.dev_k2thinkdeployments.yaml
	$(VENV)/bin/k2think-operator crd --cache > crds/k2think.dev_k2thinkmodelcaches.yaml
	$(MAKE) manifests

## system-deps: Debian packages the tests need (lua5.4 for the Argo CD health check, prometheus, redis-server; iptables and ipset for the chain ground's NetworkPolicy agent)
system-deps:
	@bash e2e/scripts/install-system-deps.sh

## e2e: the operator against the local control plane (starts its own campus, or uses $$KUBECONFIG)
e2e: venv binaries
	$(PY) -m pytest -q -p no:cacheprovider e2e --ignore=e2e/dataplane --ignore=e2e/bench \
		--ignore=e2e/test_fleet.py --ignore=e2e/chain --ignore=e2e/userpath

## test-fleet: Kueue quotas/queueing/borrowing/preemption and GPU bin-packing on their own campus
.PHONY: test-fleet
test-fleet: venv binaries
	$(PY) -m pytest -q -p no:cacheprovider e2e/test_fleet.py

## test-chaos: the chaos suite alone (e2e/test_chaos.py, own cluster; K2T_CHAOS_N/KILLS/SEED)
.PHONY: test-chaos
test-chaos: venv binaries
	$(PY) -m pytest -q -s -p no:cacheprovider e2e/test_chaos.py

## demo: the README's main job: a simulated GPU campus serving K2-Think through the operator
demo: venv binaries
	$(PY) e2e/demo.py --name $(CLUSTER)

## test: everything CI runs (.ci/run calls this): lint, types, unit, e2e, fleet, data plane, the
## image and the user's path (helm install of that image on the chain ground), then the chain.
## The first four side by side (-j4): the e2e and fleet suites mostly wait on their control
## planes (the four together kept 2 cores 34% busy, and took 11.6 min instead of ~16.5 in a
## row); the suites that run Ray and vLLM each have the machine to themselves.
test: venv system-deps binaries
	$(MAKE) -j4 --output-sync=recurse test-checks test-prepare e2e test-fleet
	$(MAKE) test-dataplane
	$(MAKE) test-userpath
	$(MAKE) test-chain

## test-checks: lint, types and unit tests (no cluster, no Ray)
## test-prepare: the heavy suites' environments (the data-plane venv, the image); `make test` builds
## them beside test-checks, e2e and test-fleet: they mostly wait on the package registries and the disk
.PHONY: test-checks test-prepare
test-checks: venv
	$(MAKE) lint typecheck unit
test-prepare: system-deps
	bash e2e/dataplane/install.sh
	$(MAKE) image

## test-userpath: helm install of the chart with the image `make image` built, the operator running
## as pods from that image, the CPU example served with every production default on (e2e/userpath/)
.PHONY: test-userpath
test-userpath: venv system-deps binaries image
	bash e2e/userpath/run.sh

# ---------------------------------------------------------------- chart, raw manifests, install e2e
# charts/k2think-operator is the source; manifests/ and the chart's CRD copy are generated from it
# and from crds/ (docs/install.md). helm is the pinned one from the bin dir (override: HELM=...).
HELM ?= $(shell bash e2e/scripts/build-binaries.sh)/helm
CHART_DIR := charts/k2think-operator
CHARTGEN := $(PY) charts/tools/chartgen.py

.PHONY: chart-sync manifests check-manifests helm-lint e2e-install

## chart-sync: copy crds/ into the chart and regenerate Chart.yaml's artifacthub.io/crdsExamples
chart-sync: venv
	$(CHARTGEN) sync

## manifests: chart-sync, then `helm template` (cluster mode) into manifests/ (run after `make crds`)
manifests: venv
	$(CHARTGEN) manifests --helm "$(HELM)"

## check-manifests: fail when the chart's CRD, Chart.yaml or manifests/ drift from their sources
check-manifests: venv
	$(CHARTGEN) manifests --check --helm "$(HELM)"

## helm-lint: helm lint --strict and helm template for the defaults and every ci/*.yaml values set
helm-lint:
	@set -e; for f in "" $(wildcard $(CHART_DIR)/ci/*.yaml); do \
		echo "helm lint $(CHART_DIR) $${f:+-f $$f}"; \
		"$(HELM)" lint --strict $(CHART_DIR) $${f:+-f $$f} >/dev/null; \
		"$(HELM)" template t $(CHART_DIR) --kube-version 1.30.0 $${f:+-f $$f} >/dev/null; \
	done

## e2e-install: the install suite alone (chart, manifests, least privilege) on its own campus
## bench-campus: campus-scale benchmark (not in CI, ~20-30 min; docs/benchmarks.md): 1,000 KWOK GPU
## nodes, convergence at N=100/500/1000 vs the floor, memory, idle writes, placement vs CP-SAT
.PHONY: bench-campus
BENCH_VENV ?= .venv-bench
BENCH_ARGS ?=
bench-campus: venv binaries $(BENCH_VENV)/.installed
	$(PY) -u e2e/bench/campus.py --solver-python $(BENCH_VENV)/bin/python \
		--json e2e/.state/campus-bench.json $(BENCH_ARGS)

# OR-Tools in a venv of its own: its protobuf pin conflicts with Ray's in .venv.
$(BENCH_VENV)/.installed: e2e/bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -r e2e/bench/requirements.txt
	touch $@

e2e-install: venv binaries
	$(PY) -m pytest -q -p no:cacheprovider e2e/install
