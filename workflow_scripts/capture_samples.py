"""Snakemake adapter: the samples table (sample_id → shard file and row) of the capture."""

from spectra_attn.data.samples import sample_table
from spectra_attn.io import write_parquet


def main(snakemake) -> None:
    table = sample_table(snakemake.input.manifest, snakemake.params.n_samples)
    write_parquet(table, snakemake.output.samples)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
