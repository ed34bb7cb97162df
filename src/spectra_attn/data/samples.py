"""Which sequences a stage reads: the first N rows of the shards, in order (as in the original
project), and
the table mapping each sample_id to its shard file and row, so any result can be recomputed from the
shards independently."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from spectra_attn.data.shards import SHARD_DTYPE, ShardError, iter_validated_shards, read_manifest

logger = logging.getLogger(__name__)


def sample_table(manifest_path: str | Path, n_samples: int) -> pd.DataFrame:
    """``sample_id, shard, row`` of the first ``n_samples`` sequences listed by the manifest."""
    manifest = read_manifest(manifest_path)
    available = manifest["sequences"]
    if n_samples > available:
        raise ShardError(
            f"samples 0-{n_samples - 1} requested but the shards of {manifest_path} hold only "
            f"{available} sequences: lower capture.n_samples or intervention.n_samples (or a "
            "head's n_samples) to at most that, or give data.source more text"
        )
    shard_files, rows = [], []
    for entry in manifest["shards"]:
        take = min(entry["rows"], n_samples - len(rows))
        shard_files += [entry["file"]] * take
        rows += range(take)
        if len(rows) == n_samples:
            break
    logger.info(
        "samples 0 to %d: the first rows of %d of the %d shards of %s",
        n_samples - 1,
        len(set(shard_files)),
        len(manifest["shards"]),
        manifest_path,
    )
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
    shards, rows = table["shard"].to_numpy(), table["row"].to_numpy()
    wanted = set(shards)
    context_length = read_manifest(manifest_path)["shard_spec"]["context_length"]
    out = np.empty((len(table), context_length), SHARD_DTYPE)
    for path, array in iter_validated_shards(manifest_path, only=wanted):
        mine = shards == path.name
        out[mine] = array[rows[mine]]
        wanted.discard(path.name)
        del array  # only this shard's rows are kept, and before the next shard loads
    if wanted:
        raise ShardError(f"{manifest_path} does not list the shards {sorted(wanted)}")
    return out
