"""The Docker and Apptainer images agree with each other, with the install script and with what
`spectra sagemaker launch` expects. Built and run by .ci/docker/check.sh (from .ci/run)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from spectra_attn.run.sagemaker import WRAPPER

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DEF = ROOT / "spectra.def"
# Tracked top-level paths the Apptainer image leaves out: CI and image files, and the run's
# inputs and outputs (its %setup makes resources/ and results/ empty, as .dockerignore does).
NOT_IN_SIF = {
    ".ci",
    ".gitignore",
    ".dockerignore",
    "Dockerfile",
    "spectra.def",
    "resources",
    "results",
}


def _apptainer_def():
    spec = importlib.util.spec_from_file_location(
        "apptainer_def", ROOT / ".ci/docker/apptainer_def.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE, re.MULTILINE)
    assert match, f"no ARG {name}= in the Dockerfile"
    return match.group(1)


def test_def_parses_with_the_dockerfiles_defaults():
    module = _apptainer_def()
    header, sections = module.parse(DEF.read_text())
    arguments = module.arguments(sections["arguments"])
    assert header["bootstrap"] == "docker"
    assert module.substitute(header["from"], arguments) == _arg("BASE_IMAGE")
    for name in ("TORCH", "TORCH_INDEX_URL", "EXTRAS"):
        assert arguments[name] == _arg(name)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-\w+-ubuntu\d\d\.04", _arg("BASE_IMAGE"))


def test_def_copies_every_tracked_top_level_path_but_the_ci_and_image_files():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    top = {path.split("/")[0] for path in tracked} | {"scripts", "spectra.def", ".dockerignore"}
    module = _apptainer_def()
    _, sections = module.parse(DEF.read_text())
    copied = module.files(sections["files"], ROOT)
    assert all(dest == f"/opt/spectra/{source}" for source, dest in copied)
    assert {source for source, _ in copied} == top - NOT_IN_SIF


def test_dockerignore_keeps_runs_and_environments_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", ".snakemake", "resources/*", "results/*", "*.sif"):
        assert pattern in ignored


def test_both_images_and_make_setup_install_with_the_one_script():
    assert 'sh scripts/install.sh .venv "${EXTRAS}"' in DOCKERFILE
    assert 'sh scripts/install.sh .venv "{{ EXTRAS }}"' in DEF.read_text()
    assert "sh scripts/install.sh $(VENV) dev" in (ROOT / "Makefile").read_text()
    script = (ROOT / "scripts/install.sh").read_text()
    assert "torch=${TORCH:-torch==2.13.0}" in script  # pinned, never bare or ranged


def test_image_matches_what_the_sagemaker_request_runs():
    """The request's ContainerEntrypoint (`spectra sagemaker run`) replaces the image's and runs
    in its working directory, which must be the checkout (profiles/sagemaker, relative)."""
    entrypoint = re.search(r"^ENTRYPOINT (.*)$", DOCKERFILE, re.MULTILINE).group(1)
    assert json.loads(entrypoint) == [WRAPPER[0]]
    assert re.search(r"^WORKDIR /opt/spectra$", DOCKERFILE, re.MULTILINE)
    assert "PATH=/opt/spectra/.venv/bin:" in DOCKERFILE
    assert (ROOT / "profiles/sagemaker/config.yaml").is_file()
    # Non-root by default; the user owns the checkout (source mtimes are restored in it).
    assert _arg("RUN_AS") != "root"
    assert "COPY --chown=${RUN_AS}:${RUN_AS} . ." in DOCKERFILE
    assert re.search(r"^USER \$\{RUN_AS\}$", DOCKERFILE, re.MULTILINE)


def test_snakefile_names_one_container_for_every_job():
    snakefile = (ROOT / "Snakefile").read_text()
    assert 'container: os.environ.get("SPECTRA_CONTAINER", "spectra.sif")' in snakefile
    assert "spectra.sif" in (ROOT / ".gitignore").read_text().split()
