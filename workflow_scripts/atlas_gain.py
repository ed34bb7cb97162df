"""Snakemake adapter: the OLS gain of every head from the atlas parts."""

from spectra_attn.atlas import atlas_gains
from spectra_attn.io import atomic_path


def main(snakemake) -> None:
    gains = atlas_gains(list(snakemake.input.parts))
    with atomic_path(snakemake.output.gains) as tmp:
        gains.to_csv(tmp, index=False)


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
