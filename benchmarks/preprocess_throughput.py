"""Preprocessing throughput (tokens/s) against the tokenizer's own batch encoding of the same text.

    .venv/bin/python benchmarks/preprocess_throughput.py [--source DIR] [--split train]
        [--tokenizer DIR] [--repeats 3] [--threads 2]

The pipeline run (``spectra_attn.data.shards.preprocess``) reads and decompresses the raw files,
parses JSON, filters by source, tokenizes, chunks and writes validated shards. The baselines only
encode the kept documents' texts, already in memory, in batches of the same size:
  * ``hf_call``: ``tokenizer(texts, add_special_tokens=False)`` (the transformers API);
  * ``backend``: ``tokenizer.backend_tokenizer.encode_batch(texts)`` (the Rust tokenizer alone).
Runs alternate (baseline, pipeline, baseline, ...) and the median of each is reported, so the
ratio compares measurements taken under the same machine load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

INCLUDE = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaWikipedia", "RedPajamaStackExchange"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="resources/demo/slimpajama")
    parser.add_argument("--split", default="train")
    parser.add_argument("--tokenizer", default="resources/demo/model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    from transformers import AutoTokenizer

    from spectra_attn.data.corpus import find_split_files, iter_documents
    from spectra_attn.data.shards import preprocess

    files = find_split_files(args.source, args.split)
    texts = [d.text for d in iter_documents(files) if d.source in INCLUDE]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]

    def hf_call() -> int:
        return sum(
            len(ids)
            for batch in batches
            for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]
        )

    backend = tokenizer.backend_tokenizer

    def backend_encode() -> int:
        return sum(
            len(e.ids)
            for batch in batches
            for e in backend.encode_batch(batch, add_special_tokens=False)
        )

    timings: dict[str, list[float]] = {"hf_call": [], "backend": [], "pipeline": []}
    tokens = {"hf_call": hf_call(), "backend": backend_encode()}  # warm-up, and the token count
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, function in (("hf_call", hf_call), ("backend", backend_encode)):
                start = time.perf_counter()
                function()
                timings[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            manifest = preprocess(
                args.source,
                args.split,
                args.tokenizer,
                Path(tmp) / "shards",
                Path(tmp) / "manifest.json",
                include_sources=INCLUDE,
                context_length=512,
                sequences_per_shard=3000,
                max_sequences=10**9,
                batch_size=args.batch_size,
            )
            timings["pipeline"].append(time.perf_counter() - start)
    tokens["pipeline"] = sum(manifest["tokens_used_per_source"].values())
    assert tokens["pipeline"] == tokens["hf_call"], "pipeline and baseline encoded different text"

    print(f"documents: {len(texts)}, text tokens: {tokens['pipeline']}, threads: {args.threads}")
    rates = {}
    for name, values in timings.items():
        rates[name] = tokens[name] / statistics.median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:>9}: {rates[name] / 1e6:6.3f} M tokens/s  (runs: {runs} s)")
    print(f"ratio pipeline / hf_call: {rates['pipeline'] / rates['hf_call']:.2f}")
    print(f"ratio pipeline / backend: {rates['pipeline'] / rates['backend']:.2f}")


if __name__ == "__main__":
    main()
