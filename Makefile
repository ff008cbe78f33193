# Working on the template. `make` lists the targets; `make test` is what CI runs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYNCED := $(VENV)/.synced
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

DEMO_DIR ?= $(CURDIR)/build/demo
# The demo's torch index: PyTorch's CPU index when it answers, else pip's configured indexes only.
DEMO_TORCH_INDEX_URL ?= $(shell $(PYTHON) -c "import urllib.request as r; u = 'https://download.pytorch.org/whl/cpu'; r.urlopen(u + '/', timeout=5); print(u)" 2>/dev/null)
# The demo's torch release: the template's default, or without PyTorch's index the offline one
# (pyproject.toml's tool.template.offline-torch), rather than PyPI's multi-GB CUDA build.
DEMO_TORCH ?= $(if $(DEMO_TORCH_INDEX_URL),,$(shell sed -n 's/^offline-torch = "\(.*\)"/\1/p' pyproject.toml))
PYTEST_ARGS ?=
ONLY ?=

# The container tests need an engine, compose and debootstrap (Debian packages), and the Dev Containers
# CLI (npm, pinned with its hash in tests/node/package-lock.json).
CONTAINER_PACKAGES := docker.io docker-compose debootstrap
NODE_TOOLS := tests/node/node_modules/.installed
# The SLURM tests run a one-node cluster (slurmctld, slurmd, munged) and shellcheck the sbatch script.
SLURM_PACKAGES := slurm-wlm munge shellcheck

.PHONY: help demo test test-fast lint lock locks bench clean container-tools bench-tools slurm-tools

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The generated project's bootstrap: its pinned uv, installed by pip with hash checking, then
# syncing this environment (the tests find uv on PATH here).
PROJECT := {{cookiecutter.project_slug}}
BOOTSTRAP := $(PROJECT)/requirements/bootstrap.txt
LOCKTOOL := $(PY) '$(PROJECT)/tools/locktool.py'

$(SYNCED): requirements/dev.txt $(BOOTSTRAP)
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@[ -x $(VENV)/bin/uv ] || $(LOCKTOOL) bootstrap '$(BOOTSTRAP)'
	$(VENV)/bin/uv pip sync --quiet --python $(PY) --require-hashes $$($(LOCKTOOL) uv-sources) \
	  requirements/dev.txt '$(BOOTSTRAP)'
	@touch $@

demo: $(SYNCED) ## Bake the default project (CPU build) into build/demo and train it
	rm -rf $(DEMO_DIR)
	$(PY) -m cookiecutter --no-input --output-dir $(DEMO_DIR) . cuda_version=cpu $(if $(DEMO_TORCH),torch_version=$(DEMO_TORCH))
	$(MAKE) -C $$(ls -d $(DEMO_DIR)/*/) train TORCH_INDEX_URL=$(DEMO_TORCH_INDEX_URL)

# $(call ensure-packages,commands,Debian packages,what needs them): install when a command is
# missing and this is a root shell with apt; otherwise say what will skip.
define ensure-packages
@missing=$$(for tool in $(1); do command -v $$tool >/dev/null || echo $$tool; done); \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
    echo "Installing $(2) for $(3)"; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get install -y -qq $(2) >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq $(2) >/dev/null; } \
      || echo "note: could not install $(2); $(3) will skip"; \
  else echo "note: missing $$missing; $(3) will skip"; fi; \
fi
endef

container-tools: $(NODE_TOOLS)
	$(call ensure-packages,dockerd docker-compose debootstrap,$(CONTAINER_PACKAGES),the container tests)

$(NODE_TOOLS): tests/node/package-lock.json
	@command -v npm >/dev/null || { echo "note: npm is missing; the dev container tests will skip"; exit 0; }; \
	  npm ci --prefix tests/node --no-audit --no-fund --silent && touch $@

bench-tools:
	$(call ensure-packages,wrk,wrk,the serving benchmark)

slurm-tools:
	$(call ensure-packages,slurmctld slurmd munged shellcheck,$(SLURM_PACKAGES),the SLURM tests)

test: $(SYNCED) container-tools slurm-tools ## Run the whole test suite (bakes, real envs, training, Docker builds)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(SYNCED) ## Run the quick subset (no slow end-to-end tests)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(SYNCED) ## Lint the template's own code
	$(PY) -m ruff check hooks tests benchmarks tools
	$(PY) -m ruff format --check hooks tests benchmarks tools

# The one date every lock is resolved as of: the project template's, which bakes carry.
LOCK_DATE = $(shell sed -n 's/^\([0-9][^ ]*\)$$/\1/p' $(PROJECT)/requirements/lock-date)

lock: $(SYNCED) ## Re-lock the template's own requirements/dev.in as of the lock date (UPGRADE=1 upgrades)
	CUSTOM_COMPILE_COMMAND="make lock" $(PY) -m piptools compile --quiet --generate-hashes \
	  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) \
	  --uploaded-prior-to $(LOCK_DATE) --output-file requirements/dev.txt requirements/dev.in

locks: $(SYNCED) ## Refresh every shipped lock (locks/) and the template's own (UPGRADE=1: as of now)
	TORCH_INDEX_URL=$(DEMO_TORCH_INDEX_URL) $(PY) tools/refresh_locks.py $(if $(UPGRADE),--upgrade)
	$(MAKE) --no-print-directory lock

bench: $(SYNCED) container-tools bench-tools ## Print the figures (first run, loop, serving, images...; ONLY="first-run")
	TORCH_INDEX_URL=$(DEMO_TORCH_INDEX_URL) DEMO_TORCH=$(DEMO_TORCH) $(PY) benchmarks/bench.py $(ONLY)

clean: ## Remove the demo, caches and the template's environment
	rm -rf build $(VENV) .pytest_cache .ruff_cache tests/node/node_modules
	find . -name __pycache__ -prune -exec rm -rf {} +
