"""The one-call GPU check (benchmarks/gpu_check.py), rehearsed on the CPU with its quick sizes:
every step runs, the comparison finds the CPU equal to itself, the slot step's jobs name a
device, and the call writes at most 8 files (what comes back from a lent GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_gpu_check_rehearsed_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)]
        + ["--quick", "--device", "cpu", "--budget-s", "1500"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8
    assert {"gpu_check.json", "demo_workflow.log", "gpu_capture.json"} <= set(files)
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert "splitting the model needs 2 GPUs" in steps.pop("device_map")["skipped"]
    assert {name: step["rc"] for name, step in steps.items()} == dict.fromkeys(
        ("demo", "gpu_vs_cpu", "slots", "gpu_capture"), 0
    ), result.stdout
    assert steps["demo"]["verdict"]["gain_ratio"] > 0
    assert len(steps["demo"]["model_jobs"]) >= 8  # capture, atlas, sweeps, checks
    for table in ("capture", "sweep"):
        compared = steps["gpu_vs_cpu"][table]
        assert compared["keys_equal"]
        for metric in ("query_norm", "entropy", "max_attn", "k_eff"):
            assert compared[metric]["max_abs"] == 0.0  # the CPU against itself
    assert sorted(job["gpu"] for job in steps["slots"]["jobs"]) in (["0", "0"], ["0", "1"])
    assert report["environment"]["still_missing"] == []
