"""Several models side by side (``models:``): one table and three figures from each run's own
outputs, nothing recomputed from the captures.

Per model (one row of ``comparison.csv`` and of the ``models`` table of ``comparison.duckdb``):
its verdict and target/control gain ratio with the bootstrap 95% CI (``gain/verdict.json``), the
target's and control's layer and head, the target's depth and its percentile among all heads of
its gain atlas (``atlas/atlas_gain.csv``), and the distribution of the per-head Spearman
ρ(query_norm, entropy) (``aggregate/head_summary.parquet``).

Depth: models of different sizes share one axis, depth = layer / (n_layers − 1), so that every
model's first layer is at 0 and its last at 1 (a one-layer model's only layer is at 0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Columns of the comparison table, in order.
COLUMNS = (
    "run_name",
    "model",
    "n_layers",
    "n_heads",
    "verdict",
    "failure_criterion_met",
    "gain_ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "target_layer",
    "target_head",
    "target_depth",
    "control_layer",
    "control_head",
    "target_gain_max_attn",
    "target_percentile",
    "heads_in_atlas",
    "target_spearman_rho",
    "spearman_rho_median",
    "spearman_rho_q25",
    "spearman_rho_q75",
    "spearman_rho_mean_abs",
    "spearman_rho_max_abs",
)


@dataclass(frozen=True)
class RunOutputs:
    """Where one run's outputs are (results/<run_name>/...)."""

    run_name: str
    model: str
    verdict: str | Path  # gain/verdict.json
    atlas: str | Path  # atlas/atlas_gain.csv
    head_summary: str | Path  # aggregate/head_summary.parquet


def depth(layer: Any, n_layers: int) -> Any:
    """layer / (n_layers − 1): the first layer at 0, the last at 1 (0 for a one-layer model)."""
    return np.asarray(layer, dtype=np.float64) / max(n_layers - 1, 1)


def percentile(values: Sequence[float], value: float) -> float:
    """Share of ``values`` (in %) at most ``value``: the atlas' ``percentile_max_attn``."""
    values = np.asarray(values, dtype=np.float64)
    return float((values <= value).mean() * 100)


def model_row(
    run_name: str,
    model: str,
    verdict: Mapping[str, Any],
    atlas: pd.DataFrame,
    correlations: pd.DataFrame,
) -> dict[str, Any]:
    """One row of the comparison: ``verdict`` (verdict.json), ``atlas`` (atlas_gain.csv: layer,
    head, gain_max_attn), ``correlations`` (head_summary: layer, head, spearman_qn_entropy)."""
    n_layers = int(atlas["layer"].max()) + 1
    n_heads = int(atlas["head"].max()) + 1
    if len(atlas) != n_layers * n_heads:
        raise ValueError(
            f"{run_name}: the atlas has {len(atlas)} heads, not {n_layers} layers × {n_heads}"
        )
    target, control = verdict["target"], verdict["control"]
    by_head = atlas.set_index(["layer", "head"])
    target_gain = float(by_head.loc[(target["layer"], target["head"]), "gain_max_attn"])
    rho = correlations.set_index(["layer", "head"])["spearman_qn_entropy"]
    defined = rho.dropna()
    return {
        "run_name": run_name,
        "model": model,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "verdict": verdict["verdict"],
        "failure_criterion_met": bool(verdict["failure_criterion_met"]),
        "gain_ratio": float(verdict["gain_ratio"]),
        "ratio_ci_low": float(verdict["ratio_ci_low"]),
        "ratio_ci_high": float(verdict["ratio_ci_high"]),
        "target_layer": int(target["layer"]),
        "target_head": int(target["head"]),
        "target_depth": float(depth(target["layer"], n_layers)),
        "control_layer": int(control["layer"]),
        "control_head": int(control["head"]),
        "target_gain_max_attn": target_gain,
        "target_percentile": percentile(atlas["gain_max_attn"], target_gain),
        "heads_in_atlas": len(atlas),
        "target_spearman_rho": float(rho.loc[(target["layer"], target["head"])]),
        "spearman_rho_median": float(defined.median()),
        "spearman_rho_q25": float(defined.quantile(0.25)),
        "spearman_rho_q75": float(defined.quantile(0.75)),
        "spearman_rho_mean_abs": float(defined.abs().mean()),
        "spearman_rho_max_abs": float(defined.abs().max()),
    }


