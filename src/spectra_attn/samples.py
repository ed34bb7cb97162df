"""Which sequences a stage reads: the first N rows of the shards, in order (as in the seed), and
the table mapping each sample_id to its shard file and row, so any result can be recomputed from the
shards independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spectra_attn.shards import ShardError, load_validated_shards, read_manifest


def sample_table(manifest_path: str | Path, n_samples: int) -> pd.DataFrame:
    """``sample_id, shard, row`` of the first ``n_samples`` sequences listed by the manifest."""
    manifest = read_manifest(manifest_path)
    available = manifest["sequences"]
    if n_samples > available:
        raise ShardError(
            f"{n_samples} samples requested but the shards of {manifest_path} hold only "
            f"{available} sequences (lower the n_samples key or make more shards)"
        )
    shard_files, rows = [], []
    for entry in manifest["shards"]:
        take = min(entry["rows"], n_samples - len(rows))
        shard_files += [entry["file"]] * take
        rows += range(take)
        if len(rows) == n_samples:
            break
    return pd.DataFrame(
        {
            "sample_id": np.arange(n_samples, dtype=np.int32),
            "shard": shard_files,
            "row": np.asarray(rows, dtype=np.int32),
        }
    )


def sample_ranges(n_samples: int, samples_per_job: int) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges of the jobs a stage is split into."""
    return [
        (start, min(start + samples_per_job, n_samples))
        for start in range(0, n_samples, samples_per_job)
    ]


def load_samples(manifest_path: str | Path, table: pd.DataFrame) -> np.ndarray:
    """The token rows of ``table``'s samples, ``[n, context_length]`` int32, from shards that are
    validated (checksum and contents) before anything is returned."""
    loaded = load_validated_shards(manifest_path, only=set(table["shard"]))
    arrays = {path.name: array for path, array in loaded.items()}
    return np.stack([arrays[s][r] for s, r in zip(table["shard"], table["row"], strict=True)])
