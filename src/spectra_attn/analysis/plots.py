"""Figures of the capture and the query-scaling intervention (seaborn / matplotlib, Agg backend).

Every ``plot_*`` function takes pandas DataFrames and an output path *stem* (no extension) and
writes ``<stem>.png`` (150 dpi) and ``<stem>.svg``, each atomically (a temporary file beside it,
then one rename). The output is deterministic: the same input gives the same bytes (a fixed SVG
hash salt, no date or software stamps, a fixed font, no random resampling — confidence bands are
the normal approximation mean ± 1.96·SEM over samples, not bootstrapped).

Input tables (see each function):

* ``sweep``: one row per (layer, head, role, scale, sample_id) with per-sample means of
  ``query_norm``, ``entropy``, ``max_attn``, ``k_eff`` and the sample's ``loss`` and ``kl``.
* ``gain``: OLS fits ``y = intercept + slope·ln(scale)`` per (layer, head, role, metric) with
  ``slope``, ``stderr``, ``intercept``, ``r2``, ``ci_low``, ``ci_high``, ``n_points``.
* per-(layer, head) tables for heatmaps (head summary, atlas), and ``positions`` (per-position
  means per layer and head).

Colours: target heads are red, control heads blue, any other role takes the next colour of a
fixed list; several heads of one role differ by line style and marker.
"""

from __future__ import annotations

import logging
import math
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import ListedColormap, Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from spectra_attn.columns import GAIN_METRICS  # noqa: E402
from spectra_attn.io import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)

DPI = 150
SVG_HASHSALT = "spectra"
Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal

ROLE_COLORS = {"target": "tab:red", "control": "tab:blue"}
OTHER_COLORS = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")
ROLE_ORDER = {"target": 0, "control": 1}

INTERVENTION_METRICS = ("entropy", "max_attn", "k_eff")
DOWNSTREAM_METRICS = ("loss", "kl")
POSITION_METRICS = ("entropy", "max_attn", "k_eff", "sink_attn")

METRIC_TITLES = {
    "query_norm": "Query norm",
    "entropy": "Attention entropy",
    "max_attn": "Max attention weight",
    "k_eff": "Effective keys k_eff",
    "sink_attn": "Attention on the first token (sink)",
    "loss": "Next-token loss",
    "loss_change": "Change of next-token loss from s = 1",
    "kl": "KL(baseline ‖ intervened)",
}
METRIC_LABELS = {
    "query_norm": "query norm ‖q‖ (model units)",
    "entropy": "attention entropy (nats)",
    "max_attn": "max attention weight (probability)",
    "k_eff": "k_eff (keys holding the mass threshold)",
    "sink_attn": "attention on position 0 (probability)",
    "loss": "next-token loss (nats / token)",
    "loss_change": "loss(s) − loss(1) (nats / token)",
    "kl": "KL(baseline ‖ intervened) (nats / token)",
}
GAIN_LABELS = {
    "max_attn": "d max_attn / d ln s (probability)",
    "entropy": "d entropy / d ln s (nats)",
    "k_eff": "d k_eff / d ln s (keys)",
}
VALUE_LABELS = {
    "rows": "rows (tokens)",
    "pearson_qn_entropy": "Pearson r(query norm, entropy)",
    "spearman_qn_entropy": "Spearman ρ(query norm, entropy)",
    "sink_share": "sink share (fraction)",
    "gain_max_attn": "max_attn gain: d max_attn / d ln s (probability)",
    "gain_entropy": "entropy gain: d entropy / d ln s (nats)",
    "gain_k_eff": "k_eff gain: d k_eff / d ln s (keys)",
    "percentile_max_attn": "percentile of the max_attn gain (%)",
}
STAT_WORDS = {"_mean": "mean", "_std": "std of", "_q50": "median"}

# Heatmaps annotate each cell with its value up to this many cells.
ANNOTATE_MAX_CELLS = 160
# Position profiles get a legend up to this many layers, a colour bar beyond.
LEGEND_MAX_LAYERS = 12


