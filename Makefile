# The README's two commands are `make test` and `make up`. Each works on a fresh machine with
# Python 3.11+ and pip: uv is installed with pip when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV_PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: help uv sync torch test test-unit lint fmt bench manifests up images

help:
	@echo "make test       install everything (uv sync) and run the whole test suite"
	@echo "make up         run the local stack (dev gateway on 127.0.0.1:8000)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make bench      the routing benchmark (llmd bench; BENCH_ARGS=--smoke for a short run)"
	@echo "make manifests  render every Kustomize overlay into build/manifests/"
	@echo "make images     build every service image (where Docker runs)"

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
	  || $(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --user uv

# --inexact keeps the CPU torch that `torch` adds outside the lock (see below).
sync: uv
	$(UV) sync --frozen --all-packages --inexact
	@$(VENV_PY) -c "import torch" >/dev/null 2>&1 || $(MAKE) --no-print-directory torch

# The expert-router's data plane needs torch. PyPI's Linux wheel drags in several GB of CUDA
# libraries, so CI and laptops take a CPU build: the machine's own wheel when it has one,
# else PyTorch's CPU index, else PyPI.
torch: uv
	@whl=$$(ls /opt/wheels/torch-*+cpu-cp3*-manylinux*_x86_64.whl 2>/dev/null | head -n1 || true); \
	if [ -n "$$whl" ]; then $(UV) pip install --quiet --python $(VENV_PY) "$$whl"; \
	else $(UV) pip install --quiet --python $(VENV_PY) torch --index-url https://download.pytorch.org/whl/cpu \
	  || $(UV) pip install --quiet --python $(VENV_PY) torch; fi

test: sync
	$(UV) run --frozen --no-sync pytest $(PYTEST_ARGS)

lint: sync
	$(UV) run --frozen --no-sync ruff check .
	$(UV) run --frozen --no-sync ruff format --check .
	$(UV) run --frozen --no-sync mypy libs/llmd_sdk/src

fmt: sync
	$(UV) run --frozen --no-sync ruff check --fix .
	$(UV) run --frozen --no-sync ruff format .

bench: sync
	$(UV) run --frozen --no-sync llmd bench $(BENCH_ARGS)

# Every overlay rendered to build/manifests/<hardware>/<mode>.yaml (what `kubectl apply -k` applies).
manifests:
	@command -v kubectl >/dev/null 2>&1 || { echo "kubectl is missing: install kubectl >= 1.27 (it ships kustomize v5)"; exit 1; }
	@for o in $$(cd deploy/kustomize/overlays && ls -d */*/ | sed 's#/$$##' | sort); do \
	  mkdir -p build/manifests/$$(dirname $$o); \
	  kubectl kustomize deploy/kustomize/overlays/$$o > build/manifests/$$o.yaml; \
	  echo "build/manifests/$$o.yaml"; done

up: sync
	$(UV) run --frozen --no-sync llmd up $(CONFIG)

# One image per member, tagged <registry>/<package>:<the member's version> (deploy/images.py; says so
# and exits 0 where no Docker engine answers). REGISTRY=... overrides ghcr.io/llm-d/llmd-python.
images:
	@$(PYTHON) deploy/images.py $(if $(REGISTRY),--registry $(REGISTRY)) build
