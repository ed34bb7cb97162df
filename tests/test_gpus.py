"""One GPU per job, shown without GPUs: SPECTRA_GPUS stands in for the machine's devices, and
concurrent processes claim them as model jobs do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spectra_attn.run import gpus

HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from spectra_attn.run import gpus
    count, hold_s, record = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    ids = gpus.claim(count, poll_s=0.02)
    start = time.time()
    open(record + ".ready", "w").close()
    time.sleep(hold_s)
    with open(record, "w") as out:
        json.dump({"ids": ids, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "start": start, "end": time.time()}, out)
    """
)


def holder(tmp_path: Path, name: str, count: int, hold_s: float, **env: str):
    environment = {k: v for k, v in os.environ.items() if k != gpus.VISIBLE_ENV}
    environment |= {gpus.LOCK_DIR_ENV: str(tmp_path / "locks"), **env}
    record = tmp_path / name
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count), str(hold_s), str(record)], env=environment
    )
    return process, record


def wait_for(path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_concurrent_jobs_never_share_a_device(tmp_path):
    """Six jobs of one GPU each on two devices: each sees only its own device, no two hold the
    same one at once, and both devices are used."""
    started = [holder(tmp_path, f"job{i}.json", 1, 0.4, SPECTRA_GPUS="0,1") for i in range(6)]
    for process, _ in started:
        assert process.wait(timeout=120) == 0
    records = [json.loads(record.read_text()) for _, record in started]
    assert all(r["visible"] == ",".join(r["ids"]) and len(r["ids"]) == 1 for r in records)
    assert {r["ids"][0] for r in records} == {"0", "1"}
    for device in ("0", "1"):
        spans = sorted((r["start"], r["end"]) for r in records if r["ids"] == [device])
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"GPU {device} held by two jobs at once"


def test_two_devices_for_a_job_that_needs_two(tmp_path):
    process, record = holder(tmp_path, "pair.json", 2, 0.0, SPECTRA_GPUS="0,1,2")
    assert process.wait(timeout=60) == 0
    ids = json.loads(record.read_text())["ids"]
    assert len(set(ids)) == 2
    with pytest.raises(ValueError, match="needs 4 GPUs but this machine has 3"):
        os.environ.pop(gpus.VISIBLE_ENV, None)
        try:
            os.environ[gpus.DEVICES_ENV] = "0,1,2"
            gpus.claim(4)
        finally:
            os.environ.pop(gpus.DEVICES_ENV)


def test_a_killed_jobs_device_is_free_again(tmp_path):
    first, record = holder(tmp_path, "killed.json", 1, 60, SPECTRA_GPUS="0")
    wait_for(Path(f"{record}.ready"))
    second, second_record = holder(tmp_path, "next.json", 1, 0.0, SPECTRA_GPUS="0")
    time.sleep(1.0)
    assert second.poll() is None  # waiting: the only device is taken
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert second.wait(timeout=30) == 0
    assert json.loads(second_record.read_text())["ids"] == ["0"]


def test_a_schedulers_assignment_stands(tmp_path):
    """SLURM sets CUDA_VISIBLE_DEVICES for the job's allocation: it is kept, nothing is locked."""
    process, record = holder(
        tmp_path, "slurm.json", 1, 0.0, SPECTRA_GPUS="0,1", CUDA_VISIBLE_DEVICES="3"
    )
    assert process.wait(timeout=60) == 0
    assert json.loads(record.read_text()) | {"start": 0, "end": 0} == {
        "ids": ["3"],
        "visible": "3",
        "start": 0,
        "end": 0,
    }
    assert not list((tmp_path / "locks").glob("*.lock"))


def test_an_assignment_of_fewer_gpus_than_the_job_needs_is_kept_and_said(monkeypatch, caplog):
    """A model spread over two GPUs (model.gpus: 2) given one by the scheduler still runs (what
    does not fit goes to CPU memory), and the log says why it is slow."""
    monkeypatch.setenv(gpus.VISIBLE_ENV, "3")
    assert gpus.claim(2) == ["3"]
    assert "the job needs 2 GPUs but the scheduler assigned 1" in caplog.text


def test_no_gpu_means_the_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv(gpus.VISIBLE_ENV, raising=False)
    monkeypatch.setenv(gpus.DEVICES_ENV, "")
    assert gpus.claim(1) == []
    assert gpus.VISIBLE_ENV not in os.environ


SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: expand("out/{i}.json", i=range(4))

    rule job:
        output: "out/{i}.json"
        log: "logs/{i}.log"
        resources: gpu=1
        params: model={"device": "auto"}
        script: "job.py"
    """
)
JOB = textwrap.dedent(
    """
    import json, os, time
    from spectra_attn.run.workflow import claim_job_gpus, setup_logging
    setup_logging(snakemake.log[0])
    claim_job_gpus(snakemake)
    start = time.time()
    time.sleep(2)
    with open(snakemake.output[0], "w") as out:
        json.dump({"visible": os.environ["CUDA_VISIBLE_DEVICES"], "start": start,
                   "end": time.time()}, out)
    """
)


def test_snakemake_runs_one_job_per_gpu_at_once(tmp_path):
    """--resources gpu=2 on two (stand-in) GPUs: two jobs at a time, each on a device of its own,
    and each job's log names it."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(JOB)
    environment = {k: v for k, v in os.environ.items() if k != gpus.VISIBLE_ENV}
    environment |= {gpus.DEVICES_ENV: "0,1", gpus.LOCK_DIR_ENV: str(tmp_path / "locks")}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(4)]
    assert sorted(r["visible"] for r in records) == ["0", "0", "1", "1"]
    for i, r in enumerate(records):
        assert f"using GPU {r['visible']}" in (tmp_path / "logs" / f"{i}.log").read_text()
    # Two at once: some pair of jobs overlaps in time, and never two on one device.
    overlapping = [
        (a, b)
        for i, a in enumerate(records)
        for b in records[i + 1 :]
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapping, "the two GPUs were never used at once"
    assert all(a["visible"] != b["visible"] for a, b in overlapping)
