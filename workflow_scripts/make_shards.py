"""Snakemake adapter: raw SlimPajama documents → validated 512-token shards and their manifest."""

import os

from spectra_attn.data.shards import preprocess


def main(snakemake) -> None:
    # The Rust tokenizer sizes its thread pool from this; respect the rule's threads.
    os.environ.setdefault("RAYON_NUM_THREADS", str(snakemake.threads))
    data = snakemake.params.data
    preprocess(
        snakemake.params.source,
        snakemake.params.split,
        snakemake.params.tokenizer_path,
        snakemake.output.shards,
        snakemake.output.manifest,
        include_sources=data["include_sources"],
        context_length=data["context_length"],
        sequences_per_shard=data["sequences_per_shard"],
        max_sequences=data["max_sequences"],
        prepend_bos=data["prepend_bos"],
        batch_size=snakemake.resources.tokenize_batch_size,
        on_bad_record=data["on_bad_record"],
        min_sequences=snakemake.resources.required_sequences,
        max_bad_record_fraction=data["max_bad_record_fraction"],
        revision=snakemake.params.tokenizer["revision"],
        trust_remote_code=snakemake.params.tokenizer["trust_remote_code"],
        config_used={
            "data": data,
            "tokenizer": snakemake.params.tokenizer["name_or_path"],
            "tokenizer_path": snakemake.params.tokenizer_path,
        },
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
