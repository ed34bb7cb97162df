# Spectra's image: this checkout and its Python environment on an NVIDIA CUDA base, for SageMaker
# training jobs (`spectra sagemaker launch --image ...`), a Docker host with NVIDIA's container
# toolkit, or Apptainer (`apptainer build spectra.sif docker-daemon://spectra:latest`).
# Build, push and run: docs/containers.md.
#   docker build -t spectra .
# torch: PyPI's torch==2.13.0 for Linux x86_64 (the version the tests pass with) is the CUDA 13.0
# build, 2.13.0+cu130, with CUDA's libraries and cuDNN as pip packages; it needs an NVIDIA driver
# >= 580. The base supplies Ubuntu 24.04 (Python 3.12) and the CUDA 13.0 settings NVIDIA's
# container toolkit reads; `-base-` rather than `-runtime-` because torch brings its own CUDA
# libraries. For older drivers pick an older CUDA pair, e.g.
#   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 \
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# CI builds it on a debootstrapped Debian 12 with the CPU build of torch (.ci/docker/check.sh).
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
FROM ${BASE_IMAGE}

# scripts/install.sh's settings (empty: its defaults): the torch requirement and an index to take
# it from; and pip's own, for a build from a local wheelhouse (CI: PIP_FIND_LINKS=http://127.0.0.1:…
# with PIP_NO_INDEX=1).
ARG TORCH=
ARG TORCH_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=
# The extras for running the workflow locally, on SLURM and with S3 storage (SageMaker).
ARG EXTRAS=workflow,slurm,sagemaker
# The user the image runs as (SageMaker included): a non-root one that owns the checkout, since
# the workflow writes into it (.snakemake/, resources/, results/) and `spectra sagemaker run`
# restores the mtimes of its source files. RUN_AS=root for a job that must write to /opt/ml.
ARG RUN_AS=spectra
ARG REVISION=unknown
ARG DEBIAN_FRONTEND=noninteractive

LABEL org.opencontainers.image.title="spectra" \
      org.opencontainers.image.description="Spectra: attention measurements of decoder LLMs (Snakemake workflow)" \
      org.opencontainers.image.revision="${REVISION}"

# Versions come from the base's release (Ubuntu 24.04, Debian 12), so they are not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && { id -u "${RUN_AS}" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "${RUN_AS}"; } \
    && install -d -o "${RUN_AS}" -g "${RUN_AS}" /opt/spectra

WORKDIR /opt/spectra
COPY --chown=${RUN_AS}:${RUN_AS} . .
USER ${RUN_AS}
RUN PIP_NO_CACHE_DIR=1 sh scripts/install.sh .venv "${EXTRAS}" \
    && .venv/bin/spectra --version

ENV PATH=/opt/spectra/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg
# SageMaker replaces the entrypoint with `spectra sagemaker run` (ContainerEntrypoint) and runs it
# here, in the checkout; `docker run IMAGE config show` runs `spectra config show`.
ENTRYPOINT ["spectra"]
CMD ["--help"]
