"""Snakemake adapter: target and control heads from the capture's query_norm–entropy correlation."""

import logging

from spectra_attn.analysis.selection import head_correlations, select_heads
from spectra_attn.io import write_csv, write_json


def main(snakemake) -> None:
    correlations = head_correlations(list(snakemake.input.parts))
    heads = select_heads(correlations)
    for head in heads:
        logging.getLogger("spectra_attn.analysis.selection").info("selected %s", head)
    write_csv(correlations, snakemake.output.correlations)
    write_json(snakemake.output.heads, {"heads": heads})


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
