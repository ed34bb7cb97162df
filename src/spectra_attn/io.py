"""Atomic, deterministic file writing: a killed job never leaves a half-written output, and the
same content always gives the same bytes (so checksums and between-workflow caches are stable)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# zip timestamps are part of the bytes; numpy's savez stamps the current time, so we fix it.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def remove_stale_temporaries(path: Path) -> None:
    """Remove what an earlier writer of ``path`` killed with SIGKILL left beside it (the names
    :func:`atomic_path` and :func:`atomic_dir` give their temporaries). One job writes one
    output, so nothing else is writing them."""
    # tempfile's names: the prefix, 8 random characters, the suffix (and DuckDB's .wal beside).
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the result the permissions a plain open() would (umask applies).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; on success it replaces ``path`` (a folder, file
    or link there is removed first), on failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes the folder private; give it what mkdir would
        yield tmp
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, content: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed .npz that ``np.load`` reads, byte-identical for identical arrays."""
    with (
        atomic_path(path) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive,
    ):
        for name, array in arrays.items():
            array = np.asarray(array)
            if array.dtype == object:
                raise TypeError(f"refusing to write object array {name!r} (it would need pickle)")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


HASH_CACHE_ENV = "SPECTRA_HASH_CACHE"


def hash_cache_dir() -> Path:
    """Where :func:`sha256_file_remembered` keeps its digests: ``SPECTRA_HASH_CACHE``, else
    ``$XDG_CACHE_HOME/spectra/sha256`` (``~/.cache/spectra/sha256``)."""
    if folder := os.environ.get(HASH_CACHE_ENV):
        return Path(folder)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "spectra" / "sha256"


def sha256_file_remembered(path: str | Path) -> str:
    """:func:`sha256_file`, remembered for the file as it is (its path, size, inode and
    modification time): every model job records its weights' sha256, and reading a model's
    16 GB again in each capture part, atlas part, sweep and check would cost more than the
    metrics. Any change to the file makes a new key; a cache that cannot be written is skipped."""
    path = Path(path).resolve()
    status = path.stat()
    identity = f"{path}\0{status.st_size}\0{status.st_ino}\0{status.st_mtime_ns}"
    entry = hash_cache_dir() / hashlib.sha256(identity.encode()).hexdigest()
    try:
        remembered = entry.read_text().strip()
    except OSError:
        remembered = ""
    if len(remembered) == 64 and all(c in "0123456789abcdef" for c in remembered):
        return remembered
    digest = sha256_file(path)
    try:
        with atomic_path(entry) as tmp:
            tmp.write_text(digest)
    except OSError:
        pass  # a read-only home: hash again next time
    return digest


def write_csv(frame, path: str | Path) -> None:
    """Write a pandas DataFrame as CSV, atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_parquet(frame, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a pandas DataFrame as a zstd Parquet file, atomically, without the pandas index;
    ``metadata`` is added to the file's key-value metadata (beside pandas' own)."""
    with atomic_path(path) as tmp:
        if not metadata:
            frame.to_parquet(tmp, compression="zstd", index=False)
            return
        import pyarrow as pa  # lazy: every process imports this module, most never write Parquet
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        extra = {key.encode(): value.encode() for key, value in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        pq.write_table(table, tmp, compression="zstd")
