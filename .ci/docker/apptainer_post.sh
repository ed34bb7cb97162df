#!/usr/bin/env bash
# What `apptainer build spectra.sif spectra.def` would run, run under Docker instead, since no
# Apptainer package is installable here (Debian 12 has none): the .def's %setup, %files, %post,
# %test and %runscript (.ci/docker/apptainer_def.py) in a container of the base image ($1), with
# the checkout at /ctx, then a job's view from a checkout: its package comes from the checkout.
# Not tried: Apptainer itself (the .def's syntax beyond apptainer_def.py's reading of it, the
# docker:// bootstrap, %files copying, SIF creation, --nv, Snakemake's apptainer exec).
# pip's PIP_FIND_LINKS / PIP_NO_INDEX are passed through (CI: the local wheelhouse).
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${1:?usage: apptainer_post.sh BASE_IMAGE}
script=$(python3 .ci/docker/apptainer_def.py spectra.def "BASE_IMAGE=$base")
script+='
cd /ctx && . /tmp/90-environment.sh
python -c "import spectra_attn; print(\"a job in a checkout imports\", spectra_attn.__file__)" |
    tee /tmp/import.txt
grep -q "/ctx/src/spectra_attn/__init__.py" /tmp/import.txt'
docker run --rm --network host -v "$PWD:/ctx:ro" \
    -e "PIP_FIND_LINKS=${PIP_FIND_LINKS:-}" -e "PIP_NO_INDEX=${PIP_NO_INDEX:-}" \
    "$base" bash -c "$script"