def _rc() -> dict[str, Any]:
    """Style for every figure, applied in an ``rc_context`` so the caller's rcParams stay as
    they were. The font is pinned to matplotlib's bundled DejaVu Sans so that the output does
    not depend on which system fonts happen to be installed."""
    rc: dict[str, Any] = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.85))
    rc.update(
        {
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans"],
            "svg.hashsalt": SVG_HASHSALT,
            "svg.fonttype": "path",
            "savefig.dpi": DPI,
            "figure.dpi": 100,
            "axes.titleweight": "bold",
        }
    )
    return rc


def output_paths(stem: str | Path) -> tuple[Path, Path]:
    """``(<stem>.png, <stem>.svg)``; the suffix is appended, so a dotted stem keeps its dots."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")


def clipped_texts(fig: plt.Figure, slack: float = 1.0) -> list[str]:
    """The visible, non-empty texts of ``fig`` (titles, labels, tick labels, legends,
    annotations) that reach past the figure's edges by more than ``slack`` pixels once drawn:
    what the saved image would cut off."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # An axis keeps tick objects beyond its view limits, visible but never drawn: skip them.
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            eps = 1e-9 * max(high - low, 1e-300)
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - eps <= tick.get_loc() <= high + eps:
                    undrawn.update((id(tick.label1), id(tick.label2)))
    edges = fig.bbox
    clipped = []
    for text in fig.findobj(Text):
        if id(text) in undrawn or not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if (
            box.x0 < edges.x0 - slack
            or box.y0 < edges.y0 - slack
            or box.x1 > edges.x1 + slack
            or box.y1 > edges.y1 + slack
        ):
            clipped.append(text.get_text())
    return clipped


def save_figure(fig: plt.Figure, stem: str | Path) -> tuple[Path, Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg``, each atomically and deterministically
    (with a warning in the log for any text that the figure's edges cut off)."""
    png, svg = output_paths(stem)
    if clipped := clipped_texts(fig):
        logger.warning("%s: text cut off at the figure's edge: %s", Path(stem).name, clipped)
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT}):
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
        with atomic_path(svg) as tmp:
            fig.savefig(tmp, format="svg", metadata={"Date": None})
    return png, svg


@contextmanager
def _figure(stem: str | Path, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Iterator[Any]:
    """A styled figure with an array of axes; saved to ``stem`` if the body succeeds, closed
    either way."""
    with matplotlib.rc_context(_rc()):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained", **kwargs)
        try:
            yield fig, axes
            save_figure(fig, stem)
        finally:
            plt.close(fig)


# --------------------------------------------------------------------------------------------
# helpers


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing} (has {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"{name} is empty")


def head_label(layer: int, head: int, role: str | None = None) -> str:
    label = f"L{int(layer)} H{int(head)}"
    return f"{label} ({role})" if role else label


@dataclass(frozen=True)
class HeadStyle:
    layer: int
    head: int
    role: str
    color: str
    linestyle: str
    marker: str

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head, self.role)

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        mask = (
            (frame["layer"] == self.layer)
            & (frame["head"] == self.head)
            & (frame["role"].astype(str) == self.role)
        )
        return frame[mask]


def _role_key(role: str) -> tuple[int, str]:
    return ROLE_ORDER.get(role, len(ROLE_ORDER)), role


def head_styles(frame: pd.DataFrame) -> list[HeadStyle]:
    """One style per distinct (layer, head, role) of ``frame``: targets first, then controls, then
    other roles; colour by role, line style and marker by the head's rank within its role."""
    keys = {
        (int(layer), int(head), str(role))
        for layer, head, role in frame[["layer", "head", "role"]].itertuples(index=False)
    }
    ordered = sorted(keys, key=lambda k: (_role_key(k[2]), k[0], k[1]))
    other_roles = sorted({k[2] for k in keys if k[2] not in ROLE_COLORS})
    styles, rank = [], {}
    for layer, head, role in ordered:
        i = rank.get(role, 0)
        rank[role] = i + 1
        color = ROLE_COLORS.get(role) or OTHER_COLORS[other_roles.index(role) % len(OTHER_COLORS)]
        styles.append(
            HeadStyle(
                layer, head, role, color, LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
            )
        )
    return styles


def role_color(role: str, frame_roles: Sequence[str] = ()) -> str:
    if role in ROLE_COLORS:
        return ROLE_COLORS[role]
    others = sorted({r for r in frame_roles if r not in ROLE_COLORS} | {role})
    return OTHER_COLORS[others.index(role) % len(OTHER_COLORS)]


