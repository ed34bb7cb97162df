# Two entry points for a fresh machine: `make demo` (set up, run the offline demo workflow) and
# `make test` (set up, run linters and the test suite). Both create ./.venv first.
PYTHON ?= python3
# The CPU build on this project's machines; on a GPU machine set e.g. TORCH=torch==2.13.0 from
# the CUDA index, or install torch into .venv yourself before `make setup`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint unit test-oldest-transformers

$(BIN)/spectra: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a bare or ranged torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/spectra

demo: setup
	$(BIN)/snakemake --cores 1 --resources gpu=1

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

unit: setup
	$(BIN)/pytest -m "not integration"

test: lint
	$(BIN)/pytest

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
