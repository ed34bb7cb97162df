"""Snakemake adapter: the run's provenance, and whether its outputs agree on it, as text."""

import logging

from spectra_attn import provenance
from spectra_attn.io import atomic_path


def main(snakemake) -> None:
    inputs = snakemake.input
    paths = [*inputs.capture, *inputs.sweeps, *inputs.tokens, inputs.database, inputs.verdict]
    consistent, text = provenance.check_records(
        {path: provenance.read(path) for path in paths}, f"run {snakemake.params.run_name}"
    )
    if not consistent:
        logging.getLogger("spectra_attn.provenance").warning("%s", text)
    with atomic_path(snakemake.output.text) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
