"""Snakemake adapter: OLS gains of the intervened heads, the bootstrap ratio and the verdict."""

import logging

import pandas as pd

from spectra_attn import provenance
from spectra_attn.analysis.gain import head_gains, verdict
from spectra_attn.io import write_csv, write_json


def main(snakemake) -> None:
    sweep = pd.concat([pd.read_parquet(p) for p in snakemake.input.sweeps], ignore_index=True)
    trends = pd.concat([pd.read_csv(p) for p in snakemake.input.trends], ignore_index=True)
    gains = head_gains(sweep)
    result = verdict(
        sweep,
        trends,
        gains,
        n_boot=snakemake.params.bootstrap_samples,
        seed=snakemake.params.seed,
        atlas=pd.read_csv(snakemake.input.atlas),
    )
    # The sweeps' provenance (None if they disagree or carry none: the verdict page says so).
    result["provenance"] = provenance.common([provenance.read(p) for p in snakemake.input.sweeps])
    logging.getLogger("spectra_attn.analysis.gain").info("verdict: %s", result)
    write_csv(gains, snakemake.output.summary)
    write_json(snakemake.output.verdict, result)


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
