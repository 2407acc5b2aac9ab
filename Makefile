# gpubatch — the commands people run. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST := $(PY) -m pytest
export PYTHONUNBUFFERED := 1

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# --- setup -----------------------------------------------------------------------------------
$(STAMP): pyproject.toml
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1; then \
	  echo "[setup] installing python3-venv (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot]'
	rm -f $(VENV)/.installed-*; touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with gpubatch and its dev tools

.PHONY: testbin
testbin: ## build (once, cached by version) etcd, kube-*, kubectl, kwok, helm from Go modules
	@bash tests/testbed/testbin.sh

# --- checks and tests ------------------------------------------------------------------------
.PHONY: lint
lint: venv ## ruff, mypy --strict, import layering
	$(VENV)/bin/ruff check operator/src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: unit
unit: venv ## fast tests of pure logic
	$(PYTEST) -m unit -q

.PHONY: integration
integration: venv testbin ## tests against the real control plane test bed
	$(PYTEST) -m integration -q

.PHONY: test
test: venv testbin lint ## everything CI runs: lint, unit, integration and benchmark-smoke tests
	$(PYTEST) -m "unit or integration or bench" -q

# --- benchmarks and chaos (results: tests/bench/results/, quoted in BENCHMARKS.md) ----------
.PHONY: bench
bench: venv testbin ## full-size benchmarks: gpubatch vs Indexed Job vs raw client (tens of minutes)
	cd tests && ../$(PY) -m bench

.PHONY: chaos
chaos: venv testbin ## chaos runs: SIGKILL the operator, restart apiserver/etcd, delete a node
	cd tests && ../$(PY) -m bench.chaos --tasks 2000

.PHONY: helm-lint
helm-lint: testbin ## lint the Helm chart
	$$(bash tests/testbed/testbin.sh --print)/helm lint charts/gpubatch-operator --strict --kube-version 1.34.0

.PHONY: chart-crd-sync
chart-crd-sync: ## copy the canonical CRD into the chart (a unit test checks they are identical)
	cp crds/gpubatches.gpubatch.io.yaml charts/gpubatch-operator/crds/

.PHONY: e2e-kind
e2e-kind: venv ## the user's path on a kind cluster with real images (needs Docker and kind; not run in CI)
	bash tests/e2e/kind_e2e.sh

# --- the test bed for people -----------------------------------------------------------------
.PHONY: testbed-up
testbed-up: venv testbin ## start the local control plane with fake GPU nodes (prints export KUBECONFIG=...)
	@PYTHONPATH=tests $(PY) -m testbed up

.PHONY: testbed-down
testbed-down: venv ## stop the local test bed
	@PYTHONPATH=tests $(PY) -m testbed down

.PHONY: demo
demo: venv testbin ## the main job on a local default: test bed + operator + a demo batch on mixed fake GPUs
	@PYTHONPATH=tests $(PY) -m testbed demo

.PHONY: clean
clean: ## remove the venv and caches (not the Go binary cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
