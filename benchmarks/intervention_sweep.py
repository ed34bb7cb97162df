"""One head's sweep (5 scales, 16 samples) batched against one forward pass per scale.

    .venv/bin/python benchmarks/intervention_sweep.py [--repeats 3] [--threads 2]

Bench model as in capture_overhead.py (hidden 256, 8 layers, 8 heads, 2 KV heads, vocab 4096,
random weights), 16 samples × 512 tokens, head L4 H3, pre-RoPE metrics, CPU float32. Both ways
compute the same things: the head's per-token metrics at each scale, and each scale's loss and
KL(baseline ‖ intervened).
  * ``separate``: per sample, one baseline pass and 5 passes of batch 1, one per scale;
  * ``batched``: ``sweep_batch`` — per group of samples, one baseline pass and one pass of
    samples × 5 elements, each element with its own scale (intervention.batch_size 1 and 4).
Runs alternate; medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from capture_overhead import bench_model

from spectra_attn.model.attention import AttentionRecorder, CaptureSettings
from spectra_attn.model.intervention import HeadSpec, QueryScaler, output_effects, sweep_batch
from spectra_attn.model.loading import use_capture_attention

SCALES = [0.5, 0.75, 1.0, 1.25, 1.5]
SPEC = HeadSpec(layer=4, head=3)


@torch.inference_mode()
def separate(model, tokens, settings):
    for row in tokens:
        ids = torch.from_numpy(row[None].astype(np.int64))
        base = model(input_ids=ids, use_cache=False).logits
        for scale in SCALES:
            recorder = AttentionRecorder(model, settings, layers={SPEC.layer}, heads=[SPEC.head])
            with QueryScaler(model, SPEC.layer, SPEC.head, torch.tensor([scale])), recorder:
                logits = model(input_ids=ids, use_cache=False).logits
            output_effects(base, logits, ids)


def batched(model, tokens, settings, batch_size):
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
        sweep_batch(model, ids, SPEC, SCALES, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = bench_model("cpu")
    use_capture_attention(model)
    tokens = np.random.default_rng(0).integers(1, 4096, size=(16, 512), dtype=np.int32)
    settings = CaptureSettings(rope="pre")
    runs = {
        "separate": lambda: separate(model, tokens, settings),
        "batched (batch_size 1)": lambda: batched(model, tokens, settings, 1),
        "batched (batch_size 4)": lambda: batched(model, tokens, settings, 4),
    }
    batched(model, tokens[:2], settings, 1)  # warm-up
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    reference = statistics.median(timings["separate"])
    print(
        f"16 samples × 512 tokens, {len(SCALES)} scales, head {SPEC.name}, threads {args.threads}"
    )
    for name, values in timings.items():
        median = statistics.median(values)
        runs_text = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{name:>24}: {median:6.2f} s  ({reference / median:4.2f}× faster than separate; "
            f"runs {runs_text})"
        )


if __name__ == "__main__":
    main()
