"""Capture overhead and long-context memory on the bench model.

    .venv/bin/python benchmarks/capture_overhead.py overhead [--repeats 3] [--device cpu]
        [--arch llama|gpt_neox|gemma2]
    .venv/bin/python benchmarks/capture_overhead.py long-context [--lengths 1024 2048 4096 8192]

Bench model: a Llama config with hidden 256, 8 layers, 8 heads, 2 KV heads, vocab 4096
(intermediate 896 = 3.5 × hidden, Llama-3's ratio), random weights (seed 0), float32.

``overhead``: 16 samples × 512 tokens, batch 8. Wall time of
  * ``forward``: the plain forward pass (same call as capture: ``use_cache=False``,
    ``logits_to_keep=1``, SDPA attention), no hooks, nothing written;
  * ``capture``: ``capture_to_parquet`` — all four metrics and the two gains of every layer,
    head and token, pre-RoPE, written to a zstd Parquet file;
  * ``seed``: the original project's way — forward hooks on each layer's input norm, per-layer
  recompute of
    pre-RoPE q/k and the full [heads, T, T] softmax, the metrics by masked_fill/sort, rows appended
    to a CSV with pandas.
  * ``capture_torch_ops`` (with ``--torch-ops``): capture with the metrics as composed torch
    operations (what a GPU runs) instead of the CPU's fused kernels.
Every run of a way follows a plain forward pass (forward, capture, [forward, capture_torch_ops,]
[forward, seed,] forward, ...). Printed: the ratio of medians; the median of each run's ratio to the
forward pass just before it; and the ratio of process CPU times (all threads), which a busy
neighbour on a shared machine inflates much less than wall time. spectra_attn sets
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: run with ``OMP_WAIT_POLICY=ACTIVE`` to
see the difference.

``long-context``: one sample of T tokens per fresh subprocess; time and peak resident memory of the
plain forward and of capture (``--block`` 128, capped at 64 rows on the CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# spectra_attn before torch: it sets torch's OpenMP wait policy (see spectra_attn/__init__.py),
# for the plain forward and capture alike.
import spectra_attn  # noqa: F401

# isort: split
import numpy as np
import torch

import spectra_attn.model.metrics as metrics

BENCH = dict(
    hidden_size=256,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=4096,
    intermediate_size=896,
    max_position_embeddings=8192,
)


# The bench model's shape in other families (``overhead --arch``): a Pythia-shaped model (fused
# query_key_value, rotary on a quarter of each head) and a Gemma-2-shaped one (soft-capped logits,
# sliding-window layers, GQA), as wide and deep as the Llama bench model.
ARCH_BENCH = {
    "gpt_neox": dict(
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        vocab_size=4096,
        intermediate_size=1024,
        max_position_embeddings=8192,
        rotary_pct=0.25,
    ),
    "gemma2": dict(
        **BENCH,
        head_dim=32,
        query_pre_attn_scalar=32,
        attn_logit_softcapping=50.0,
        sliding_window=256,
    ),
}
# The attention a plain forward runs: SDPA, except Gemma-2 (transformers refuses SDPA for it).
PLAIN_ATTENTION = {"llama": "sdpa", "gpt_neox": "sdpa", "gemma2": "eager"}


def bench_model(device: str, arch: str = "llama"):
    import transformers

    torch.manual_seed(0)
    if arch == "llama":
        config = transformers.LlamaConfig(**BENCH, attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(config)
    elif arch == "gpt_neox":
        config = transformers.GPTNeoXConfig(**ARCH_BENCH[arch], attn_implementation="sdpa")
        model = transformers.GPTNeoXForCausalLM(config)
    else:
        config = transformers.Gemma2Config(**ARCH_BENCH[arch], attn_implementation="eager")
        model = transformers.Gemma2ForCausalLM(config)
    return model.to(device).eval()


def plain_forward(model, tokens: np.ndarray, batch_size: int) -> None:
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
            model(input_ids=batch.to(model.device), use_cache=False, logits_to_keep=1)
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def original_style(model, tokens: np.ndarray, batch_size: int, csv_path: Path) -> None:
    """The original project's AttentionProfiler: hooks on input_layernorm, per-layer pre-RoPE
    recompute, full softmax, metrics with masked_fill and sort, pandas rows appended to a CSV."""
    import pandas as pd

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    captured = {}

    def hook(layer_index):
        def keep(module, inputs, output):
            captured[layer_index] = output.detach()

        return keep

    handles = [
        layer.input_layernorm.register_forward_hook(hook(i))
        for i, layer in enumerate(model.model.layers)
    ]
    header = True
    try:
        with torch.inference_mode():
            for start in range(0, len(tokens), batch_size):
                ids = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                for sample in range(len(ids)):
                    for layer_index, layer in enumerate(model.model.layers):
                        hidden = captured[layer_index][sample : sample + 1]
                        attention = layer.self_attn
                        length = hidden.shape[1]
                        q = (
                            attention.q_proj(hidden)
                            .view(1, length, heads, head_dim)
                            .transpose(1, 2)
                        )
                        k = attention.k_proj(hidden).view(1, length, kv_heads, head_dim)
                        k = k.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
                        scores = q @ k.transpose(-1, -2) / head_dim**0.5
                        mask = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
                        p = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
                        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
                        entropy[..., :2] = float("nan")
                        max_attn = p.max(-1).values
                        cumulative = p.sort(-1, descending=True).values.cumsum(-1)
                        k_eff = (cumulative < 0.9).sum(-1) + 1
                        query_norm = q.norm(dim=-1)
                        frame = pd.DataFrame(
                            {
                                "sample_id": start + sample,
                                "layer": layer_index,
                                "head": np.repeat(np.arange(heads), length),
                                "token_pos": np.tile(np.arange(length), heads),
                                "query_norm": query_norm[0].flatten().numpy(),
                                "entropy": entropy[0].flatten().numpy(),
                                "max_attn": max_attn[0].flatten().numpy(),
                                "k_eff": k_eff[0].flatten().numpy(),
                            }
                        )
                        frame.to_csv(csv_path, mode="a", header=header, index=False)
                        header = False
    finally:
        for handle in handles:
            handle.remove()


def overhead(args) -> None:
    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.capture import capture_to_parquet, writer_threads_for
    from spectra_attn.model.loading import use_capture_attention

    torch.set_num_threads(args.threads)
    if args.arch != "llama" and not args.skip_seed:
        raise SystemExit(
            "--arch other than llama needs --skip-seed (the original project's way is Llama's)"
        )
    model = bench_model(args.device, args.arch)
    plain = PLAIN_ATTENTION[args.arch]
    generator = np.random.default_rng(0)
    tokens = generator.integers(1, BENCH["vocab_size"], size=(16, 512), dtype=np.int32)
    sample_ids = np.arange(len(tokens))
    settings = CaptureSettings(rope="pre", query_block_size=args.block)
    timings: dict[str, list[float]] = {
        "forward": [],
        "capture": [],
        "capture_torch_ops": [],
        "seed": [],
    }
    cpu_times: dict[str, list[float]] = {name: [] for name in timings}
    # The forward pass run just before each run of a way: what its paired ratio divides by.
    preceding: dict[str, list[float]] = {name: [] for name in timings}
    written: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_forward(model, tokens[:8], 8)  # warm-up
        # Warm-up of capture: the first call compiles the CPU kernel (or loads Numba's cache).
        use_capture_attention(model)
        start = time.perf_counter()
        capture_to_parquet(model, tokens[:1], sample_ids[:1], f"{tmp}/w.parquet", settings, 1)
        print(
            f"first capture call (1 sample, kernel compile or cache load): "
            f"{time.perf_counter() - start:.2f} s"
        )
        # One untimed run of each way at full size: the first runs of a shape take their memory
        # from the system (page faults) and are 0.3-0.6 s slower, whatever the way.
        capture_to_parquet(model, tokens, sample_ids, f"{tmp}/w.parquet", settings, args.batch_size)
        model.set_attn_implementation(plain)
        plain_forward(model, tokens, args.batch_size)

        def timed(name: str, run) -> None:
            if name != "forward":
                preceding[name].append(timings["forward"][-1])
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            timings[name].append(time.perf_counter() - wall)
            cpu_times[name].append(time.process_time() - cpu)

        def capture(path: str, kernel: bool = True) -> None:
            metrics.CPU_KERNEL = kernel
            use_capture_attention(model)
            try:
                written.append(
                    capture_to_parquet(
                        model,
                        tokens,
                        sample_ids,
                        path,
                        settings,
                        args.batch_size,
                        writer_threads=writer_threads_for(model.device),  # as run_capture
                    )
                )
            finally:
                model.set_attn_implementation(plain)
                metrics.CPU_KERNEL = True

        # Each run of a way follows a plain forward pass, which its paired ratio divides by: the
        # original project's way leaves the process slower for a while, and a forward measured
        # right after it made every ratio look better than it is.
        for repeat in range(args.repeats):
            timed("forward", lambda: plain_forward(model, tokens, args.batch_size))
            timed("capture", lambda: capture(f"{tmp}/capture.parquet"))
            if args.torch_ops:
                # The same capture with the metrics as composed torch operations (the GPU's path).
                timed("forward", lambda: plain_forward(model, tokens, args.batch_size))
                timed("capture_torch_ops", lambda: capture(f"{tmp}/torch_ops.parquet", False))
            if not args.skip_seed:
                path = Path(tmp) / f"seed_{repeat}.csv"
                timed("forward", lambda: plain_forward(model, tokens, args.batch_size))
                timed(
                    "seed", lambda path=path: original_style(model, tokens, args.batch_size, path)
                )
        rows = written[-1]
    forward = statistics.median(timings["forward"])
    print(
        f"{args.arch} bench model, device {args.device}, threads {args.threads}, 16 × 512 tokens, "
        f"batch {args.batch_size}, query block {args.block}"
    )
    for name, values in timings.items():
        if values:
            median = statistics.median(values)
            runs = ", ".join(f"{v:.2f}" for v in values)
            print(f"{name:>17}: {median:7.2f} s  ({median / forward:4.2f}× forward; runs {runs})")
    # Three steadier readings of the same runs on a shared machine: the median of each run's ratio
    # to the forward pass just before it; process CPU time (all threads; a neighbour's load
    # inflates wall time, much less CPU time); and the fastest run of each way (noise only ever
    # adds time, so the fastest runs are the least disturbed ones).
    for name, values in timings.items():
        if values and name != "forward":
            paired = statistics.median(
                [v / f for v, f in zip(values, preceding[name], strict=True)]
            )
            cpu = statistics.median(cpu_times[name]) / statistics.median(cpu_times["forward"])
            fastest = min(values) / min(timings["forward"])
            print(
                f"{name:>17}: paired wall ratio {paired:4.2f}×, CPU time ratio {cpu:4.2f}×, "
                f"fastest runs {fastest:4.2f}×"
            )
    print(f"capture rows: {rows} ({rows / statistics.median(timings['capture']):,.0f} rows/s)")


def one_length(args) -> None:
    """Child process: one sample of args.length tokens, plain forward or capture."""
    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.capture import capture_to_parquet, writer_threads_for
    from spectra_attn.model.loading import use_capture_attention

    torch.set_num_threads(args.threads)
    model = bench_model("cpu")
    tokens = np.random.default_rng(0).integers(1, 4096, size=(1, args.length), dtype=np.int32)
    if args.mode == "capture":
        # Load the CPU kernels (Numba, from its cache) first: a fixed cost, not one of T.
        from spectra_attn.model.metrics import row_metrics

        row_metrics(torch.zeros(2, 16))
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.mode == "forward":
        plain_forward(model, tokens, 1)
    else:
        use_capture_attention(model)
        with tempfile.TemporaryDirectory() as tmp:
            capture_to_parquet(
                model,
                tokens,
                np.arange(1),
                f"{tmp}/c.parquet",
                CaptureSettings(query_block_size=args.block),
                1,
                writer_threads=writer_threads_for(model.device),  # as run_capture
            )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "model_mib": baseline_rss / 1024})
    )


def long_context(args) -> None:
    print(f"T, mode, seconds, peak RSS MiB (after model load MiB); query block {args.block}")
    for length in args.lengths:
        for mode in ("forward", "capture"):
            command = [
                sys.executable,
                __file__,
                "one-length",
                "--length",
                str(length),
                "--mode",
                mode,
                "--block",
                str(args.block),
                "--threads",
                str(args.threads),
            ]
            result = json.loads(
                subprocess.run(command, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            print(
                f"{length:>6}, {mode:>8}, {result['seconds']:8.2f}, "
                f"{result['peak_mib']:8.0f} ({result['model_mib']:.0f})",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("overhead")
    first.add_argument("--repeats", type=int, default=3)
    first.add_argument("--batch-size", type=int, default=8)
    first.add_argument("--device", default="cpu")
    first.add_argument(
        "--arch", choices=sorted(PLAIN_ATTENTION), default="llama", help="the bench model's family"
    )
    first.add_argument("--threads", type=int, default=2)
    first.add_argument("--skip-seed", action="store_true")
    first.add_argument(
        "--torch-ops", action="store_true", help="also time capture with torch-composed metrics"
    )
    first.add_argument("--block", type=int, default=128, help="capture's query block size")
    first.set_defaults(handler=overhead)
    second = commands.add_parser("long-context")
    second.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    second.add_argument("--block", type=int, default=128)
    second.add_argument("--threads", type=int, default=2)
    second.set_defaults(handler=long_context)
    child = commands.add_parser("one-length")
    child.add_argument("--length", type=int, required=True)
    child.add_argument("--mode", choices=["forward", "capture"], required=True)
    child.add_argument("--block", type=int, default=256)
    child.add_argument("--threads", type=int, default=2)
    child.set_defaults(handler=one_length)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
