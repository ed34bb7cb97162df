#!/usr/bin/env bash
# Build the Docker image and try it, as far as this machine allows: no image registry is
# reachable (so no nvidia/cuda base), no GPU, and PyPI's torch is the multi-GB CUDA build. So:
#   1. lint the Dockerfile with hadolint (from .venv: the dev extra);
#   2. build a stand-in base, a debootstrapped Debian 12 (.ci/docker/base.sh);
#   3. build the Dockerfile on it (--build-arg BASE_IMAGE) with the CPU build of torch 2.13.0, from
#      a wheelhouse the host's pip fills (a local CPU wheel of torch in SPECTRA_IMAGE_WHEELS,
#      default /opt/wheels, or PyTorch's CPU index) and serves on 127.0.0.1; builds use the
#      host's network (--network host);
#   4. run it without a network (--network none): spectra --version, spectra config show, the
#      demo's dry run (snakemake -n), its plugins, the user it runs as;
#   5. run the Apptainer definition's %setup, %files, %post and %test (spectra.def) in the same
#      base under Docker, since no Apptainer can be installed here (.ci/docker/apptainer_post.sh);
#   6. run the demo with --sdm apptainer, each job in the image through a Docker-backed stand-in
#      for apptainer (.ci/docker/apptainer_demo.sh; SPECTRA_IMAGE_DEMO=0 skips it).
# Needs a running dockerd (.ci/docker/start.sh). Prints PASS or FAIL per step and exits non-zero
# on the first failure. SPECTRA_IMAGE_TAG names the image (default spectra:ci), SPECTRA_BASE_TAG the
# base (default spectra-ci-base:bookworm, reused if it exists).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_BUILDKIT=0  # the classic builder: Debian's docker.io has no buildx
tag=${SPECTRA_IMAGE_TAG:-spectra:ci}
base=${SPECTRA_BASE_TAG:-spectra-ci-base:bookworm}
wheels=${SPECTRA_IMAGE_WHEELS:-/opt/wheels}
log_dir=${DOCKER_TEST_DIR:-/tmp/spectra-docker}
mkdir -p "$log_dir"
step() { printf '\n== %s\n' "$*"; }
pass() { printf 'PASS %s (%ss)\n' "$1" "$(($(date +%s) - started))"; }
fail() { printf 'FAIL %s\n' "$1" >&2; exit 1; }
server=

cleanup() { [[ -n "$server" ]] && kill "$server" 2>/dev/null || true; }
trap cleanup EXIT

step "hadolint Dockerfile"
started=$(date +%s)
hadolint=.venv/bin/hadolint
[[ -x "$hadolint" ]] || hadolint=hadolint
"$hadolint" Dockerfile && pass hadolint || fail hadolint

step "base image: debootstrapped Debian 12"
started=$(date +%s)
bash .ci/docker/base.sh "$base" && pass base || fail base

step "wheelhouse: torch 2.13.0 (CPU) and the extras' dependencies, served on 127.0.0.1"
started=$(date +%s)
# The build cannot reach PyPI itself: here PyPI's TLS certificate chain is signed by a CA that
# only the host's bundle holds (pip's `cert` setting), not the base image's. So the host's pip (its configuration: here a local CPU wheel of
# torch) builds the wheels, for the base's Python (3.11, as the host's), and a local web server
# serves them to the build (PIP_FIND_LINKS with PIP_NO_INDEX).
wheelhouse=$log_dir/wheelhouse
mkdir -p "$wheelhouse"
python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' ||
    fail "wheelhouse (needs the host's Python 3.11, as Debian 12's)"
torch=(torch==2.13.0)
compgen -G "$wheels/torch-2.13.0+cpu-*.whl" >/dev/null ||
    torch=(--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu)
"$python" -m pip wheel --quiet --find-links "$wheels" -w "$wheelhouse" "${torch[@]}" \
    ".[workflow,slurm,sagemaker]" pip "setuptools>=77" >"$log_dir/wheelhouse.log" 2>&1 ||
    { grep -v 'is ignored' "$log_dir/wheelhouse.log" | tail -20 >&2; fail wheelhouse; }
ls "$wheelhouse"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 || fail "wheelhouse (no CPU torch 2.13.0)"
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$python" -m http.server "$port" --bind 127.0.0.1 --directory "$wheelhouse" >"$log_dir/wheels.log" 2>&1 &
server=$!
export PIP_FIND_LINKS=http://127.0.0.1:$port/ PIP_NO_INDEX=1
echo "$(ls "$wheelhouse" | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1), on $PIP_FIND_LINKS"
pass wheelhouse

step "docker build on $base"
started=$(date +%s)
if docker build --network host --build-arg "BASE_IMAGE=$base" \
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg "PIP_FIND_LINKS=$PIP_FIND_LINKS" --build-arg PIP_NO_INDEX=1 \
    -t "$tag" . >"$log_dir/build.log" 2>&1; then
    pass build
    docker image ls "$tag"
else
    tail -40 "$log_dir/build.log" >&2
    fail build
fi

run() { docker run --rm --network none "$@"; }
step "smoke test (--network none)"
started=$(date +%s)
run "$tag" --version | tee "$log_dir/version.txt"
grep -q '^spectra ' "$log_dir/version.txt" || fail "spectra --version"
run "$tag" config show >"$log_dir/config.txt" || fail "spectra config show"
head -5 "$log_dir/config.txt"
echo "... ($(wc -l <"$log_dir/config.txt") lines)"
run --entrypoint snakemake "$tag" -n --cores 1 --resources gpu=1 >"$log_dir/dryrun.txt" 2>&1 ||
    { tail -30 "$log_dir/dryrun.txt" >&2; fail "snakemake -n"; }
awk '/^Job stats:/ {on = 1} on && /^$/ {exit} on' "$log_dir/dryrun.txt"  # the first table
grep -q 'This was a dry-run' "$log_dir/dryrun.txt" || fail "snakemake -n (no dry-run summary)"
run --entrypoint sh "$tag" -c 'set -e
    echo "user $(id -un) ($(id -u)), in $(pwd), python $(python --version 2>&1 | cut -d" " -f2)"
    test "$(id -u)" != 0
    test "$(pwd)" = /opt/spectra
    python -c "import snakemake_storage_plugin_s3, snakemake_executor_plugin_slurm, boto3, torch; print(\"torch\", torch.__version__)"
    spectra sagemaker run --help >/dev/null' || fail "image layout"
pass smoke

step "Apptainer definition: spectra.def's %post in $base"
started=$(date +%s)
bash .ci/docker/apptainer_post.sh "$base" >"$log_dir/apptainer_post.log" 2>&1 &&
    { grep -E '^spectra [0-9]|^Spectra configuration|imports' "$log_dir/apptainer_post.log"
        pass apptainer-post; } ||
    { tail -40 "$log_dir/apptainer_post.log" >&2; fail apptainer-post; }

step "the demo with --sdm apptainer (jobs in $tag through .ci/docker/fake-apptainer)"
started=$(date +%s)
if [[ "${SPECTRA_IMAGE_DEMO:-1}" == 0 ]]; then
    echo "SKIP apptainer-demo (SPECTRA_IMAGE_DEMO=0)"
else
    bash .ci/docker/apptainer_demo.sh "$tag" && pass apptainer-demo || {
        tail -40 "$log_dir/sdm-apptainer.log" >&2
        fail apptainer-demo
    }
fi
