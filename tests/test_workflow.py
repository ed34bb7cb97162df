"""The workflow end to end on the offline demo: dry run, real run, a second run that does nothing.

Runs Snakemake on this checkout's Snakefile in a fresh working directory, as a user would after
`make demo`, so it never touches the checkout's own results/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.integration


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    dry = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    real = snakemake(workdir, "--cores", "1", "--resources", "gpu=1")
    assert real.returncode == 0, real.stderr[-5000:]
    return workdir, dry, real


def test_dry_run_plans_every_stage(demo_run):
    _, dry, _ = demo_run
    for rule in ("build_demo_corpus", "build_demo_model", "make_shards"):
        assert rule in dry.stdout, dry.stdout[-2000:]


def test_real_run_writes_validated_shards(demo_run):
    from spectra_attn.shards import validate_shards

    workdir, _, _ = demo_run
    manifest_path = workdir / "results" / "demo" / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    paths = validate_shards(manifest_path)
    assert manifest["sequences"] > 100
    assert set(manifest["documents_seen_per_source"]) == {
        "RedPajamaCommonCrawl",
        "RedPajamaC4",
        "RedPajamaWikipedia",
        "RedPajamaStackExchange",
        "RedPajamaGithub",
        "RedPajamaArXiv",
        "RedPajamaBook",
    }
    assert set(manifest["documents_used_per_source"]) == set(manifest["include_sources"])
    with np.load(paths[0], allow_pickle=False) as shard:
        assert shard["input_ids"].shape[1] == 512
    for rule in ("build_demo_corpus", "build_demo_model", "make_shards"):
        assert list((workdir / "results").rglob(f"{rule}.log")), rule


def test_second_run_does_nothing(demo_run):
    workdir, _, _ = demo_run
    again = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "-n")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr


def test_bad_config_key_fails_before_any_job(demo_run, tmp_path):
    workdir, _, _ = demo_run
    mine = tmp_path / "mine.yaml"
    mine.write_text("capture:\n  n_sample: 3\n")
    result = snakemake(workdir, "--cores", "1", "-n", "--configfile", str(mine))
    assert result.returncode != 0
    assert "'n_sample' under 'capture'" in result.stdout + result.stderr


def test_other_model_skips_the_demo_model(demo_run, tmp_path):
    workdir, _, _ = demo_run
    mine = tmp_path / "mine.yaml"
    model_dir = workdir / "resources" / "demo" / "model"
    mine.write_text(f"run_name: other\nmodel:\n  name_or_path: {model_dir}\n")
    result = snakemake(workdir, "--cores", "1", "-n", "--configfile", str(mine), "--forceall")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "make_shards" in result.stdout
    assert "build_demo_model" not in result.stdout
