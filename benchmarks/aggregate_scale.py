"""Aggregation of the original project's main run size: 64 samples × 32 layers × 32 heads × 512
tokens = 33,554,432 rows (synthetic values), on this machine: wall time and peak memory.

    .venv/bin/python benchmarks/aggregate_scale.py [--work /tmp/spectra_agg] [--skip-pandas]

Data: 4 capture parts of 16 samples (Parquet, zstd, the capture's schema; entropy null at the
first 2 positions), and the same rows as the original project's CSV. Each measurement runs in a
fresh subprocess; peak memory is that process's maximum resident set size.
  * ``duckdb``: spectra_attn.analysis.aggregate — partial_aggregate of each part (the map jobs, run
  one
    after the other here), then reduce_aggregates (merge, quantiles, Spearman ρ, exports);
  * ``pandas``: the original project's way — pandas.read_csv of the CSV, then per-(layer, head)
  mean, std,
    quantiles, Pearson and Spearman correlation with groupby.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LAYERS, HEADS, T, SAMPLES, PARTS = 32, 32, 512, 64, 4


def generate(work: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    work.mkdir(parents=True, exist_ok=True)
    if (work / "done").exists():
        return
    generator = np.random.default_rng(0)
    per_part = SAMPLES // PARTS
    csv_writer = None
    for part in range(PARTS):
        shape = (per_part, LAYERS, HEADS, T)
        n = int(np.prod(shape))
        sample = np.broadcast_to(
            np.arange(part * per_part, (part + 1) * per_part, dtype=np.int32)[:, None, None, None],
            shape,
        ).ravel()
        layer = np.broadcast_to(np.arange(LAYERS, dtype=np.int16)[None, :, None, None], shape)
        head = np.broadcast_to(np.arange(HEADS, dtype=np.int16)[None, None, :, None], shape)
        pos = np.broadcast_to(np.arange(T, dtype=np.int32), shape).ravel()
        norm = generator.gamma(4.0, 1.0, size=n).astype(np.float32)
        entropy = (np.log1p(pos) * 0.8 - 0.05 * norm).astype(np.float32)
        columns = {
            "sample_id": sample,
            "layer": layer.ravel(),
            "head": head.ravel(),
            "token_pos": pos,
            "query_norm": norm,
            "entropy": pa.array(np.where(pos < 2, np.nan, entropy), from_pandas=True),
            "max_attn": generator.random(n, dtype=np.float32),
            "k_eff": (generator.random(n) * (pos + 1)).astype(np.int32) + 1,
            "sink_attn": generator.random(n, dtype=np.float32),
            "gain_max_attn": np.zeros(n, np.float32),
            "gain_entropy": np.zeros(n, np.float32),
        }
        table = pa.table(columns)
        pq.write_table(table, work / f"part_{part:04d}.parquet", compression="zstd")
        original_columns = table.select(list(columns)[:8])
        if csv_writer is None:
            csv_writer = pacsv.CSVWriter(work / "attention_metrics.csv", original_columns.schema)
        csv_writer.write_table(original_columns)
        print(f"generated part {part}", flush=True)
    csv_writer.close()
    (work / "done").write_text("ok")


def run_duckdb(work: Path) -> None:
    from spectra_attn.analysis.aggregate import partial_aggregate, reduce_aggregates

    parts = [str(work / f"part_{i:04d}.parquet") for i in range(PARTS)]
    partials = [str(work / "partials" / f"part_{i:04d}") for i in range(PARTS)]
    start = time.perf_counter()
    for part, partial in zip(parts, partials, strict=True):
        partial_aggregate(part, partial, context_length=T)
    mapped = time.perf_counter() - start
    reduce_aggregates(partials, parts, work / "spectra.duckdb", work / "exports", context_length=T)
    report(time.perf_counter() - start, extra={"map_seconds": mapped})


def run_pandas(work: Path) -> None:
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_csv(work / "attention_metrics.csv")
    grouped = frame.groupby(["layer", "head"])
    metrics = ["query_norm", "entropy", "max_attn", "k_eff"]
    grouped[metrics].agg(["count", "mean", "std"])
    grouped[metrics].quantile([0.05, 0.25, 0.5, 0.75, 0.95])
    paired = frame.dropna(subset=["entropy"])
    paired.groupby(["layer", "head"])[["query_norm", "entropy"]].corr()
    ranks = paired.groupby(["layer", "head"])[["query_norm", "entropy"]].rank()
    ranks[["layer", "head"]] = paired[["layer", "head"]]
    ranks.groupby(["layer", "head"])[["query_norm", "entropy"]].corr()
    frame.groupby(["layer", "head", "token_pos"])[metrics].mean()
    report(time.perf_counter() - start)


def report(seconds: float, extra: dict | None = None) -> None:
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_mib": round(peak_mib), **(extra or {})}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/spectra_agg")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--only", choices=["duckdb", "pandas"])
    args = parser.parse_args()
    work = Path(args.work)
    if args.only:
        {"duckdb": run_duckdb, "pandas": run_pandas}[args.only](work)
        return
    generate(work)
    print(f"{LAYERS * HEADS * T * SAMPLES:,} rows in {PARTS} parts")
    for name in ["duckdb"] + ([] if args.skip_pandas else ["pandas"]):
        command = [sys.executable, __file__, "--work", str(work), "--only", name]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        print(f"{name:>7}: {output.strip().splitlines()[-1]}", flush=True)


if __name__ == "__main__":
    main()
