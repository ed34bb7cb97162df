"""The CPU cost of writing capture rows, per batch of the Llama-3-8B shape, without a model.

    .venv/bin/python benchmarks/parquet_write.py [--repeats 3] [--threads 1 2 4 8]

One batch as capture hands it to its writer thread: 8 samples × 32 layers × 32 heads × 512 tokens
(4,194,304 rows) of random metric values; timed: ``to_columns`` (long format), the Arrow arrays,
and ``ParquetWriter.write_table`` (zstd, dictionary-encoded ids), as ``capture_to_parquet`` does
them. On a GPU this CPU work runs beside the next batch's forward pass; if it takes longer than the
forward, capture is bound by writing rather than by the GPU.

``--threads``: capture's own writer on N threads (``capture.row_group_tables`` into a
``parquet_parts.PartsWriter``: the batch's row groups, one sample each at this shape, built and
encoded at once, joined into one file), rows/s for each N. (benchmarks/gpu_capture.py calls
:func:`measure` on the GPU machine's host.)
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from spectra_attn.model.capture import PARQUET_OPTIONS, parquet_schema, row_group_tables, to_columns
from spectra_attn.model.parquet_parts import PartsWriter


def batch_layers(batch: int, layers: int, heads: int, length: int) -> dict:
    generator = torch.Generator().manual_seed(0)

    def values(scale: float = 1.0) -> torch.Tensor:
        return torch.rand(batch, heads, length, generator=generator) * scale

    return {
        layer: {
            "query_norm": values(10.0),
            "entropy": values(5.0),
            "max_attn": values(),
            "k_eff": torch.randint(1, length, (batch, heads, length), dtype=torch.int32),
            "sink_attn": values(),
            "gain_max_attn": values(),
            "gain_entropy": -values(),
        }
        for layer in range(layers)
    }


def encode(table: pa.Table, schema: pa.Schema) -> int:
    """Write ``table`` with capture's writer options in one ParquetWriter, to memory."""
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, schema, **PARQUET_OPTIONS) as writer:
        writer.write_table(table)
    return buffer.tell()


def measure(repeats: int = 3, threads: list[int] | None = None) -> dict:
    """Median seconds per batch of each step on one thread; with ``threads``, the rows/s of
    capture's writer on N threads for each N."""
    layers = batch_layers(8, 32, 32, 512)
    schema = parquet_schema()
    runs: dict[str, list[float]] = {"to_columns": [], "arrow arrays": [], "write_table": []}
    for _ in range(repeats):
        start = time.perf_counter()
        columns = to_columns(layers, np.arange(8))
        runs["to_columns"].append(time.perf_counter() - start)
        start = time.perf_counter()
        arrays = [pa.array(columns[f.name], f.type, from_pandas=True) for f in schema]
        runs["arrow arrays"].append(time.perf_counter() - start)
        table = pa.Table.from_arrays(arrays, schema=schema)
        start = time.perf_counter()
        encode(table, schema)
        runs["write_table"].append(time.perf_counter() - start)
    rows = table.num_rows
    steps = {name: statistics.median(values) for name, values in runs.items()}
    result = {
        "rows_per_batch": rows,
        "seconds": steps,
        "rows_per_s_one_thread": rows / sum(steps.values()),
    }
    if threads:
        scaling = {}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "batch.parquet"
            for n in threads:
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    with PartsWriter(path, schema, n, **PARQUET_OPTIONS) as writer:
                        writer.write_parts(row_group_tables(layers, np.arange(8), schema))
                    times.append(time.perf_counter() - start)
                scaling[str(n)] = rows / statistics.median(times)
        result["writer_rows_per_s_by_threads"] = scaling
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="*", default=[])
    args = parser.parse_args()
    result = measure(args.repeats, args.threads)
    rows = result["rows_per_batch"]
    print(f"{rows:,} rows per batch (8 × 32 layers × 32 heads × 512 tokens)")
    for name, seconds in result["seconds"].items():
        print(f"{name:>13}: {seconds:.2f} s median")
    total = sum(result["seconds"].values())
    print(f"{'total':>13}: {total:.2f} s per batch, {rows / total:,.0f} rows/s on one thread")
    for n, rate in result.get("writer_rows_per_s_by_threads", {}).items():
        print(f"capture's writer on {n:>2} thread(s): {rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
