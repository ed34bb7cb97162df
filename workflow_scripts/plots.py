"""Snakemake adapter: every figure of the report, from the analysis tables."""

import html
import json
from pathlib import Path

import pandas as pd

from spectra_attn import plots
from spectra_attn.io import atomic_path

HEATMAPS = {
    "entropy_mean": "Mean attention entropy (nats)",
    "max_attn_mean": "Mean max attention",
    "k_eff_mean": "Mean k_eff (keys)",
    "query_norm_mean": "Mean query norm",
    "sink_share": "Attention on position 0 (sink share)",
}


def stem(path: str) -> str:
    return str(Path(path).with_suffix(""))


def main(snakemake) -> None:
    out = snakemake.output
    sweep = pd.concat([pd.read_parquet(p) for p in snakemake.input.sweeps], ignore_index=True)
    gain = pd.read_csv(snakemake.input.gain)
    verdict = json.loads(Path(snakemake.input.verdict).read_text())
    summary = pd.read_parquet(snakemake.input.head_summary)
    atlas = pd.read_csv(snakemake.input.atlas)
    highlight = [
        (int(layer), int(head), role)
        for layer, head, role in sweep[["layer", "head", "role"]].drop_duplicates().to_numpy()
    ]
    plots.plot_intervention_panels(sweep, stem(out.panels))
    plots.plot_downstream(sweep, stem(out.downstream))
    plots.plot_gain_comparison(gain, stem(out.comparison), verdict=verdict)
    plots.plot_heatmap(
        atlas,
        "gain_max_attn",
        stem(out.atlas),
        "Gain atlas: d max_attn / d ln s",
        highlight=highlight,
    )
    plots.plot_heatmap(
        summary,
        "spearman_qn_entropy",
        stem(out.correlation),
        "Phase-0 correlation: Spearman ρ(query_norm, entropy)",
        center=0.0,
        vmin=-1.0,
        vmax=1.0,
        highlight=highlight,
    )
    Path(out.heatmaps).mkdir(parents=True, exist_ok=True)
    for value, title in HEATMAPS.items():
        plots.plot_heatmap(
            summary, value, str(Path(out.heatmaps) / value), title, highlight=highlight
        )
    plots.plot_position_profiles(pd.read_parquet(snakemake.input.positions), stem(out.positions))
    Path(out.gain_fits).mkdir(parents=True, exist_ok=True)
    for layer, head in sweep[["layer", "head"]].drop_duplicates().to_numpy():
        plots.plot_gain_fit(
            sweep,
            gain,
            int(layer),
            int(head),
            str(Path(out.gain_fits) / f"gain_fit_L{layer}_H{head}"),
        )
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in verdict.items()
    )
    with atomic_path(out.verdict) as tmp:
        tmp.write_text(
            f"<html><body><h2>{html.escape(verdict['verdict'])}</h2>"
            f"<table>{rows}</table></body></html>\n"
        )


if __name__ == "__main__":
    from spectra_attn.workflow import setup_logging

    setup_logging(snakemake.log[0])  # noqa: F821 — injected by Snakemake
    main(snakemake)  # noqa: F821
