"""The row metrics of one block of attention logits: the CPU's fused kernels against the torch
composition (the GPU's path), on the CPU, in one process.

    .venv/bin/python benchmarks/row_metrics_block.py [--repeats 20] [--threads 2]

Block: the bench model's layer shape in capture, 8 samples × 2 KV heads × 4 query heads per KV
head × 128 query rows, keys 0 … 511 (the last block of a 512-token sample: causal, the future keys
of its last 128 × 128 square masked), logits of random pre-RoPE-like queries and keys (d = 32).
"""

from __future__ import annotations

# spectra_attn before torch: it sets torch's OpenMP wait policy (see spectra_attn/__init__.py).
import spectra_attn  # noqa: F401

# isort: split
import argparse
import statistics
import time

import torch

from spectra_attn.model.metrics import (
    METRIC_NAMES,
    _row_metrics_cpu,
    _row_metrics_torch,
    causal_logits,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    query, key = torch.randn(8, 2, 4, 128, 32) * 2, torch.randn(8, 2, 1, 512, 32)
    logits = causal_logits(query, key, 32**-0.5, 384)
    fused, composed = _row_metrics_cpu(logits, 0.9), _row_metrics_torch(logits, 0.9)
    for name in METRIC_NAMES:  # same numbers, or the timing means nothing
        torch.testing.assert_close(
            getattr(fused, name), getattr(composed, name), rtol=1e-4, atol=1e-5
        )
    runs: dict[str, list[float]] = {"fused CPU kernels": [], "torch composition": []}
    for _ in range(args.repeats):
        for name, implementation in (
            ("fused CPU kernels", _row_metrics_cpu),
            ("torch composition", _row_metrics_torch),
        ):
            start = time.perf_counter()
            implementation(logits, 0.9)
            runs[name].append(time.perf_counter() - start)
    rows, keys = logits.numel() // logits.shape[-1], logits.shape[-1]
    print(f"block {tuple(logits.shape)}: {rows} rows × {keys} keys, threads {args.threads}")
    base = statistics.median(runs["torch composition"])
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:>18}: {median * 1e3:6.2f} ms median ({base / median:4.2f}× the composition)")


if __name__ == "__main__":
    main()
