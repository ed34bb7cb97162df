"""One GPU per job on a machine with several: a job that declares ``gpu=k`` takes k devices no
other job holds, and gives them back when it ends, however it ends.

Snakemake counts ``--resources gpu=K`` but never says which device a job may use, so without this
every job lands on GPU 0. Each device has a lock file; a job holds an exclusive ``flock`` on the
files of its devices for its whole life and sets ``CUDA_VISIBLE_DEVICES`` to them before CUDA
starts. The kernel drops a process's locks when it exits, also on SIGKILL or a crash, so a device is
never left taken by a dead job.

- Where a scheduler already assigned devices (SLURM's allocation sets ``CUDA_VISIBLE_DEVICES``),
  that assignment stands and nothing is locked.
- The devices are ``SPECTRA_GPUS`` (comma-separated ids, e.g. ``0,1,2,3``: to use some GPUs of a
  machine, or to stand in for GPUs in tests), else what ``nvidia-smi`` lists; none means the CPU.
- Lock files live in ``SPECTRA_GPU_LOCK_DIR``, else ``<tmp>/spectra-gpus-<uid>``: jobs of one user
  on one machine share them (a second checkout's jobs included).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEVICES_ENV = "SPECTRA_GPUS"
LOCK_DIR_ENV = "SPECTRA_GPU_LOCK_DIR"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
# The lock files' descriptors, held until the process ends (closing one would free its device).
_HELD: list[int] = []


def available_devices() -> list[str]:
    """The ids of the GPUs jobs share: ``SPECTRA_GPUS``, else nvidia-smi's indices, else none.
    nvidia-smi asks the driver without starting CUDA in this process, which would fix its devices
    before ``CUDA_VISIBLE_DEVICES`` is set."""
    listed = os.environ.get(DEVICES_ENV)
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []  # no NVIDIA driver here: the CPU
    return [line.strip() for line in found.stdout.splitlines() if line.strip()]


def lock_dir() -> Path:
    folder = os.environ.get(LOCK_DIR_ENV)
    path = Path(folder) if folder else Path(tempfile.gettempdir()) / f"spectra-gpus-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by child processes
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim(count: int, poll_s: float = 0.5, wait_s: float | None = None) -> list[str]:
    """Take ``count`` devices for this process and make them the only ones CUDA sees; return
    their ids (empty: run on what there is, i.e. the CPU or the scheduler's assignment). Waits
    while every device is taken (more jobs than GPUs), up to ``wait_s`` seconds if given."""
    if count <= 0:
        return []
    assigned = os.environ.get(VISIBLE_ENV)
    if assigned is not None:
        logger.info("%s=%s set by the scheduler: kept (no GPU lock taken)", VISIBLE_ENV, assigned)
        ids = [device for device in assigned.split(",") if device]
        if len(ids) < count:  # a model spread over `count` GPUs would spill into CPU memory
            logger.warning(
                "the job needs %d GPUs but the scheduler assigned %d (%s=%s)",
                count,
                len(ids),
                VISIBLE_ENV,
                assigned,
            )
        return ids
    devices = available_devices()
    if not devices:
        logger.info("no GPU listed (%s unset, no nvidia-smi): nothing to claim", DEVICES_ENV)
        return []
    if count > len(devices):
        raise ValueError(
            f"the job needs {count} GPUs but this machine has {len(devices)} ({', '.join(devices)})"
        )
    folder = lock_dir()
    started = time.monotonic()
    waited = False
    while True:
        held: list[tuple[str, int]] = []
        for device in devices:
            fd = _try_lock(folder / f"gpu-{device}.lock")
            if fd is not None:
                held.append((device, fd))
                if len(held) == count:
                    break
        if len(held) == count:
            break
        for _, fd in held:  # not enough free: give back what was taken, then wait
            os.close(fd)
        if wait_s is not None and time.monotonic() - started > wait_s:
            raise TimeoutError(f"no {count} free GPUs of {', '.join(devices)} within {wait_s} s")
        if not waited:
            logger.info("all of GPUs %s are taken by other jobs: waiting", ", ".join(devices))
            waited = True
        time.sleep(poll_s)
    ids = [device for device, _ in held]
    _HELD.extend(fd for _, fd in held)
    os.environ[VISIBLE_ENV] = ",".join(ids)
    logger.info(
        "using GPU %s (%s=%s; lock files in %s)", ", ".join(ids), VISIBLE_ENV, ",".join(ids), folder
    )
    return ids
