"""The row metrics of one block of attention logits: the CPU kernel against the torch composition
(the GPU's path), on the CPU, in one process.

    .venv/bin/python benchmarks/row_metrics_block.py [--repeats 20] [--threads 2]

Block: the bench model's layer shape in capture, 8 samples × 2 KV heads × 4 query heads per KV
head × 128 query rows, keys 0 … 511 (the last block of a 512-token sample: causal, the future keys
of its last 128 × 128 square masked), logits of random pre-RoPE-like queries and keys (d = 32).

Three ways: the CPU kernel on the masked block (``row_metrics`` on any logits: every key read), the
CPU kernel as capture runs it (the block unmasked, each row's visible keys only), and the torch
composition on the masked block.
"""

from __future__ import annotations

# spectra_attn before torch: it sets torch's OpenMP wait policy (see spectra_attn/__init__.py).
import spectra_attn  # noqa: F401

# isort: split
import argparse
import statistics
import time

import torch

from spectra_attn.metrics import (
    METRIC_NAMES,
    RowMetrics,
    _cpu_outputs,
    _row_metrics_cpu,
    _row_metrics_torch,
    _run_cpu_kernel,
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
    unmasked = causal_logits(query, key, 32**-0.5, 384, mask=False).reshape(-1, 512)

    def causal_kernel(_logits, threshold):
        out = _cpu_outputs(64, 128)
        _run_cpu_kernel(unmasked, 128, 384, True, None, threshold, 0, out)
        return RowMetrics(**{name: torch.from_numpy(out[name]) for name in METRIC_NAMES})

    ways = {
        "CPU kernel, masked": _row_metrics_cpu,
        "CPU kernel, causal": causal_kernel,
        "torch composition": _row_metrics_torch,
    }
    composed = _row_metrics_torch(logits, 0.9)
    for way in ways.values():  # same numbers, or the timing means nothing
        result = way(logits, 0.9)
        for name in METRIC_NAMES:
            torch.testing.assert_close(
                getattr(result, name).reshape(-1),
                getattr(composed, name).reshape(-1),
                rtol=1e-4,
                atol=1e-5,
            )
    runs: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            way(logits, 0.9)
            runs[name].append(time.perf_counter() - start)
    rows, keys = logits.numel() // logits.shape[-1], logits.shape[-1]
    print(f"block {tuple(logits.shape)}: {rows} rows × {keys} keys, threads {args.threads}")
    base = statistics.median(runs["torch composition"])
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:>18}: {median * 1e3:6.2f} ms median ({base / median:4.2f}× the composition)")


if __name__ == "__main__":
    main()
