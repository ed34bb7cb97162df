# Two entry points for a fresh machine: `make demo` (set up, run the offline demo workflow) and
# `make test` (set up, run linters and the test suite). Both create ./.venv first.
PYTHON ?= python3
# The CPU build on this project's machines; on a GPU machine set e.g. TORCH=torch==2.13.0 from
# the CUDA index, or install torch into .venv yourself before `make setup`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint unit lock

$(BIN)/spectra: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a bare or ranged torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH)"
	# The versions the tests passed with (requirements/constraints.txt), not whatever is newest.
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e ".[dev]"
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

# After upgrading .venv on purpose (and the tests passing): record its versions as the constraints.
lock: setup
	{ sed -n '/^#/p' requirements/constraints.txt; \
	  $(BIN)/pip freeze --exclude-editable | sed -E 's/\+[a-z0-9.]+$$//' | LC_ALL=C sort -f; } \
	  > requirements/constraints.txt.new && mv requirements/constraints.txt.new requirements/constraints.txt