def mean_ci_by_scale(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per scale (sorted): mean of ``value`` over samples (NaN ignored), the sample count ``n``,
    and the 95% band ``low``/``high`` = mean ∓ 1.96·SEM (zero width when n < 2)."""
    grouped = frame.dropna(subset=[value]).groupby("scale", sort=True)[value]
    stats = grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    sem = (stats["std"] / np.sqrt(stats["n"])).where(stats["n"] > 1, 0.0)
    stats["low"] = stats["mean"] - Z95 * sem
    stats["high"] = stats["mean"] + Z95 * sem
    return stats[["mean", "n", "low", "high"]]


def _safe_log(values: np.ndarray) -> np.ndarray:
    """ln for a secondary axis transform, which also gets called with 0 and negative limits."""
    return np.log(np.clip(values, np.finfo(np.float64).tiny, None))


def _format_scale(scale: float) -> str:
    return f"{float(scale):g}"


def _log_scale_axis(ax: plt.Axes, scales: Sequence[float]) -> None:
    """Log x axis with exactly the swept scales as ticks, and a dotted line at s = 1."""
    scales = sorted(float(s) for s in scales)
    ax.set_xscale("log")
    ax.set_xticks(scales, labels=[_format_scale(s) for s in scales])
    ax.xaxis.set_minor_locator(NullLocator())
    if scales[0] <= 1.0 <= scales[-1]:
        ax.axvline(1.0, color="0.4", linestyle=":", linewidth=1, zorder=0)
    ax.set_xlabel("query scale s (log axis)")


def _sample_count_text(sweep: pd.DataFrame) -> str:
    counts = sweep.groupby(["layer", "head", "role", "scale"])["sample_id"].nunique()
    low, high = int(counts.min()), int(counts.max())
    return f"{low} samples" if low == high else f"{low}–{high} samples"


def _check_scales(sweep: pd.DataFrame) -> list[float]:
    scales = sorted(float(s) for s in sweep["scale"].unique())
    if scales[0] <= 0 or not all(math.isfinite(s) for s in scales):
        raise ValueError(f"scales must be positive and finite for a log axis, got {scales}")
    return scales


def _scale_panels(sweep: pd.DataFrame, metrics: Sequence[str], stem: str | Path, title: str):
    _require(sweep, ["layer", "head", "role", "scale", "sample_id", *metrics], "sweep")
    scales = _check_scales(sweep)
    styles = head_styles(sweep)
    with _figure(stem, 1, len(metrics), figsize=(4.4 * len(metrics) + 0.4, 4.4)) as (fig, axes):
        for ax, metric in zip(axes[0], metrics, strict=True):
            for style in styles:
                stats = mean_ci_by_scale(style.select(sweep), metric)
                x = stats.index.to_numpy(np.float64)
                ax.fill_between(
                    x, stats["low"], stats["high"], color=style.color, alpha=0.18, linewidth=0
                )
                ax.plot(
                    x,
                    stats["mean"],
                    color=style.color,
                    linestyle=style.linestyle,
                    marker=style.marker,
                    markersize=4,
                    linewidth=1.8,
                    label=style.label,
                )
            _log_scale_axis(ax, scales)
            ax.set_title(METRIC_TITLES.get(metric, metric))
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        handles = [
            Line2D(
                [],
                [],
                color=s.color,
                linestyle=s.linestyle,
                marker=s.marker,
                markersize=4,
                linewidth=1.8,
            )
            for s in styles
        ]
        labels = [s.label for s in styles]
        handles.append(Patch(color="0.5", alpha=0.3, linewidth=0))
        labels.append("95% CI of the mean over samples")
        fig.legend(
            handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False
        )
        fig.suptitle(f"{title} (mean ± 95% CI over {_sample_count_text(sweep)})")


# --------------------------------------------------------------------------------------------
# figures


def plot_intervention_panels(sweep: pd.DataFrame, stem: str | Path) -> None:
    """Entropy, max_attn and k_eff of the intervened heads against the query scale: one line per
    (layer, head, role), mean over samples with a 95% CI band, log x axis ticked at the scales."""
    _scale_panels(sweep, INTERVENTION_METRICS, stem, "Query scaling: attention of the scaled head")


def loss_change(sweep: pd.DataFrame) -> pd.DataFrame:
    """``sweep`` with ``loss_change``: each sample's loss minus its own loss at scale 1 for the
    same head (paired, so the spread between sequences cancels); None where a head has no
    scale 1."""
    at_one = sweep[np.isclose(sweep["scale"].astype(np.float64), 1.0)]
    keys = ["layer", "head", "role", "sample_id"]
    base = at_one[keys + ["loss"]].rename(columns={"loss": "loss_at_one"})
    joined = sweep.merge(base, on=keys, how="left")
    return joined.assign(loss_change=joined["loss"] - joined["loss_at_one"]).drop(
        columns="loss_at_one"
    )


def plot_downstream(sweep: pd.DataFrame, stem: str | Path) -> None:
    """The change of each sample's next-token loss from its loss at s = 1 (paired: the loss
    itself varies far more between sequences than with s), and KL(baseline ‖ intervened),
    against the query scale, one line per head, mean over samples with a 95% CI band. Without
    scale 1 in the sweep, the loss itself."""
    _require(sweep, ["layer", "head", "role", "scale", "sample_id", "loss"], "sweep")
    table = loss_change(sweep)
    paired = table["loss_change"].notna().all()
    metrics = ("loss_change", "kl") if paired else DOWNSTREAM_METRICS
    _scale_panels(
        table if paired else sweep, metrics, stem, "Query scaling: effect on the model output"
    )


def _gain_row(gain: pd.DataFrame, layer: int, head: int, metric: str) -> pd.Series:
    rows = gain[(gain["layer"] == layer) & (gain["head"] == head) & (gain["metric"] == metric)]
    if rows.empty:
        raise ValueError(f"no {metric} gain for {head_label(layer, head)} in the gain table")
    if len(rows) > 1:
        raise ValueError(f"{len(rows)} {metric} gain rows for {head_label(layer, head)}")
    return rows.iloc[0]


def plot_gain_fit(
    sweep: pd.DataFrame, gain: pd.DataFrame, layer: int, head: int, stem: str | Path
) -> None:
    """max_attn of one head against ln(scale): per-sample points (spread deterministically around
    their scale), per-scale means with 95% CI, and the OLS line of ``gain`` with its slope ± CI."""
    metric = "max_attn"
    _require(sweep, ["layer", "head", "role", "scale", "sample_id", metric], "sweep")
    _require(gain, ["layer", "head", "metric", "slope", "intercept", "ci_low", "ci_high"], "gain")
    layer, head = int(layer), int(head)
    data = sweep[(sweep["layer"] == layer) & (sweep["head"] == head)].dropna(subset=[metric])
    if data.empty:
        raise ValueError(f"no {metric} rows for {head_label(layer, head)} in the sweep")
    fit = _gain_row(gain, layer, head, metric)
    roles = sorted({str(r) for r in data["role"]}, key=_role_key)
    role = roles[0]
    color = role_color(role)
    scales = _check_scales(data)
    ln_scales = np.log(scales)
    spacing = float(np.diff(ln_scales).min()) if len(scales) > 1 else 1.0

    with _figure(stem, figsize=(6.6, 4.8)) as (fig, axes):
        ax = axes[0, 0]
        # per-sample points, spread evenly (by sample_id) across ±12% of the scale spacing
        xs, ys = [], []
        for scale, group in data.sort_values("sample_id").groupby("scale", sort=True):
            n = len(group)
            offsets = np.linspace(-0.12, 0.12, n) * spacing if n > 1 else np.zeros(1)
            xs.append(np.log(float(scale)) + offsets)
            ys.append(group[metric].to_numpy(np.float64))
        ax.scatter(
            np.concatenate(xs),
            np.concatenate(ys),
            s=9,
            color=color,
            alpha=0.3,
            linewidths=0,
            label="per-sample mean over tokens",
        )
        stats = mean_ci_by_scale(data, metric)
        x_mean = np.log(stats.index.to_numpy(np.float64))
        ax.errorbar(
            x_mean,
            stats["mean"],
            yerr=[stats["mean"] - stats["low"], stats["high"] - stats["mean"]],
            fmt="o",
            color="black",
            markerfacecolor=color,
            markersize=7,
            capsize=4,
            linewidth=1.2,
            zorder=3,
            label="mean over samples (95% CI)",
        )
        slope, intercept = float(fit["slope"]), float(fit["intercept"])
        ci_low, ci_high = float(fit["ci_low"]), float(fit["ci_high"])
        pad = 0.2 * spacing
        x_line = np.array([ln_scales[0] - pad, ln_scales[-1] + pad])
        fit_label = f"OLS fit: slope {slope:.3g} [95% CI {ci_low:.3g}, {ci_high:.3g}]"
        if "r2" in fit.index and pd.notna(fit["r2"]):
            fit_label += f", R² = {float(fit['r2']):.3f}"
        ax.plot(x_line, intercept + slope * x_line, color=color, linewidth=2, label=fit_label)
        ax.set_xlim(x_line[0] - 0.3 * pad, x_line[1] + 0.3 * pad)
        ax.set_xlabel("ln(query scale s)")
        ax.set_ylabel(METRIC_LABELS[metric])
        top = ax.secondary_xaxis("top", functions=(np.exp, _safe_log))
        top.set_xticks(scales, labels=[_format_scale(s) for s in scales])
        top.xaxis.set_minor_locator(NullLocator())
        top.set_xlabel("query scale s")
        ax.legend(loc="best", fontsize="small")
        ax.set_title(
            f"max_attn gain of {head_label(layer, head, '/'.join(roles))}: "
            f"{slope:.3g} [{ci_low:.3g}, {ci_high:.3g}] per unit ln s",
            fontsize="medium",
        )


def _verdict_text(verdict: dict[str, Any]) -> str:
    parts = []
    ratio = verdict.get("gain_ratio")
    if ratio is not None and pd.notna(ratio):
        text = f"gain ratio target/control = {float(ratio):.3g}"
        low, high = verdict.get("ratio_ci_low"), verdict.get("ratio_ci_high")
        if low is not None and high is not None and pd.notna(low) and pd.notna(high):
            text += f" (95% CI {float(low):.3g} – {float(high):.3g})"
        parts.append(text)
    percentile = verdict.get("target_percentile")
    if percentile is not None and pd.notna(percentile):
        parts.append(f"target at percentile {float(percentile):.1f} of all heads' max_attn gain")
    lines = ["; ".join(parts)] if parts else []
    if verdict.get("verdict"):
        lines.extend(textwrap.wrap(f"Verdict: {verdict['verdict']}", width=100))
    return "\n".join(lines)


def plot_gain_comparison(
    gain: pd.DataFrame, stem: str | Path, verdict: dict[str, Any] | None = None
) -> None:
    """Bars of the gain (OLS slope vs ln scale, 95% CI error bars) of each intervened head,
    coloured by role: a large max_attn panel, plus entropy and k_eff panels where ``gain`` has
    them. With ``verdict``, the title carries the target/control gain ratio, its CI, the target's
    percentile among all heads and the verdict text."""
    _require(gain, ["layer", "head", "role", "metric", "slope", "ci_low", "ci_high"], "gain")
    metrics = [m for m in GAIN_METRICS if (gain["metric"] == m).any()]
    if "max_attn" not in metrics:
        raise ValueError("gain has no max_attn rows")
    styles = head_styles(gain)
    n = len(styles)
    widths = [1.5 if m == "max_attn" else 1.0 for m in metrics]
    panel = 1.2 + 0.75 * n
    figsize = (max(7.0, panel * sum(widths) + 0.5), 5.0)
    with _figure(stem, 1, len(metrics), figsize=figsize, width_ratios=widths) as (fig, axes):
        x = np.arange(n)
        for ax, metric in zip(axes[0], metrics, strict=True):
            rows = gain[gain["metric"] == metric]
            heights, low_err, high_err = [], [], []
            for style in styles:
                match = style.select(rows)
                if match.empty:
                    heights.append(np.nan)
                    low_err.append(0.0)
                    high_err.append(0.0)
                    continue
                row = match.iloc[0]
                slope = float(row["slope"])
                heights.append(slope)
                low_err.append(max(slope - float(row["ci_low"]), 0.0))
                high_err.append(max(float(row["ci_high"]) - slope, 0.0))
            ax.bar(
                x,
                heights,
                width=0.65,
                color=[s.color for s in styles],
                alpha=0.85,
                edgecolor="black",
                linewidth=0.6,
                yerr=[low_err, high_err],
                capsize=5,
                error_kw={"elinewidth": 1.2, "ecolor": "black"},
            )
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks(x, labels=[f"L{s.layer} H{s.head}\n{s.role}" for s in styles])
            ax.set_xlim(-0.6, n - 0.4)
            ax.set_title(f"{metric} gain" if metric != "max_attn" else "max_attn gain (main)")
            ax.set_ylabel(GAIN_LABELS[metric])
            ax.grid(axis="x", visible=False)
        roles = sorted({s.role for s in styles}, key=_role_key)
        handles = [Patch(facecolor=role_color(r, roles), edgecolor="black") for r in roles]
        labels = list(roles)
        handles.append(Line2D([], [], color="black", marker="_", markersize=10, linewidth=1.2))
        labels.append("95% CI of the slope")
        axes[0, 0].legend(handles, labels, loc="best", fontsize="small")
        title = "Gain of the intervened heads: OLS slope of the per-scale mean vs ln(scale)"
        if verdict:
            extra = _verdict_text(verdict)
            if extra:
                title = f"{title}\n{extra}"
        fig.suptitle(title, fontsize="medium")


def heatmap_matrix(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """Column ``value`` of a per-(layer, head) table as a matrix: layers (ascending) as the index,
    heads (ascending) as the columns, NaN where a (layer, head) is absent. Duplicated
    (layer, head) pairs are an error."""
    _require(table, ["layer", "head", value], "table")
    if table.duplicated(["layer", "head"]).any():
        raise ValueError(f"table has duplicated (layer, head) rows; cannot place {value!r}")
    frame = table[["layer", "head", value]].astype({"layer": int, "head": int})
    matrix = frame.pivot(index="layer", columns="head", values=value).sort_index()
    matrix = matrix.reindex(columns=sorted(matrix.columns)).astype(np.float64)
    matrix.index.name, matrix.columns.name = "layer", "head"
    return matrix


def _value_label(value: str) -> str:
    if value in VALUE_LABELS:
        return VALUE_LABELS[value]
    if value in METRIC_LABELS:
        return METRIC_LABELS[value]
    for suffix, word in STAT_WORDS.items():
        base = value.removesuffix(suffix)
        if base != value and base in METRIC_LABELS:
            return f"{word} {METRIC_LABELS[base]}"
    return value


def _cell_text(v: float) -> str:
    if not math.isfinite(v):
        return ""
    if abs(v) >= 1000:
        return f"{v:.0f}" if abs(v) < 1e5 else f"{v:.2g}"
    return f"{v:.2g}" if abs(v) < 0.01 and v != 0 else f"{v:.2f}" if abs(v) < 10 else f"{v:.3g}"


def _fit_colorbar_label(fig: plt.Figure, colorbar: Any, label: str) -> None:
    """Set a colour bar's label, wrapped onto as many lines as it takes to be no longer than the
    figure's height less a margin (a long label on a short heatmap ran off the figure's edges)."""
    if colorbar is None:
        return
    limit = fig.get_figheight() * fig.dpi * 0.8
    renderer = fig.canvas.get_renderer()
    for width in range(len(label), 8, -4):
        colorbar.set_label(textwrap.fill(label, width, break_long_words=False))
        if colorbar.ax.yaxis.label.get_window_extent(renderer).height <= limit:
            return


def plot_heatmap(
    table: pd.DataFrame,
    value: str,
    stem: str | Path,
    title: str,
    center: float | None = None,
    cmap: str | None = None,
    highlight: Sequence[tuple] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """Layer × head heatmap of column ``value`` of a per-(layer, head) table (layers as rows,
    heads as columns, see :func:`heatmap_matrix`). ``center`` makes the colour map diverging
    around it (default ``RdBu_r`` then, ``viridis`` otherwise). ``highlight`` lists heads to
    outline, as ``(layer, head)`` or ``(layer, head, role)``; a role gives the outline its role
    colour (target red, control blue), otherwise it is black. ``vmin``/``vmax`` pin the colour
    range (e.g. −1, 1 for a correlation). Cells are annotated with their values when the grid is
    small (at most ``ANNOTATE_MAX_CELLS`` cells)."""
    matrix = heatmap_matrix(table, value)
    n_layers, n_heads = matrix.shape
    if cmap is None:
        cmap = "RdBu_r" if center is not None else "viridis"
    annotate = matrix.size <= ANNOTATE_MAX_CELLS
    width = min(max(0.55 * n_heads + 2.8, 5.5), 18.0)
    height = min(max(0.4 * n_layers + 1.6, 3.8), 16.0)
    with _figure(stem, figsize=(width, height)) as (fig, axes):
        ax = axes[0, 0]
        values = matrix.to_numpy()
        with warnings.catch_warnings():
            # seaborn 0.13 calls Colormap.set_bad, which matplotlib ≥ 3.11 marks as deprecated
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(
                matrix,
                ax=ax,
                cmap=cmap,
                center=center,
                vmin=vmin,
                vmax=vmax,
                annot=np.vectorize(_cell_text, otypes=[str])(values) if annotate else False,
                fmt="",
                annot_kws={"fontsize": 7},
                linewidths=0.4 if matrix.size <= 1024 else 0.0,
                linecolor="white",
                # shrunk a little: a tick label at either end of a full-height bar ran off the
                # figure (constrained layout lays out the bar, not what overhangs its ends)
                cbar_kws={"label": _value_label(value), "shrink": 0.95},
                square=False,
            )
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        _fit_colorbar_label(fig, ax.collections[0].colorbar, _value_label(value))
        ax.tick_params(axis="y", labelrotation=0)
        ax.tick_params(axis="x", labelrotation=0)
        rows, cols = list(matrix.index), list(matrix.columns)
        handles, labels = [], []
        for item in highlight or ():
            layer, head = int(item[0]), int(item[1])
            role = str(item[2]) if len(item) > 2 and item[2] is not None else None
            if layer not in rows or head not in cols:
                logger.warning("highlighted %s is not in the heatmap", head_label(layer, head))
                continue
            color = role_color(role) if role else "black"
            xy = (cols.index(head), rows.index(layer))
            # a white halo under the coloured outline keeps it visible on any cell colour
            ax.add_patch(Rectangle(xy, 1, 1, fill=False, edgecolor="white", linewidth=4.0))
            ax.add_patch(Rectangle(xy, 1, 1, fill=False, edgecolor=color, linewidth=2.0))
            handles.append(Patch(facecolor="none", edgecolor=color, linewidth=2.0))
            labels.append(head_label(layer, head, role))
        if handles:
            ax.legend(
                handles,
                labels,
                loc="upper left",
                bbox_to_anchor=(0.0, -0.12 if n_layers < 8 else -0.06),
                ncol=min(len(handles), 3),
                fontsize="small",
                frameon=False,
                title="outlined heads",
                title_fontsize="small",
            )
        ax.set_title(title)


def plot_position_profiles(positions: pd.DataFrame, stem: str | Path) -> None:
    """Per-position mean of entropy, max_attn, k_eff and sink_attn (four panels), one line per
    layer (mean over the layer's heads), against the token position."""
    _require(positions, ["layer", "head", "token_pos", *POSITION_METRICS], "positions")
    profile = (
        positions.groupby(["layer", "token_pos"], sort=True)[list(POSITION_METRICS)]
        .mean()
        .reset_index()
    )
    layers = sorted(int(v) for v in profile["layer"].unique())
    # viridis without its pale yellow end, which is hard to see as a line on white
    cmap = ListedColormap(plt.get_cmap("viridis")(np.linspace(0.0, 0.85, 256)), name="layers")
    norm = Normalize(vmin=min(layers), vmax=max(layers) if len(layers) > 1 else min(layers) + 1)
    linewidth = 1.4 if profile["token_pos"].nunique() <= 128 else 0.9
    with _figure(stem, 2, 2, figsize=(11.0, 7.6), sharex=True) as (fig, axes):
        for ax, metric in zip(axes.flat, POSITION_METRICS, strict=True):
            for layer in layers:
                rows = profile[profile["layer"] == layer]
                ax.plot(
                    rows["token_pos"],
                    rows[metric],
                    color=cmap(norm(layer)),
                    linewidth=linewidth,
                    label=f"layer {layer}",
                )
            ax.set_title(METRIC_TITLES[metric])
            ax.set_ylabel(METRIC_LABELS[metric])
        for ax in axes[1]:
            ax.set_xlabel("token position (0 = first token)")
        if len(layers) <= LEGEND_MAX_LAYERS:
            handles, labels = axes[0, 0].get_legend_handles_labels()
            fig.legend(
                handles,
                labels,
                loc="outside right center",
                frameon=False,
                title="layer (mean over heads)",
                title_fontsize="small",
            )
        else:
            mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
            fig.colorbar(mappable, ax=axes, label="layer (mean over heads)")
        fig.suptitle("Attention by token position (mean over samples and heads)")


# The per-(layer, head) summary columns drawn as heatmaps, and their titles.
METRIC_HEATMAPS = {
    "entropy_mean": "Mean attention entropy (nats)",
    "max_attn_mean": "Mean max attention",
    "k_eff_mean": "Mean k_eff (keys)",
    "query_norm_mean": "Mean query norm",
    "sink_share": "Attention on position 0 (sink share)",
}
# What report_figures writes: one figure's stem (its .png and .svg), a folder of figures.
REPORT_FIGURES = ("panels", "downstream", "comparison", "atlas", "correlation", "positions")
REPORT_FOLDERS = ("heatmaps", "gain_fits")


def _stem(path: str | Path) -> Path:
    return Path(path).with_suffix("")


def report_figures(
    sweep: pd.DataFrame,
    gain: pd.DataFrame,
    verdict: dict[str, Any],
    summary: pd.DataFrame,
    atlas: pd.DataFrame,
    positions: pd.DataFrame,
    out: dict[str, str | Path],
) -> None:
    """Every figure of the report. ``out`` maps each name of :data:`REPORT_FIGURES` to its PNG
    (the SVG is written beside it) and each of :data:`REPORT_FOLDERS` to a folder (the verdict
    page is :mod:`spectra_attn.analysis.verdict`'s). ``verdict`` (verdict.json) titles the gain
    comparison. The intervened heads (from ``sweep``) are outlined in the heatmaps."""
    missing = sorted({*REPORT_FIGURES, *REPORT_FOLDERS} - set(out))
    if missing:
        raise ValueError(f"report_figures needs paths for {', '.join(missing)}")
    highlight = [
        (int(layer), int(head), role)
        for layer, head, role in sweep[["layer", "head", "role"]].drop_duplicates().to_numpy()
    ]
    plot_intervention_panels(sweep, _stem(out["panels"]))
    plot_downstream(sweep, _stem(out["downstream"]))
    plot_gain_comparison(gain, _stem(out["comparison"]), verdict=verdict)
    plot_heatmap(
        atlas,
        "gain_max_attn",
        _stem(out["atlas"]),
        "Gain atlas: d max_attn / d ln s",
        highlight=highlight,
    )
    plot_heatmap(
        summary,
        "spearman_qn_entropy",
        _stem(out["correlation"]),
        "query-norm–entropy correlation: Spearman ρ(query_norm, entropy)",
        center=0.0,
        vmin=-1.0,  # a correlation's whole range, so that colours compare between runs
        vmax=1.0,
        highlight=highlight,
    )
    heatmaps = Path(out["heatmaps"])
    heatmaps.mkdir(parents=True, exist_ok=True)
    for value, title in METRIC_HEATMAPS.items():
        plot_heatmap(summary, value, heatmaps / value, title, highlight=highlight)
    plot_position_profiles(positions, _stem(out["positions"]))
    gain_fits = Path(out["gain_fits"])
    gain_fits.mkdir(parents=True, exist_ok=True)
    heads = sweep[["layer", "head"]].drop_duplicates().to_numpy()
    for layer, head in heads:
        plot_gain_fit(sweep, gain, int(layer), int(head), gain_fits / f"gain_fit_L{layer}_H{head}")
    logger.info(
        "wrote %d figures (PNG and SVG), %d metric heatmaps and %d gain fits",
        len(REPORT_FIGURES),
        len(METRIC_HEATMAPS),
        len(heads),
    )
