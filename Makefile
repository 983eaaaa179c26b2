# modeldeploy: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Marker that the virtual environment holds the project and its dev tools at pyproject.toml's state.
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -e '.[dev]'
	@touch $@

.PHONY: install
install: $(INSTALLED) ## Create .venv and install the project with its test tools.

.PHONY: crds
crds: $(INSTALLED) ## Regenerate crds/ (and the chart's byte-identical copy, and deploy/) from the pydantic models.
	$(BIN)/python -m modeldeploy_operator.crd > crds/modeldeployments.modeldeploy.io.yaml
	cp crds/modeldeployments.modeldeploy.io.yaml charts/modeldeploy/crds/modeldeployments.modeldeploy.io.yaml
	$(MAKE) --no-print-directory manifests  # deploy/ carries the CRD too

.PHONY: lint
lint: $(INSTALLED) ## Ruff lint and the import contracts (pure core stays free of I/O).
	$(BIN)/ruff check .
	$(BIN)/lint-imports --config pyproject.toml

.PHONY: typecheck
typecheck: $(INSTALLED) ## mypy --strict over both packages.
	$(BIN)/mypy

.PHONY: test
test: $(INSTALLED) binaries node-binaries image lint typecheck ## Install and build everything, lint, type-check and run the whole test suite (on the real node).
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(INSTALLED) ## Only the tests that need no cluster.
	$(BIN)/pytest -m "not cluster" $(PYTEST_ARGS)

.PHONY: bench
bench: $(INSTALLED) ## Server vs MLServer 1.7.1 and KServe 0.21 under wrk (venvs in ~/.cache/modeldeploy); writes bench/README.md.
	$(BIN)/python bench/run.py $(BENCH_ARGS)

.PHONY: bench-operator
bench-operator: $(INSTALLED) binaries ## The operator at 10, 100 and 1,000 ModelDeployments on kwok fake nodes; writes bench/README.md.
	bash hack/build-kwok.sh >/dev/null
	$(BIN)/python bench/operator_scale.py $(BENCH_OPERATOR_ARGS)

##@ Packaging

.PHONY: manifests
manifests: ## Render deploy/modeldeploy.yaml (Namespace, CRD, operator) from the Helm chart, and the chart README's values table from values.yaml.
	$(BIN)/python hack/chart_docs.py
	bash hack/render-manifests.sh > deploy/modeldeploy.yaml.tmp && mv deploy/modeldeploy.yaml.tmp deploy/modeldeploy.yaml

.PHONY: helm-lint
helm-lint: ## helm lint the chart (strict) with its default values.
	"$$(bash hack/build-binaries.sh | tail -n 1)/helm" lint --strict charts/modeldeploy

.PHONY: hadolint
hadolint: $(INSTALLED) ## Lint the Dockerfile.
	$(BIN)/hadolint Dockerfile

##@ Local cluster

.PHONY: binaries
binaries: ## Build (once, cached outside the repo) kube-apiserver, etcd, helm, Gateway API CRDs; apt Prometheus.
	bash hack/install-system-deps.sh
	bash hack/build-binaries.sh

.PHONY: node-binaries
node-binaries: ## Real node: build (once, cached) containerd, kubelet, kube-proxy, Prometheus 3, Traefik, CoreDNS, metrics-server, the custom metrics adapter; apt runc, CNI, buildah.
	bash hack/install-system-deps.sh node
	bash hack/build-node-binaries.sh

.PHONY: metrics-server
metrics-server: ## Build (once, cached) only metrics-server and hack/metrics-adapter (metrics.k8s.io and custom.metrics.k8s.io for the HPA; part of node-binaries, which `make test` builds).
	bash hack/build-node-binaries.sh metrics-server metrics-adapter >/dev/null

.PHONY: image
image: $(INSTALLED) ## Build the image with buildah (no Docker daemon, no network inside); OCI archive in ~/.cache/modeldeploy/image.
	bash hack/install-system-deps.sh node
	bash hack/build-image.sh
	bash hack/build-image.sh pause

.PHONY: cluster-up
cluster-up: $(INSTALLED) binaries node-binaries image ## Start the local cluster (real node: containerd, kubelet, Traefik, Prometheus 3) in the background; env in .cache/cluster/env. METRICS_SERVER=1: with metrics-server and the custom metrics adapter (kubectl top, HPA).
	PYTHONPATH=hack $(BIN)/python -m devcluster up $(if $(METRICS_SERVER),--metrics-server)

.PHONY: cluster-down
cluster-down: ## Stop the local cluster started by cluster-up (every process and pod; the node's network and cgroups).
	PYTHONPATH=hack $(BIN)/python -m devcluster down

.PHONY: cluster-status
cluster-status: ## Show the local cluster's env, start-up timings and component pids.
	PYTHONPATH=hack $(BIN)/python -m devcluster status

.PHONY: clean
clean: ## Remove the virtual environment and local caches of this clone.
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

##@ Demo

.PHONY: demo
demo: $(INSTALLED) binaries node-binaries image ## The main job: local cluster, the operator by helm, a model promoted and two bad ones rolled back (a few minutes).
	PYTHONPATH=hack $(BIN)/python -m modeldeploy_demo

.PHONY: demo-down
demo-down: ## Stop what the demo left running: the local cluster with the operator pod (and an operator process of an older demo).
	PYTHONPATH=hack $(BIN)/python -c 'from pathlib import Path; from modeldeploy_demo.workload import stop_pid_file as s; \
	  s(Path(".cache/demo/operator.pid"), "modeldeploy-operator")'
	PYTHONPATH=hack $(BIN)/python -m devcluster down
