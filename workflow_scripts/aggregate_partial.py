"""Snakemake adapter: the mergeable aggregates of one capture part (the map step)."""

from spectra_attn.analysis.aggregate import partial_aggregate


def main(snakemake) -> None:
    partial_aggregate(
        snakemake.input.part,
        snakemake.output.partial,
        context_length=snakemake.params.context_length,
        bins=snakemake.params.bins,
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
