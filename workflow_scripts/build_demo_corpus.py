"""Snakemake adapter: the offline demo corpus (SlimPajama-627B layout, standard-library text)."""

from spectra_attn.demo.corpus import write_demo_corpus


def main(snakemake) -> None:
    write_demo_corpus(snakemake.output.corpus_dir, seed=snakemake.params.seed)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
