#!/usr/bin/env bash
# Runs inside the freshly created conda env (snakemake --sdm conda), from the workflow's working
# directory: install this checkout's spectra_attn package without touching the pinned deps.
set -euo pipefail
if [[ ! -f pyproject.toml ]] || ! grep -q 'name = "spectra-attn"' pyproject.toml; then
    echo "run snakemake from the Spectra checkout so the package can be installed" >&2
    exit 1
fi
python -m pip install --no-deps --quiet -e .
