# genwire — `make up` then `make test`. Everything is cached under $(GENWIRE_HOME), outside the clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GENWIRE_HOME ?= $(HOME)/.cache/genwire
export GENWIRE_HOME
BIN := $(GENWIRE_HOME)/venv/bin
PYTEST_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=
# Instances per service, passed to `genwire up --scale` (e.g. SCALE=gateway=2,preprocess=2);
# empty: the layout of the last run (one of each on a fresh home).
SCALE ?=
# SECURE=1 (or tls): `genwire up --secure` — TLS + SASL/SCRAM + ACLs on Kafka, TLS + password on
# Redis, TLS on the gateway; SECURE=mtls also requires client certificates; SECURE=off: plaintext
# again (docs/security.md). Empty: the mode of the last run. Switching needs `make down` first.
SECURE ?=
# GPU=1: also install the gpu extra (TensorRT; ModelOpt for TensorRT 11's FP16), so the default
# model gets a TensorRT engine for this GPU (docs/model.md, "GPU").
GPU ?=
GPU_EXTRAS := all,dev,gpu

.PHONY: help venv up down status test lint proto proto-check bench chaos gpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

venv: ## create or refresh the virtualenv at the tested versions (GENWIRE_UNLOCKED=1: today's; GPU=1 adds TensorRT)
	@$(if $(filter 1,$(GPU)),GENWIRE_EXTRAS="$${GENWIRE_EXTRAS:-$(GPU_EXTRAS)}" )deploy/native/bootstrap.sh

up: venv ## install what is missing, start Kafka, Redis, Triton, Jaeger and the services (SCALE=gateway=2,..., GPU=1)
	@$(BIN)/genwire up $(if $(SCALE),--scale $(SCALE)) $(if $(SECURE),--secure $(if $(filter 1,$(SECURE)),tls,$(SECURE)))

down: ## stop what `make up` started
	@if [ -x $(BIN)/genwire ]; then $(BIN)/genwire down; else echo "genwire: nothing to stop"; fi

status: ## show what runs where
	@if [ -x $(BIN)/genwire ]; then $(BIN)/genwire status; else echo "genwire: not installed (make up)"; fi

# `up` first: a cold first start (Jaeger's Go build, the default model's training) takes longer
# than pytest's per-test timeout would allow inside a fixture; when all runs, `up` takes seconds.
test: venv lint ## lint, then the whole suite, integration included (starts the stack if needed)
	@$(BIN)/genwire up --no-demo
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv ## ruff, mypy and the import contracts (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

proto: venv ## generate genwire/proto/ from proto/ (the only way to change it)
	$(BIN)/python proto/generate.py

proto-check: venv ## fail if genwire/proto/ differs from what proto/ generates
	$(BIN)/python proto/generate.py --check

bench: venv ## pipeline vs direct Triton on the running stack (BENCH_ARGS="-c 1,2,4 --plot b.png")
	$(BIN)/genwire bench $(BENCH_ARGS)

chaos: venv ## fault suite on the stack (CHAOS_ARGS="--profile full --json c.json"; docs/reliability.md)
	@$(BIN)/genwire up --no-demo
	$(BIN)/genwire chaos $(CHAOS_ARGS)

gpu-check: ## on an NVIDIA GPU: build the engine, GPU tests, TensorRT vs ONNX Runtime figures
	@deploy/gpu/gpu_check.sh
