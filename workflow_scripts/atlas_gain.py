"""Snakemake adapter: the OLS gain of every head from the atlas parts."""

from spectra_attn.analysis.gain import atlas_gains
from spectra_attn.io import write_csv


def main(snakemake) -> None:
    write_csv(atlas_gains(list(snakemake.input.parts)), snakemake.output.gains)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
