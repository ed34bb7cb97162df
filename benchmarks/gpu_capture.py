"""Capture on a Llama-3-8B-shaped model on one GPU: checks, then timings, in one call.

    python benchmarks/gpu_capture.py --out DIR [--samples 64] [--batch-size 8] [--repeats 2]
    python benchmarks/gpu_capture.py --out DIR --tiny --device cpu   # the script itself, on a CPU
    PYTHONPATH=src python3 benchmarks/gpu_capture.py --out "$OUT"   # where spectra_attn is not
                                                                     # installed (the GPU machine)

Needs torch, transformers (5.17 and 5.24 tested), numba, numpy, pandas, pyarrow and tqdm: all on the
lent GPU machines' image, so nothing has to be carried there.

Model: Llama-3-8B's shape (32 layers, hidden 4096, 32 heads, 8 KV heads, intermediate 14336,
vocab 128256, rope θ 500000 with Llama-3 scaling), random weights (seed 0), bfloat16, built on the
device (nothing is downloaded). ``--tiny`` keeps the head layout with 2 layers and hidden 512.

1. Checks, on 2 samples × 512 tokens:
   * post-RoPE capture against the model's own eager attention (``output_attentions``, computed
     in bfloat16 by the model, so the bound is loose: bf16 logits);
   * the device's metric implementation against the CPU's fused kernel on the same float32 logits
     of one layer (tight: the same numbers through two implementations).
2. Timings (alternating, ``--repeats`` each, after a warm-up): the plain forward (SDPA,
   ``logits_to_keep=1``, no hooks, nothing written) and capture (pre-RoPE, every metric of every
   layer, head and token, zstd Parquet written to a temporary folder, its row groups encoded on
   the threads ``run_capture`` would use: torch's but one), with peak GPU memory; and capture
   with one writer thread (the two files must be byte-identical).
3. Where capture's time goes: the same capture with nothing written (forward, metrics, copies to
   the host), so capture minus this is what writing adds, and again with each layer's copies to
   the host waited for (``NON_BLOCKING_COPIES = False``; both must give equal arrays), and with
   all of a sequence's queries in one block (fewer, larger kernels); the host's Parquet encoding
   of one batch of this shape on one thread and on N threads at once (``parquet_write.measure``);
   and a torch profile of one captured batch (``gpu_profile.txt``, operators by device time).

Writes ``gpu_capture.json`` into --out after each step (a run cut short keeps what it measured)
and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

# spectra_attn before torch: it sets torch's OpenMP wait policy (see spectra_attn/__init__.py).
import spectra_attn  # noqa: F401

# isort: split
import numpy as np
import torch

LLAMA3_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128001,
)
TINY = {**LLAMA3_8B, "hidden_size": 512, "num_hidden_layers": 2, "intermediate_size": 1792}


def build_model(shape: dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_metrics(p: np.ndarray, skip: int) -> dict[str, np.ndarray]:
    """float64 metrics of probability rows ``[..., keys]``, independently of spectra_attn."""
    p = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    entropy[..., :skip] = np.nan
    top = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
    return {
        "max_attn": p.max(-1),
        "entropy": entropy,
        "k_eff": (top < 0.9 - 1e-6).sum(-1) + 1,
    }


def check_against_eager(model, tokens: np.ndarray, device: torch.device) -> dict:
    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.capture import capture_batch
    from spectra_attn.model.loading import use_capture_attention

    settings = CaptureSettings(rope="post")
    ids = torch.from_numpy(tokens.astype(np.int64))
    use_capture_attention(model)
    with torch.inference_mode():
        captured = capture_batch(model, ids, settings)
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        attentions = model(ids.to(device), output_attentions=True, use_cache=False).attentions
    model.set_attn_implementation("sdpa")
    result = {}
    layers = sorted({0, len(attentions) // 2, len(attentions) - 1})
    for layer in layers:
        reference = reference_metrics(
            attentions[layer].float().cpu().numpy(), settings.entropy_skip_tokens
        )
        deviation = {}
        for name, expected in reference.items():
            got = captured[layer][name].numpy().astype(np.float64)
            diff = np.abs(got - expected)[np.isfinite(expected)]
            deviation[name] = {"max": float(diff.max()), "median": float(np.median(diff))}
        result[f"layer_{layer}"] = deviation
    return result


def check_against_cpu_kernel(model, tokens: np.ndarray, device: torch.device) -> dict:
    """One layer's pre-RoPE logits: the device's implementation against the CPU's fused kernel."""
    from spectra_attn.model.attention import pre_rope_source
    from spectra_attn.model.metrics import (
        METRIC_NAMES,
        _row_metrics_cpu,
        _row_metrics_torch,
        causal_logits,
    )

    attention = model.model.layers[len(model.model.layers) // 2].self_attn
    kept = {}
    handles = [
        pre_rope_source(attention, kind).register_forward_hook(
            lambda m, i, o, kind=kind: kept.__setitem__(kind, o)
        )
        for kind in ("q", "k")
    ]
    with torch.inference_mode():
        model(torch.from_numpy(tokens[:1].astype(np.int64)).to(device), logits_to_keep=1)
    for handle in handles:
        handle.remove()
    dim = attention.head_dim
    q = kept["q"].reshape(1, tokens.shape[1], -1, dim).transpose(1, 2)[0]  # [heads, T, d]
    k = kept["k"].reshape(1, tokens.shape[1], -1, dim).transpose(1, 2)[0]
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    logits = causal_logits(q, k, 1.0 / math.sqrt(dim), 0)
    on_device = _row_metrics_torch(logits, 0.9)
    on_cpu = _row_metrics_cpu(logits.cpu(), 0.9)
    out = {}
    for name in METRIC_NAMES:
        a = getattr(on_device, name).cpu().double()
        b = getattr(on_cpu, name).double()
        out[name] = float((a - b).abs().max())
    out["k_eff_rows_differing"] = int((on_device.k_eff.cpu() != on_cpu.k_eff).sum())
    out["rows"] = int(on_cpu.k_eff.numel())
    return out


def plain_forward(model, tokens: np.ndarray, batch_size: int, device: torch.device) -> None:
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
            model(input_ids=batch.to(device), use_cache=False, logits_to_keep=1)
    sync(device)


def timings(model, tokens, batch_size, repeats, device, block) -> dict:
    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.capture import capture_to_parquet, writer_threads_for
    from spectra_attn.model.loading import use_capture_attention

    settings = CaptureSettings(rope="pre", query_block_size=block)
    sample_ids = np.arange(len(tokens))
    threads = writer_threads_for(device)  # what run_capture uses on this device
    runs: dict[str, list[float]] = {"forward": [], "capture": [], "capture_one_writer_thread": []}
    peaks: dict[str, int] = {}
    rows = 0
    with tempfile.TemporaryDirectory() as tmp:
        plain_forward(model, tokens[:batch_size], batch_size, device)  # warm-up
        use_capture_attention(model)
        capture_to_parquet(
            model,
            tokens[:batch_size],
            sample_ids[:batch_size],
            f"{tmp}/w.parquet",
            settings,
            batch_size,
        )
        for _ in range(repeats):
            model.set_attn_implementation("sdpa")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            plain_forward(model, tokens, batch_size, device)
            runs["forward"].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks["forward"] = torch.cuda.max_memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            use_capture_attention(model)
            for name, n in (("capture", threads), ("capture_one_writer_thread", 1)):
                start = time.perf_counter()
                rows = capture_to_parquet(
                    model,
                    tokens,
                    sample_ids,
                    f"{tmp}/{name}.parquet",
                    settings,
                    batch_size,
                    writer_threads=n,
                )
                sync(device)
                runs[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks["capture"] = torch.cuda.max_memory_allocated(device)
        size = Path(f"{tmp}/capture.parquet").stat().st_size
        same = (
            Path(f"{tmp}/capture.parquet").read_bytes()
            == Path(f"{tmp}/capture_one_writer_thread.parquet").read_bytes()
        )
    model.set_attn_implementation("sdpa")
    forward, capture = (statistics.median(runs[k]) for k in ("forward", "capture"))
    return {
        "runs_s": runs,
        "forward_s": forward,
        "capture_s": capture,
        "ratio": capture / forward,
        "writer_threads": threads,
        "capture_one_writer_thread_s": statistics.median(runs["capture_one_writer_thread"]),
        "same_bytes_whatever_the_writer_threads": same,
        "rows": rows,
        "rows_per_s": rows / capture,
        "parquet_bytes": size,
        "peak_gpu_bytes": peaks,
    }


def metrics_only(model, tokens, batch_size, repeats, device, block) -> dict:
    """Capture with nothing written: forward passes, metrics and their copies to the host; also
    with each layer's copies waited for (``NON_BLOCKING_COPIES = False``), alternating."""
    import spectra_attn.model.capture as capture
    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.loading import use_capture_attention

    settings = CaptureSettings(rope="pre", query_block_size=block)
    whole = CaptureSettings(rope="pre", query_block_size=tokens.shape[1])
    # name: (copies queued, settings)
    ways = {
        "queued_copies": (True, settings),
        "copies_waited_per_layer": (False, settings),
        "queued_copies_one_query_block": (True, whole),
    }
    use_capture_attention(model)
    runs: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(repeats):
            for name, (queued, way) in ways.items():
                capture.NON_BLOCKING_COPIES = queued
                start = time.perf_counter()
                for first in range(0, len(tokens), batch_size):
                    batch = torch.from_numpy(tokens[first : first + batch_size].astype(np.int64))
                    capture.capture_batch(model, batch, way)
                sync(device)
                runs[name].append(time.perf_counter() - start)
        # The queued copies, read after capture_batch's one wait, equal the waited-for ones (a
        # missing wait would show as stale or unwritten memory, far beyond any rounding).
        batch = torch.from_numpy(tokens[:batch_size].astype(np.int64))
        results = []
        for queued in (True, False):
            capture.NON_BLOCKING_COPIES = queued
            results.append(capture.capture_batch(model, batch, settings))
        pairs = [
            (a[name].double().numpy(), results[1][layer][name].double().numpy())
            for layer, a in results[0].items()
            for name in a
        ]
        differing = sum(not np.array_equal(a, b, equal_nan=True) for a, b in pairs)
        nan_mismatches = sum(int((np.isnan(a) != np.isnan(b)).sum()) for a, b in pairs)
        largest = max(float(np.nanmax(np.abs(a - b), initial=0.0)) for a, b in pairs)
    finally:
        capture.NON_BLOCKING_COPIES = True
        model.set_attn_implementation("sdpa")
    return {
        "runs_s": runs,
        **{f"{k}_median_s": statistics.median(v) for k, v in runs.items()},
        "queued_vs_waited_arrays_differing": differing,
        "queued_vs_waited_nan_mismatches": nan_mismatches,
        "queued_vs_waited_max_abs_difference": largest,
    }


def profile_batch(model, tokens, batch_size, device, block, path: Path) -> None:
    """Operators of one captured batch (nothing written), by device time, into ``path``."""
    from torch.profiler import ProfilerActivity, profile

    from spectra_attn.model.attention import CaptureSettings
    from spectra_attn.model.capture import capture_batch
    from spectra_attn.model.loading import use_capture_attention

    settings = CaptureSettings(rope="pre", query_block_size=block)
    use_capture_attention(model)
    batch = torch.from_numpy(tokens[:batch_size].astype(np.int64))
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        capture_batch(model, batch, settings)
        sync(device)
    model.set_attn_implementation("sdpa")
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40) + "\n")


