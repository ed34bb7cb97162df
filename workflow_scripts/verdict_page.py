"""Snakemake adapter: the verdict page (HTML with the figures inline, and the same as Markdown)."""

import json
from pathlib import Path

import pandas as pd

from spectra_attn.analysis import verdict as page
from spectra_attn.io import atomic_path


def main(snakemake) -> None:
    inputs, params = snakemake.input, snakemake.params
    checks = [json.loads(Path(p).read_text()) for p in [*inputs.checks, inputs.atlas_check]]
    selection = [json.loads(Path(p).read_text())["heads"] for p in inputs.selection]
    verdict = json.loads(Path(inputs.verdict).read_text())
    content = page.build(
        verdict,
        settings=page.Settings(**params.settings),
        gains=pd.read_csv(inputs.gains),
        trends=pd.concat([pd.read_csv(p) for p in inputs.trends], ignore_index=True),
        checks=checks,
        sweep=pd.concat([pd.read_parquet(p) for p in inputs.sweeps], ignore_index=True),
        atlas=pd.read_csv(inputs.atlas),
        selection=selection[0] if selection else None,
        correlations=pd.read_parquet(inputs.head_summary),
        figures={name: inputs[name] for name in page.KEY_FIGURES},
        provenance=verdict.get("provenance"),
    )
    with atomic_path(snakemake.output.html) as tmp:
        tmp.write_text(page.to_html(content), encoding="utf-8")
    with atomic_path(snakemake.output.markdown) as tmp:
        tmp.write_text(page.to_markdown(content), encoding="utf-8")


if __name__ == "__main__":
    from spectra_attn.run.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
