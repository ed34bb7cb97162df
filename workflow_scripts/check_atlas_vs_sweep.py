"""Snakemake adapter: the atlas's per-sample means equal the hook-based sweeps' (a gate)."""

import json
import logging

import pandas as pd

from spectra_attn.analysis.gain import compare_with_sweep
from spectra_attn.gates import require
from spectra_attn.io import write_json


def main(snakemake) -> None:
    sweep = pd.concat([pd.read_parquet(p) for p in snakemake.input.sweeps], ignore_index=True)
    report = compare_with_sweep(list(snakemake.input.atlas), sweep, snakemake.params.tolerance)
    logging.getLogger("spectra_attn.analysis.gain").info(
        "report:\n%s", json.dumps(report, indent=2)
    )
    require(report)
    write_json(snakemake.output.report, report)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
