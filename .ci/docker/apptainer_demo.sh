#!/usr/bin/env bash
# The demo through Snakemake's --software-deployment-method apptainer, every job in the image
# the Snakefile's `container:` names, with .ci/docker/fake-apptainer/apptainer standing in for
# Apptainer (none is installable here): it runs each job's command under Docker in the image $1,
# with the Apptainer definition's %environment. Run in a copy of the checkout; checks that every
# job went through the container, that the outputs are there, and that a second run plans nothing.
# Not tried by this: Apptainer's own exec (its mounts, environment handling, --nv), a SIF file.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:?usage: apptainer_demo.sh DOCKER_IMAGE}
log_dir=${DOCKER_TEST_DIR:-/tmp/spectra-docker}
work=$(mktemp -d /tmp/spectra-sdm-apptainer.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work")
touch "$work/spectra.sif"  # the Snakefile's container: (any IMAGE maps to $tag)
# A smaller demo than config.yaml's (22 jobs instead of 31; the tests run the full one natively).
cat >"$work/ci-small.yaml" <<'YAML'
demo: {train_steps: 20}
capture: {n_samples: 16, samples_per_job: 16}
intervention: {n_samples: 8}
gain: {bootstrap_samples: 200}
YAML
python3 "$repo/.ci/docker/apptainer_def.py" "$repo/spectra.def" --section environment \
    >"$log_dir/90-environment.sh"
export PATH="$repo/.ci/docker/fake-apptainer:$repo/.venv/bin:$PATH"
export SPECTRA_SHIM_IMAGE=$tag SPECTRA_SHIM_ENV=$log_dir/90-environment.sh
export SPECTRA_SHIM_LOG=$log_dir/apptainer-calls.log
: >"$SPECTRA_SHIM_LOG"
cd "$work"
args=(--cores 2 --resources gpu=1 --sdm apptainer --configfile ci-small.yaml)
snakemake "${args[@]}" >"$log_dir/sdm-apptainer.log" 2>&1 ||
    { tail -40 "$log_dir/sdm-apptainer.log" >&2; exit 1; }
jobs=$(grep -c '^localrule\|^rule ' "$log_dir/sdm-apptainer.log" || true)
calls=$(wc -l <"$SPECTRA_SHIM_LOG")
echo "$jobs jobs, $calls of them through apptainer exec spectra.sif"
grep -q '^exec spectra.sif: ' "$SPECTRA_SHIM_LOG"
ls results/demo
# rule all runs no command; every other job must have gone through the container
((calls >= jobs - 1)) || { echo "only $calls of $jobs jobs ran in the container" >&2; exit 1; }
snakemake -n "${args[@]}" 2>&1 | tail -2 | tee "$log_dir/sdm-apptainer-rerun.log"
grep -q 'Nothing to be done' "$log_dir/sdm-apptainer-rerun.log"
