# Two entry points for a fresh machine: `make demo` (set up, run the offline demo workflow) and
# `make test` (set up, run linters and the test suite). Both create ./.venv first.
PYTHON ?= python3
# scripts/install.sh installs torch first, pinned (its default torch==2.13.0: the CPU build from
# this project's machines' local wheel, PyPI's CUDA 13.0 build on a Linux GPU machine), then the
# package; the Docker and Apptainer images run the same script. TORCH=... for another pinned
# build, TORCH_INDEX_URL=... for another index (https://download.pytorch.org/whl/cu128 for older
# drivers, .../whl/cpu), or install torch into .venv yourself before `make setup`.
TORCH ?=
TORCH_INDEX_URL ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint unit docs lock test-oldest-transformers

$(BIN)/spectra: pyproject.toml requirements/constraints.txt scripts/install.sh
	PYTHON="$(PYTHON)" TORCH="$(TORCH)" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" \
		sh scripts/install.sh $(VENV) dev
	touch $@

setup: $(BIN)/spectra

demo: setup
	$(BIN)/snakemake --cores 1 --resources gpu=1

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint
	$(BIN)/hadolint Dockerfile

unit: setup
	$(BIN)/pytest -m "not integration"

test: lint
	$(BIN)/pytest

# docs/configuration.md, rendered from the schema: run after editing it (tests/test_docs.py fails
# while the page and the schema disagree).
docs: setup
	$(BIN)/python -m spectra_attn.config_doc docs/configuration.md

# After upgrading .venv on purpose (and the tests passing): record its versions as the constraints.
lock: setup
	{ sed -n '/^#/p' requirements/constraints.txt; \
	  $(BIN)/pip freeze --exclude-editable | sed -E 's/\+[a-z0-9.]+$$//' | LC_ALL=C sort -f; } \
	  > requirements/constraints.txt.new && mv requirements/constraints.txt.new requirements/constraints.txt

# The architecture tests (tests/test_architectures.py) on the oldest transformers pyproject allows:
# transformers 5.0.0 and the versions of its dependencies it needs (older tokenizers, kernels and
# huggingface-hub 1.x with httpx), installed into a folder put in front of .venv's packages.
OLDEST := .venv-oldest-transformers
$(OLDEST)/.done: | setup
	$(BIN)/pip install --quiet --no-deps --target $(OLDEST) "transformers==5.0.0" \
		"tokenizers==0.22.1" "kernels==0.10.4"
	$(BIN)/pip install --quiet --target $(OLDEST) "huggingface-hub>=1.3,<2"
	touch $@

test-oldest-transformers: $(OLDEST)/.done
	PYTHONPATH=$(OLDEST) $(BIN)/pytest -p no:cacheprovider tests/test_architectures.py
