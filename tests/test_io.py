"""Atomic writes: a failure leaves what was there; success replaces it in one rename."""

from __future__ import annotations

import os

import pytest

from spectra_attn.io import atomic_dir, atomic_path


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("existing", ["none", "folder", "link", "file"])
def test_atomic_dir_replaces_what_was_there(tmp_path, existing):
    target = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept.txt").write_text("cache entry")
    if existing == "folder":
        target.mkdir()
        (target / "stale.txt").write_text("stale")
    elif existing == "link":
        target.symlink_to(elsewhere)  # as Snakemake's between-workflow cache leaves it
    elif existing == "file":
        target.write_text("a file")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    assert target.is_dir() and not target.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (elsewhere / "kept.txt").read_text() == "cache entry"  # a link's target is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]
    assert target.stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_atomic_dir_failure_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_writers_temporaries_are_removed_by_the_next_writer(tmp_path):
    """SIGKILL runs no cleanup: the next job writing the same output removes what was left,
    and only that (not another output's temporaries, nor a name that merely starts alike)."""
    target = tmp_path / "part_0000.parquet"
    left = [
        tmp_path / ".part_0000.parquet.ab12cd34.tmp",
        tmp_path / ".part_0000.parquet.zz_9yy8x.tmp.wal",
    ]
    for path in left:
        path.write_text("half")
    (tmp_path / ".part_0000.parquet.dir12345.tmp").mkdir()
    kept = [
        tmp_path / ".part_0001.parquet.ab12cd34.tmp",
        tmp_path / ".part_0000.parquet.x.ab12cd34.tmp",
    ]
    for path in kept:
        path.write_text("someone else's")
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, *(p.name for p in kept)]
    )
    with atomic_dir(tmp_path / "partial") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "partial" / "a").is_file()


def test_sigterm_runs_the_cleanup(tmp_path):
    """A job sent SIGTERM (Snakemake cancelling it, SLURM's time limit) removes its temporary
    file on the way out and exits with 143."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import os, signal, time
        from spectra_attn.io import atomic_path
        from spectra_attn.run.workflow import setup_logging
        setup_logging({str(tmp_path / "job.log")!r})
        with atomic_path({str(tmp_path / "out.txt")!r}) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert result.returncode == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.log"]
    assert "terminated by signal 15" in (tmp_path / "job.log").read_text()


def test_a_full_disk_is_named_as_such_in_the_log_and_on_stderr(tmp_path):
    """A real ENOSPC (writing /dev/full) reaches the user as a sentence saying what happened and
    what to do, not only as a raw OSError, and the earlier output is intact."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "out.txt").write_text("finished")
    script = textwrap.dedent(
        f"""
        import shutil
        from spectra_attn.io import atomic_path
        from spectra_attn.run.workflow import setup_logging
        setup_logging({str(tmp_path / "job.log")!r})
        with atomic_path({str(tmp_path / "out.txt")!r}) as tmp:
            with open("/dev/full", "wb") as full:
                full.write(b"x" * 65536)
                full.flush()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "spectra: no space left on the device" in result.stderr
    assert "then run the same snakemake command again" in (tmp_path / "job.log").read_text()
    assert (tmp_path / "out.txt").read_text() == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.log", "out.txt"]


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OSError(28, "No space left on device", "results/x.parquet"), "no space left"),
        (OSError(122, "Disk quota exceeded", "results/x.parquet"), "no space left"),
        (PermissionError(13, "Permission denied", "results/x.parquet"), "cannot write"),
        (OSError(30, "Read-only file system", "results/x.parquet"), "cannot write"),
    ],
)
def test_environment_faults_are_explained(error, words):
    from spectra_attn.run.workflow import explain_environment_error

    explained = explain_environment_error(error)
    assert explained.startswith(words) and "results/x.parquet" in explained
    assert explain_environment_error(FileNotFoundError(2, "No such file", "x")) is None
    assert explain_environment_error(ValueError("bad")) is None


def test_a_stale_lock_gets_the_commands_that_continue(tmp_path):
    """After a killed run, its lock stays: the hint gives the same command with --unlock, then
    with --rerun-incomplete; nothing is said without a lock, for a dry run, or while another
    Snakemake works in the folder."""
    import subprocess
    import sys
    import time

    from spectra_attn.run.workflow import stale_lock_hint

    argv = ["/x/.venv/bin/snakemake", "--cores", "1", "--resources", "gpu=1"]
    assert stale_lock_hint(tmp_path, argv) is None
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/demo/capture/part_0000.parquet\n")
    hint = stale_lock_hint(tmp_path, argv)
    assert hint.endswith(
        "    snakemake --cores 1 --resources gpu=1 --unlock\n"
        "    snakemake --cores 1 --resources gpu=1 --rerun-incomplete"
    )
    assert stale_lock_hint(tmp_path, [*argv, "-n"]) is None
    assert stale_lock_hint(tmp_path, [*argv, "-np"]) is None
    assert "--rerun-incomplete --rerun" not in stale_lock_hint(
        tmp_path, [*argv, "--rerun-incomplete"]
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "snakemake"], cwd=tmp_path
    )
    try:
        time.sleep(0.5)
        assert stale_lock_hint(tmp_path, argv) is None  # a live lock
    finally:
        other.kill()
        other.wait()


def test_a_files_sha256_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """Model jobs record their weights' sha256: read once per file as it is, not once per job."""
    import hashlib

    from spectra_attn import io

    monkeypatch.setenv(io.HASH_CACHE_ENV, str(tmp_path / "cache"))
    reads = []
    original = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path: reads.append(path) or original(path))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    expected = hashlib.sha256(b"weights").hexdigest()
    assert io.sha256_file_remembered(weights) == expected
    assert io.sha256_file_remembered(weights) == expected
    assert len(reads) == 1
    weights.write_bytes(b"other weights")
    os.utime(weights, ns=(1, 1))  # a new modification time: a new key
    assert io.sha256_file_remembered(weights) == hashlib.sha256(b"other weights").hexdigest()
    assert len(reads) == 2
    for entry in (tmp_path / "cache").iterdir():  # a damaged entry is not trusted
        entry.write_text("not a digest")
    assert io.sha256_file_remembered(weights) == hashlib.sha256(b"other weights").hexdigest()
    assert len(reads) == 3
