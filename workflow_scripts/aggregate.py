"""Snakemake adapter: merge the partial aggregates into the DuckDB database (the reduce step)."""

import logging

from spectra_attn import provenance
from spectra_attn.analysis.aggregate import reduce_aggregates


def main(snakemake) -> None:
    output = snakemake.output
    # The capture's provenance: what the database's numbers were made from (nothing if the
    # parts disagree; `spectra provenance` then says which differ).
    record = provenance.common([provenance.read(p) for p in snakemake.input.parts])
    if record is None:
        logging.getLogger("spectra_attn.provenance").warning(
            "the capture parts carry no common provenance; the database gets none"
        )
    reduce_aggregates(
        list(snakemake.input.partials),
        list(snakemake.input.parts),
        output.database,
        {
            "head_summary.parquet": output.head_summary,
            "head_summary.csv": output.head_summary_csv,
            "position_profile.parquet": output.position_profile,
            "position_profile.csv": output.position_profile_csv,
        },
        context_length=snakemake.params.context_length,
        bins=snakemake.params.bins,
        threads=snakemake.threads,  # Spearman's sort; the exports do not depend on it
        provenance=record,
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
