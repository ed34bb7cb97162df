"""Snakemake adapter: the capture parts as one CSV in the original project's format, for old
scripts."""

from spectra_attn.analysis.capture_csv import export_original_csv


def main(snakemake) -> None:
    export_original_csv(snakemake.input.parts, snakemake.output.csv)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
