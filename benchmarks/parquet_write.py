"""The CPU cost of writing capture rows, per batch of the Llama-3-8B shape, without a model.

    .venv/bin/python benchmarks/parquet_write.py [--repeats 3]

One batch as capture hands it to its writer thread: 8 samples × 32 layers × 32 heads × 512 tokens
(4,194,304 rows) of random metric values; timed: ``to_columns`` (long format), the Arrow arrays,
and ``ParquetWriter.write_table`` (zstd, dictionary-encoded ids), as ``capture_to_parquet`` does
them. On a GPU this CPU work runs beside the next batch's forward pass; if it takes longer than the
forward, capture is bound by writing rather than by the GPU.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from spectra_attn.capture import parquet_schema, to_columns


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    layers = batch_layers(8, 32, 32, 512)
    schema = parquet_schema()
    runs: dict[str, list[float]] = {"to_columns": [], "arrow arrays": [], "write_table": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        columns = to_columns(layers, np.arange(8))
        runs["to_columns"].append(time.perf_counter() - start)
        start = time.perf_counter()
        arrays = [pa.array(columns[f.name], f.type, from_pandas=True) for f in schema]
        runs["arrow arrays"].append(time.perf_counter() - start)
        buffer = io.BytesIO()
        writer = pq.ParquetWriter(
            buffer, schema, compression="zstd", use_dictionary=["sample_id", "layer", "head"]
        )
        start = time.perf_counter()
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        writer.close()
        runs["write_table"].append(time.perf_counter() - start)
    rows = len(columns["sample_id"])
    total = sum(statistics.median(v) for v in runs.values())
    print(f"{rows:,} rows per batch (8 × 32 layers × 32 heads × 512 tokens)")
    for name, values in runs.items():
        print(f"{name:>13}: {statistics.median(values):.2f} s median")
    print(f"{'total':>13}: {total:.2f} s per batch, {rows / total:,.0f} rows/s on one thread")


if __name__ == "__main__":
    main()
