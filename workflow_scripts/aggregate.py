"""Snakemake adapter: merge the partial aggregates into the DuckDB database (the reduce step)."""

from pathlib import Path

from spectra_attn.aggregate import reduce_aggregates


def main(snakemake) -> None:
    reduce_aggregates(
        list(snakemake.input.partials),
        list(snakemake.input.parts),
        snakemake.output.database,
        Path(snakemake.output.head_summary).parent,
        context_length=snakemake.params.context_length,
        bins=snakemake.params.bins,
    )


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