def save(report: dict, out: Path) -> None:
    """Write the report so far (atomically: a run cut short leaves the last whole one)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gpu_capture.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out / "gpu_capture.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--block", type=int, default=128, help="capture's query block size")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.machine(),
        "torch": torch.__version__,
        "shape": "tiny" if args.tiny else "llama3-8b",
        "samples": args.samples,
        "length": args.length,
        "batch_size": args.batch_size,
        "dtype": str(dtype),
    }
    out = Path(args.out)
    save(report, out)
    start = time.perf_counter()
    model = build_model(TINY if args.tiny else LLAMA3_8B, device, dtype)
    sync(device)
    report["build_s"] = time.perf_counter() - start
    report["parameters"] = sum(p.numel() for p in model.parameters())
    generator = np.random.default_rng(0)
    vocab = model.config.vocab_size
    tokens = generator.integers(1, vocab, size=(args.samples, args.length), dtype=np.int32)
    tokens[:, 0] = model.config.bos_token_id
    report["check_eager"] = check_against_eager(model, tokens[:2], device)
    report["check_cpu_kernel"] = check_against_cpu_kernel(model, tokens[:1], device)
    save(report, out)
    print(json.dumps({k: report[k] for k in ("check_eager", "check_cpu_kernel")}, indent=1))
    report["timing"] = timings(model, tokens, args.batch_size, args.repeats, device, args.block)
    save(report, out)
    t = report["timing"]
    print(
        f"{report['device']}: forward {t['forward_s']:.2f} s, capture {t['capture_s']:.2f} s, "
        f"ratio {t['ratio']:.2f}, {t['rows']:,} rows, {t['rows_per_s']:,.0f} rows/s, "
        f"peaks {t['peak_gpu_bytes']}",
        flush=True,
    )
    only = metrics_only(model, tokens, args.batch_size, args.repeats, device, args.block)
    only["ratio"] = only["queued_copies_median_s"] / t["forward_s"]
    report["timing_nothing_written"] = only
    save(report, out)
    print(
        f"capture with nothing written: {only['queued_copies_median_s']:.2f} s "
        f"(each layer's copies waited for: {only['copies_waited_per_layer_median_s']:.2f} s; "
        f"one query block: {only['queued_copies_one_query_block_median_s']:.2f} s)",
        flush=True,
    )
    import parquet_write  # beside this script

    cores = len(os.sched_getaffinity(0))
    threads = sorted({1, 2, 4, 8, cores} & set(range(1, cores + 1)))
    report["host_cores"] = cores
    report["host_parquet_encoding"] = parquet_write.measure(repeats=2, threads=threads)
    save(report, out)
    print(json.dumps(report["host_parquet_encoding"], indent=1), flush=True)
    profile_batch(model, tokens, args.batch_size, device, args.block, out / "gpu_profile.txt")
    print(f"profile of one captured batch: {out / 'gpu_profile.txt'}")


if __name__ == "__main__":
    main()
