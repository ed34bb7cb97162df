"""Snakemake adapter: every figure of the report, from the analysis tables."""

import json
from pathlib import Path

import pandas as pd

from spectra_attn.analysis.plots import report_figures


def main(snakemake) -> None:
    inputs = snakemake.input
    report_figures(
        sweep=pd.concat([pd.read_parquet(p) for p in inputs.sweeps], ignore_index=True),
        gain=pd.read_csv(inputs.gain),
        verdict=json.loads(Path(inputs.verdict).read_text()),
        summary=pd.read_parquet(inputs.head_summary),
        atlas=pd.read_csv(inputs.atlas),
        positions=pd.read_parquet(inputs.positions),
        out=dict(snakemake.output.items()),
    )


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
