"""The demo workflow through the SLURM profile on a real (one-node, localhost) SLURM cluster.

CI starts the cluster with .ci/slurm/start.sh and sets SPECTRA_REQUIRE_SLURM=1, so there a missing
cluster fails the test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slurm]


def cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and bool(re.search(r"^(idle|mixed)", result.stdout, re.M))


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    profile = ["--profile", str(ROOT / "profiles" / "slurm"), "--slurm-no-account"]
    # Poll often: the test cluster keeps finished jobs for an hour (MinJobAge ≥ 3 × this).
    profile += ["--slurm-init-seconds-before-status-checks", "5"]
    # The profile gives capture 8 CPUs (GPU nodes); the one-node test cluster has nproc of them.
    profile += ["--set-threads", f"capture={min(8, os.cpu_count() or 1)}"]
    return subprocess.run([*command, *profile, *args], capture_output=True, text=True, timeout=3000)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    if not cluster_is_up():
        if os.environ.get("SPECTRA_REQUIRE_SLURM"):
            pytest.fail("SPECTRA_REQUIRE_SLURM is set but sinfo shows no idle SLURM node")
        pytest.skip("no SLURM cluster here (.ci/slurm/start.sh starts a one-node one)")
    workdir = tmp_path_factory.mktemp("slurm")
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    result = snakemake(workdir)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return workdir, result


def submitted(result, rule: str) -> list[str]:
    """SLURM job ids of a rule's jobs, from Snakemake's submission messages."""
    text = result.stdout + result.stderr
    return re.findall(rf"SLURM jobid (\d+) \(log: \S*/rule_{rule}/", text)


def test_every_job_ran_through_slurm(slurm_run):
    workdir, result = slurm_run
    run = workdir / "results" / "demo"
    assert (run / "gain" / "verdict.json").is_file()
    assert len(list((run / "capture").glob("part_*.parquet"))) == 4
    for rule, jobs in (("capture", 4), ("atlas", 4), ("intervention_sweep", 2), ("make_shards", 1)):
        assert len(submitted(result, rule)) == jobs, rule


def test_gpu_rules_ask_slurm_for_a_gpu(slurm_run):
    _, result = slurm_run
    for rule, wants_gpu in (
        ("capture", True),
        ("intervention_sweep", True),
        ("make_shards", False),
    ):
        job = submitted(result, rule)[0]
        shown = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, check=True
        ).stdout
        assert ("gres/gpu" in shown or "gpu:1" in shown) == wants_gpu, (rule, shown)


def test_second_run_through_slurm_does_nothing(slurm_run):
    workdir, _ = slurm_run
    again = snakemake(workdir, "-n")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr
