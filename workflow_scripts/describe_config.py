"""Snakemake adapter: the run's configuration, explained and in full, for the report."""

from spectra_attn.config import write_description


def main(snakemake) -> None:
    write_description(snakemake.params.config, snakemake.output.text)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
