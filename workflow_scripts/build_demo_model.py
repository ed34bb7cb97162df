"""Snakemake adapter: the demo tokenizer and small Llama, trained on the demo corpus's train."""

import os

from spectra_attn.demo.model import build_demo_model


def main(snakemake) -> None:
    # The Rust tokenizer sizes its thread pool from this; respect the rule's threads.
    os.environ.setdefault("RAYON_NUM_THREADS", str(snakemake.threads))
    build_demo_model(
        snakemake.input.corpus_dir,
        snakemake.output.model_dir,
        demo=snakemake.params.demo,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
