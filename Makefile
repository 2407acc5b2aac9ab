# gpubatch — the commands people run. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# uv installs from uv.lock (every extra pinned). It is bootstrapped from the package index into
# its own small venv, pinned here, so no curl installer and no system uv is needed.
UV_VERSION := 0.13.9
UV_HOME := .uv
UV := $(UV_HOME)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_SYSTEM_CERTS ?= 1
PYTEST := $(PY) -m pytest
export PYTHONUNBUFFERED := 1

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# --- setup -----------------------------------------------------------------------------------
# `uv sync --frozen` installs exactly what uv.lock pins and never re-resolves; on an up-to-date
# venv it returns in well under a second, so it runs every time instead of behind a stamp.
$(UV):
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1; then \
	  echo "[setup] installing python3-venv (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv; fi
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

.PHONY: venv
venv: $(UV) ## .venv with gpubatch and the whole test stack, exactly as uv.lock pins it
	@$(UV) sync --frozen --extra dev

.PHONY: venv-runtime
venv-runtime: $(UV) ## .venv with gpubatch and what the test bed needs (no test stack)
	@$(UV) sync --frozen --inexact --extra testbed

.PHONY: lock
lock: $(UV) ## re-resolve uv.lock after editing dependencies in pyproject.toml
	$(UV) lock

.PHONY: lock-check
lock-check: $(UV) ## fail when pyproject.toml and uv.lock disagree
	$(UV) lock --check

.PHONY: testbin
testbin: ## build (once, cached by version) etcd, kube-*, kubectl, kwok, helm from Go modules
	@bash tests/testbed/testbin.sh

.PHONY: realnode-packages
realnode-packages: ## Debian packages a real test-bed node needs (containerd, runc, CNI, buildah, ...; root)
	@bash tests/testbed/realnode/packages.sh

# Built here rather than inside the first real-node test, so a cold build (minutes) is not
# counted against that test's timeout; cached by a hash of their inputs.
.PHONY: realnode-images
realnode-images: venv realnode-packages ## build (once, cached) the real node's pause, base, worker and operator images (root)
	@if [ "$$(id -u)" = 0 ]; then PYTHONPATH=tests $(PY) -m testbed images; \
	else echo "[realnode-images] not root: skipped (the realnode tests skip too)"; fi

# --- checks and tests ------------------------------------------------------------------------
.PHONY: lint
lint: venv lock-check ## lock in step with pyproject, ruff, mypy --strict, import layering
	$(VENV)/bin/ruff check operator/src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: unit
unit: venv ## every test without a control plane: the pure, process and fake-client tiers
	$(PYTEST) -m "unit or process or fakeclient" -q

.PHONY: pure
pure: venv ## pure tests only (no subprocess, no server): the quickest check
	$(PYTEST) -m unit -q

.PHONY: process
process: venv ## tests that start processes or loopback servers (worker, gpubatch run, S3 stand-in)
	$(PYTEST) -m process -q

.PHONY: fakeclient
fakeclient: venv ## the reconcile against an in-memory Kubernetes client with injected faults
	$(PYTEST) -m fakeclient -q

.PHONY: integration
integration: venv testbin ## tests against the real control plane test bed
	$(PYTEST) -m integration -q

.PHONY: realnode
realnode: venv testbin realnode-images ## tests on a real node: real containers from locally built images (root)
	$(PYTEST) -m realnode -q

.PHONY: test
test: venv testbin kueue-bin lint realnode-images ## everything CI runs: lint, unit, integration, real-node and benchmark-smoke tests
	$(PYTEST) -m "unit or process or fakeclient or integration or bench or realnode" -q --durations=15

# --- benchmarks and chaos (results: tests/bench/results/, quoted in BENCHMARKS.md) ----------
.PHONY: bench
bench: venv testbin ## full-size benchmarks: gpubatch vs Indexed Job vs raw client (tens of minutes)
	@command -v parallel >/dev/null || { echo "[bench] installing GNU parallel (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq parallel; }
	cd tests && ../$(PY) -m bench

.PHONY: chaos
chaos: venv testbin ## chaos runs: SIGKILL the operator, restart apiserver/etcd, delete a node
	cd tests && ../$(PY) -m bench.chaos --tasks 2000

.PHONY: helm-lint
helm-lint: testbin ## lint the Helm chart
	$$(bash tests/testbed/testbin.sh --print)/helm lint charts/gpubatch-operator --strict --kube-version 1.34.0

.PHONY: crd
crd: venv ## generate the CRD from the pydantic models into crds/ and the chart (tests check both)
	$(PY) -m gpubatch.api.crdgen > crds/gpubatches.gpubatch.io.yaml.new
	mv crds/gpubatches.gpubatch.io.yaml.new crds/gpubatches.gpubatch.io.yaml
	$(MAKE) --no-print-directory chart-crd-sync

.PHONY: chart-crd-sync
chart-crd-sync: ## copy the canonical CRD into the chart (a unit test checks they are identical)
	cp crds/gpubatches.gpubatch.io.yaml charts/gpubatch-operator/crds/

.PHONY: e2e-kind
e2e-kind: venv ## the user's path on a kind cluster with real images (needs Docker and kind; not run in CI)
	bash tests/e2e/kind_e2e.sh

# --- the test bed for people -----------------------------------------------------------------
# REAL_NODE=1 adds one real node (containerd + kubelet on this machine, real containers; root).
REAL_NODE ?=
# KUEUE=N adds Kueue's manager with a queue `gpus` of N GPUs (docs/kueue.md).
KUEUE ?=
.PHONY: testbed-up
testbed-up: venv-runtime testbin $(if $(REAL_NODE),realnode-packages) $(if $(KUEUE),kueue-bin) ## start the local control plane with fake GPU nodes (REAL_NODE=1: and a real one; KUEUE=N: and Kueue with an N-GPU queue; prints export KUBECONFIG=...)
	@PYTHONPATH=tests $(PY) -m testbed up $(if $(REAL_NODE),--real-node) $(if $(KUEUE),--kueue $(KUEUE))

.PHONY: kueue-up
kueue-up: ## the test bed with Kueue's manager and a 4-GPU queue `gpus` (same as make testbed-up KUEUE=4)
	@$(MAKE) --no-print-directory testbed-up KUEUE=$(or $(KUEUE),4)

.PHONY: kueue-bin
kueue-bin: ## build (once, cached per version) Kueue's manager from its Go module (tests/testbed/kueue.sh)
	@tests/testbed/kueue.sh >/dev/null

.PHONY: testbed-down
testbed-down: venv-runtime ## stop the local test bed
	@PYTHONPATH=tests $(PY) -m testbed down

.PHONY: demo
demo: venv-runtime testbin ## the main job on a local default: test bed + operator + a demo batch on mixed fake GPUs
	@PYTHONPATH=tests $(PY) -m testbed demo

.PHONY: clean
clean: ## remove the venv and caches (not the Go binary cache)
	rm -rf $(VENV) $(UV_HOME) .mypy_cache .ruff_cache .pytest_cache .hypothesis
