#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs on a lent GPU machine (Python 3.12, no network, PyTorch,
# transformers, numpy, numba, pandas, pyarrow, scipy, matplotlib, seaborn ... preinstalled): Snakemake
# and what it imports, duckdb, zstandard, and accelerate with psutil (a device map's layer split), as
# cp312 manylinux wheels in .whl/ (git-ignored through .git/info/exclude; carry it with the device
# call). About 46 MB. See ../shared/gpu-wheels.md.
#   bash benchmarks/gpu_wheels.sh && du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
mkdir -p .whl
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 \
    manylinux1 manylinux_2_31 manylinux_2_34; do
    platforms+=(--platform "${tag}_x86_64")
done
# Names and versions as installed here, so the device runs what the tests passed with.
names=(snakemake snakemake-interface-common snakemake-interface-executor-plugins
    snakemake-interface-storage-plugins snakemake-interface-logger-plugins
    snakemake-interface-report-plugins snakemake-interface-scheduler-plugins conda-inject
    ConfigArgParse docutils dpath GitPython gitdb smmap humanfriendly immutables jsonschema
    jsonschema-specifications referencing rpds-py nbformat fastjsonschema jupyter_core traitlets
    platformdirs PuLP smart_open sqlmodel SQLAlchemy greenlet pydantic pydantic_core
    annotated-types typing-inspection tenacity throttler yte argparse-dataclass duckdb zstandard
    accelerate psutil)
pins=()
for name in "${names[@]}"; do
    version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
    pins+=("$name==$version")
done

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}" 2>/dev/null || {
    # One that has no wheel (connection_pool is sdist only, for instance): one at a time, building
    # the ones PyPI has only as source.
    for pin in "${pins[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${platforms[@]}" -d .whl "$pin" 2>/dev/null ||
            python3 -m pip wheel -q --no-deps -w .whl "$pin"
    done
}
connection=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('connection_pool'))")
ls .whl/connection_pool-* >/dev/null 2>&1 || python3 -m pip wheel -q --no-deps -w .whl "connection_pool==$connection"
# PuLP carries CBC solver binaries for every platform (16 MB); Snakemake's scheduler needs the one
# for linux x86-64 at most. Keeping only that brings the set under the device call's 64 MiB.
python3 - .whl/pulp-*.whl <<'PY'
import os, sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as wheel:
    keep = [i for i in wheel.infolist() if "/solverdir/cbc/" not in i.filename
            or "/solverdir/cbc/linux/i64/" in i.filename]
    if len(keep) < len(wheel.infolist()):
        with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as trimmed:
            for item in keep:  # RECORD still lists the removed files; pip installs without them
                trimmed.writestr(item, wheel.read(item))
        os.replace(path + ".tmp", path)
PY
echo "${#pins[@]} packages + connection_pool in .whl/: $(du -sh .whl | cut -f1)"