def read_run(outputs: RunOutputs) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """(its comparison row, its atlas with depth, its per-head correlations) of one run."""
    import json

    verdict = json.loads(Path(outputs.verdict).read_text())
    atlas = pd.read_csv(outputs.atlas)
    correlations = pd.read_parquet(
        outputs.head_summary, columns=["layer", "head", "spearman_qn_entropy"]
    )
    row = model_row(outputs.run_name, outputs.model, verdict, atlas, correlations)
    target = (row["target_layer"], row["target_head"])
    heads = atlas[["layer", "head", "gain_max_attn", "percentile_max_attn"]].assign(
        run_name=outputs.run_name,
        depth=lambda f: depth(f["layer"], row["n_layers"]),
        target=lambda f: [(la, h) == target for la, h in zip(f["layer"], f["head"], strict=True)],
    )
    rho = correlations.assign(
        run_name=outputs.run_name,
        depth=lambda f: depth(f["layer"], row["n_layers"]),
        target=lambda f: [(la, h) == target for la, h in zip(f["layer"], f["head"], strict=True)],
    )
    return row, heads, rho


def compare(runs: Sequence[RunOutputs]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(the comparison table, every model's atlas, every model's per-head correlations)."""
    rows, atlases, correlations = zip(*(read_run(run) for run in runs), strict=True)
    table = pd.DataFrame(list(rows), columns=list(COLUMNS))
    order = ["run_name", "layer", "head"]
    atlas = pd.concat(atlases, ignore_index=True)[
        [*order, "depth", "gain_max_attn", "percentile_max_attn", "target"]
    ]
    rho = pd.concat(correlations, ignore_index=True)[
        [*order, "depth", "spearman_qn_entropy", "target"]
    ]
    return table, atlas, rho


def write_tables(
    table: pd.DataFrame,
    atlas: pd.DataFrame,
    rho: pd.DataFrame,
    csv: str | Path,
    database: str | Path,
) -> None:
    """``csv``: the comparison table; ``database`` (DuckDB): tables models, atlas and
    correlations. Each written atomically."""
    import duckdb

    from spectra_attn.io import atomic_path, write_csv

    write_csv(table, csv)
    with atomic_path(database) as tmp:
        tmp.unlink(missing_ok=True)  # DuckDB creates the database file itself
        con = duckdb.connect(str(tmp))
        try:
            for name, frame in (("models", table), ("atlas", atlas), ("correlations", rho)):
                con.register("frame", frame)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
                con.unregister("frame")
        finally:
            con.close()


# -- figures ------------------------------------------------------------------------------------
def _colors(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {name: palette(index % 10) for index, name in enumerate(names)}


def plot_verdicts(table: pd.DataFrame, stem: str | Path) -> None:
    """Left: each model's gain ratio with its 95% CI and the verdict table's thresholds; right:
    the target's percentile in its model's gain atlas."""
    from spectra_attn.analysis.plots import _figure
    from spectra_attn.analysis.verdict import THRESHOLDS

    names = list(table["run_name"])
    colors = _colors(names)
    y = np.arange(len(names))
    with _figure(stem, 1, 2, figsize=(10, 1.2 + 0.6 * len(names))) as (fig, axes):
        ratio, share = axes[0]
        low = table["gain_ratio"] - table["ratio_ci_low"]
        high = table["ratio_ci_high"] - table["gain_ratio"]
        for index, name in enumerate(names):
            ratio.errorbar(
                table["gain_ratio"].iloc[index],
                y[index],
                xerr=[[low.iloc[index]], [high.iloc[index]]],
                fmt="o",
                color=colors[name],
                capsize=4,
            )
        for threshold in THRESHOLDS:
            ratio.axvline(threshold, color="0.5", linestyle=":", linewidth=1)
        ratio.axvline(1.0, color="0.3", linewidth=0.8)
        ratio.set_yticks(y, names)
        ratio.invert_yaxis()
        ratio.set_xlabel("gain ratio target / control (95% bootstrap CI)")
        ratio.set_title("Verdict: gain ratio per model")
        share.barh(y, table["target_percentile"], color=[colors[n] for n in names])
        share.set_yticks(y, names)
        share.invert_yaxis()
        share.set_xlim(0, 100)
        share.set_xlabel("target's percentile of max_attn gain in its atlas (%)")
        share.set_title("Target among all heads")


def plot_atlas_depth(atlas: pd.DataFrame, stem: str | Path) -> None:
    """Every head's max_attn gain against depth = layer / (n_layers − 1), per model, with each
    layer's mean as a line and the target as a star."""
    from spectra_attn.analysis.plots import _figure

    names = list(dict.fromkeys(atlas["run_name"]))
    colors = _colors(names)
    with _figure(stem, figsize=(8, 4.5)) as (fig, axes):
        ax = axes[0][0]
        for name in names:
            heads = atlas[atlas["run_name"] == name]
            ax.scatter(heads["depth"], heads["gain_max_attn"], s=12, alpha=0.5, color=colors[name])
            means = heads.groupby("depth")["gain_max_attn"].mean()
            ax.plot(means.index, means.to_numpy(), color=colors[name], label=name)
            target = heads[heads["target"]]
            ax.scatter(
                target["depth"],
                target["gain_max_attn"],
                marker="*",
                s=160,
                color=colors[name],
                edgecolor="black",
                zorder=3,
            )
        ax.set_xlabel("depth = layer / (layers − 1)")
        ax.set_ylabel("max_attn gain d mean(max_attn) / d ln s")
        ax.set_title("Gain atlas on a common depth axis (★ target)")
        ax.legend(title="model", fontsize="small")


def plot_correlations(rho: pd.DataFrame, stem: str | Path) -> None:
    """The per-head Spearman ρ(query_norm, entropy) of every model: a box of each model's heads,
    the heads as points, the target as a star."""
    from spectra_attn.analysis.plots import _figure

    names = list(dict.fromkeys(rho["run_name"]))
    colors = _colors(names)
    with _figure(stem, figsize=(8, 1.5 + 0.7 * len(names))) as (fig, axes):
        ax = axes[0][0]
        values = [
            rho.loc[rho["run_name"] == n, "spearman_qn_entropy"].dropna().to_numpy() for n in names
        ]
        ax.boxplot(
            values,
            positions=range(len(names)),
            orientation="horizontal",
            widths=0.5,
            showfliers=False,
        )
        jitter = np.random.default_rng(0)
        for index, name in enumerate(names):
            heads = rho[rho["run_name"] == name]
            ax.scatter(
                heads["spearman_qn_entropy"],
                index + jitter.uniform(-0.15, 0.15, len(heads)),
                s=10,
                alpha=0.6,
                color=colors[name],
            )
            target = heads[heads["target"]]
            ax.scatter(
                target["spearman_qn_entropy"],
                [index] * len(target),
                marker="*",
                s=160,
                color=colors[name],
                edgecolor="black",
                zorder=3,
            )
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.axvline(0, color="0.3", linewidth=0.8)
        ax.set_xlabel("Spearman ρ(query_norm, entropy) per head")
        ax.set_title("Query-norm / entropy correlation of every head (★ target)")


def write_comparison(runs: Sequence[RunOutputs], outputs: Mapping[str, str | Path]) -> pd.DataFrame:
    """Everything the comparison rule writes: ``outputs`` maps table, database, verdicts,
    atlas and correlations (figures: path of the PNG; the SVG beside it) to paths."""
    table, atlas, rho = compare(runs)
    write_tables(table, atlas, rho, outputs["table"], outputs["database"])
    for name, plot, frame in (
        ("verdicts", plot_verdicts, table),
        ("atlas", plot_atlas_depth, atlas),
        ("correlations", plot_correlations, rho),
    ):
        plot(frame, Path(outputs[name]).with_suffix(""))
    logger.info("compared %d models: %s", len(table), ", ".join(table["run_name"]))
    return table
