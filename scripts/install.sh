#!/bin/sh
# The one install of Spectra's Python environment, run by `make setup`, the Docker image
# (Dockerfile), the Apptainer image (spectra.def) and CI, so that their steps cannot drift:
#   scripts/install.sh VENV EXTRAS     e.g. scripts/install.sh .venv dev
# creates the virtual environment VENV (if missing), installs torch first, pinned, then this
# checkout editable with EXTRAS (comma-separated: dev, workflow, slurm, sagemaker), every package
# at the version in requirements/constraints.txt. Run it from the checkout. Environment:
#   PYTHON            interpreter that creates VENV (default: python3)
#   TORCH             torch requirement (default: torch==2.13.0, the version the tests pass with).
#                     Always a pinned one: a bare or ranged torch would pull whatever CUDA build
#                     is newest. On Linux x86_64, PyPI's torch==2.13.0 is the CUDA 13.0 build
#                     (2.13.0+cu130); a machine whose pip finds a local CPU wheel gets that.
#   TORCH_INDEX_URL   index to take torch from alone, e.g. https://download.pytorch.org/whl/cpu
#                     or .../whl/cu128 (default: pip's own configuration)
# Other pip settings come from pip's own environment variables (PIP_FIND_LINKS, PIP_NO_CACHE_DIR).
set -eu
venv=${1:?usage: scripts/install.sh VENV EXTRAS}
extras=${2:?usage: scripts/install.sh VENV EXTRAS}
python=${PYTHON:-python3}
torch=${TORCH:-torch==2.13.0}
[ -f pyproject.toml ] && grep -q 'name = "spectra-attn"' pyproject.toml || {
    echo "scripts/install.sh: run it from the Spectra checkout" >&2
    exit 1
}
# An empty pip variable (an unset Docker build argument) would be read as an empty value.
for name in PIP_FIND_LINKS PIP_NO_INDEX PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    eval "value=\${$name-}"
    [ -n "$value" ] || unset "$name"
done
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# torch first, pinned: a bare or ranged torch requirement would pull a multi-GB CUDA build.
if [ -n "${TORCH_INDEX_URL-}" ]; then
    "$venv/bin/pip" install --quiet --index-url "$TORCH_INDEX_URL" "$torch"
else
    "$venv/bin/pip" install --quiet "$torch"
fi
# The versions the tests passed with (requirements/constraints.txt), not whatever is newest.
"$venv/bin/pip" install --quiet -c requirements/constraints.txt -e ".[$extras]"
