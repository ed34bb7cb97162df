"""Snakemake adapter: the samples table (sample_id → shard file and row) of the capture."""

from spectra_attn.io import write_parquet
from spectra_attn.samples import sample_table


def main(snakemake) -> None:
    table = sample_table(snakemake.input.manifest, snakemake.params.n_samples)
    write_parquet(table, snakemake.output.samples)


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
