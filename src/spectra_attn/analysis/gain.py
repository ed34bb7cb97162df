"""Gain analysis (seed: Path A): how strongly a head's attention responds to its query's scale.

    Gain = d mean(max_attn) / d ln(s), by ordinary least squares over the per-scale means,

with its standard error, R² and 95% confidence interval (Student t, n − 2 degrees of freedom); the
same for entropy and k_eff. The target/control ratio of max_attn gains gets a bootstrap CI over
samples (the same resampled samples for both heads, seeded). The verdict follows the original
project's table, and its failure criterion is stated plainly when it applies.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from spectra_attn.columns import GAIN_METRICS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fit:
    slope: float
    intercept: float
    stderr: float
    r2: float
    ci_low: float
    ci_high: float
    n_points: int


def ols(x, y, confidence: float = 0.95) -> Fit:
    """Least-squares line y = intercept + slope·x with the slope's standard error and CI."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    x_mean, y_mean = x.mean(), y.mean()
    sxx = ((x - x_mean) ** 2).sum()
    sxy = ((x - x_mean) * (y - y_mean)).sum()
    syy = ((y - y_mean) ** 2).sum()
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    residual = max(syy - slope * sxy, 0.0)
    r2 = 1.0 - residual / syy if syy > 0 else 1.0
    if n > 2:
        stderr = np.sqrt(residual / (n - 2) / sxx)
        half_width = stats.t.ppf(0.5 + confidence / 2, n - 2) * stderr
    else:
        stderr, half_width = np.nan, np.nan
    return Fit(slope, intercept, stderr, r2, slope - half_width, slope + half_width, n)


def scale_means(sweep: pd.DataFrame, metric: str) -> pd.Series:
    """Mean over samples of ``metric`` at each scale, indexed by scale."""
    return sweep.groupby("scale")[metric].mean().sort_index()


def head_gains(sweep: pd.DataFrame) -> pd.DataFrame:
    """OLS gain of every metric for every (layer, head, role) in a sweep table."""
    rows = []
    for (layer, head, role), group in sweep.groupby(["layer", "head", "role"], sort=True):
        for metric in GAIN_METRICS:
            means = scale_means(group, metric)
            fit = ols(np.log(means.index.to_numpy(np.float64)), means.to_numpy())
            rows.append(
                {"layer": layer, "head": head, "role": role, "metric": metric, **asdict(fit)}
            )
    return pd.DataFrame(rows)


def bootstrap_ratio(
    target: pd.DataFrame,
    control: pd.DataFrame,
    metric: str = "max_attn",
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Gain ratio target/control and its percentile bootstrap CI, resampling sample ids with
    replacement (the same ids for both heads, since they saw the same sequences)."""

    def matrix(sweep: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        table = sweep.pivot_table(index="sample_id", columns="scale", values=metric)
        return table.index.to_numpy(), np.log(table.columns.to_numpy(np.float64)), table.to_numpy()

    ids_t, log_s_t, values_t = matrix(target)
    ids_c, log_s_c, values_c = matrix(control)
    common = np.intersect1d(ids_t, ids_c)
    values_t = values_t[np.searchsorted(ids_t, common)]
    values_c = values_c[np.searchsorted(ids_c, common)]

    def slopes(x: np.ndarray, means: np.ndarray) -> np.ndarray:  # means: [replicates, scales]
        centred = x - x.mean()
        return (means - means.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)

    ratio = float(slopes(log_s_t, values_t.mean(0, keepdims=True))[0]) / float(
        slopes(log_s_c, values_c.mean(0, keepdims=True))[0]
    )
    generator = np.random.default_rng(seed)
    draws = generator.integers(0, len(common), size=(n_boot, len(common)))
    boot_t = slopes(log_s_t, values_t[draws].mean(axis=1))
    boot_c = slopes(log_s_c, values_c[draws].mean(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = boot_t / boot_c
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(ratios, [tail, 100 - tail])
    return ratio, float(low), float(high)


def verdict_text(ratio: float) -> str:
    """The original project's interpretation table for the target/control gain ratio."""
    if ratio >= 2.0:
        return "≥ 2.0×: strong evidence of head-specific exploitation of query magnitude"
    if ratio >= 1.5:
        return "≥ 1.5×: the target shows higher sensitivity to query magnitude"
    if ratio > 1 / 1.5:
        return "≈ 1.0: no functional distinction — a universal mechanism"
    return "≤ 0.67×: the control is more sensitive than the target"


def verdict(
    sweep: pd.DataFrame,
    trends: pd.DataFrame,
    gains: pd.DataFrame,
    n_boot: int = 2000,
    seed: int = 0,
    atlas: pd.DataFrame | None = None,
) -> dict:
    """The original project's verdict for the target and control heads of a sweep.

    ``atlas`` (:func:`atlas_gains` of every head), if given, adds where the target's max_attn
    gain ranks among all heads (``target_percentile``, ``heads_in_atlas``).

    ``trends``: trend analyses of both heads (columns layer, head, role, metric, monotonic, …).
    Failure criterion: the target is not monotonic (max_attn or entropy) while the control stays
    flat (the 95% CI of its max_attn gain contains 0): the query-norm–entropy correlation is then
    likely epiphenomenal.
    """
    target = sweep[sweep.role == "target"]
    control = sweep[sweep.role == "control"]
    if target.empty or control.empty:
        raise ValueError("the gain verdict needs one target and one control head")
    ratio, low, high = bootstrap_ratio(target, control, n_boot=n_boot, seed=seed)
    gain = gains[gains.metric == "max_attn"].set_index("role")
    target_trends = trends[trends.role == "target"].set_index("metric")
    target_monotonic = bool(target_trends.loc[["max_attn", "entropy"], "monotonic"].all())
    control_flat = bool(gain.loc["control", "ci_low"] <= 0 <= gain.loc["control", "ci_high"])
    failure = (not target_monotonic) and control_flat
    statement = verdict_text(ratio)
    if failure:
        statement = (
            "FAILURE CRITERION MET: the target head is not monotonic while the control stays "
            "flat, so the correlation between query norm and entropy is likely "
            "epiphenomenal. " + statement
        )
    head = lambda frame: {"layer": int(frame.layer.iloc[0]), "head": int(frame["head"].iloc[0])}  # noqa: E731
    result = {
        "target": head(target),
        "control": head(control),
        "gain_target": float(gain.loc["target", "slope"]),
        "gain_control": float(gain.loc["control", "slope"]),
        "gain_ratio": ratio,
        "ratio_ci_low": low,
        "ratio_ci_high": high,
        "bootstrap_samples": n_boot,
        "bootstrap_seed": seed,
        "target_monotonic": target_monotonic,
        "control_flat": control_flat,
        "failure_criterion_met": failure,
        "verdict": statement,
    }
    if atlas is not None:
        by_head = atlas.set_index(["layer", "head"])
        key = (result["target"]["layer"], result["target"]["head"])
        if key not in by_head.index:
            raise ValueError(f"the atlas has no gain for the target head L{key[0]}_H{key[1]}")
        result["target_percentile"] = float(by_head.loc[key, "percentile_max_attn"])
        result["heads_in_atlas"] = len(by_head)
    return result


# -- the gain atlas (spectra_attn.model.atlas writes its parts) ------------------------------------
def atlas_gains(parts: list[str]) -> pd.DataFrame:
    """OLS gain of each metric against ln(scale) for every (layer, head), over per-scale means
    across all samples, and each head's percentile of max_attn gain among all heads."""
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    # Means summed in one order whatever order the parts come in: the same bytes on every rerun.
    rows = rows.sort_values(["layer", "head", "scale", "sample_id"], kind="stable")
    means = rows.groupby(["layer", "head", "scale"])[list(GAIN_METRICS)].mean().reset_index()
    records = []
    for (layer, head), group in means.groupby(["layer", "head"], sort=True):
        group = group.sort_values("scale")
        log_scale = np.log(group["scale"].to_numpy(np.float64))
        record = {"layer": int(layer), "head": int(head)}
        for metric in GAIN_METRICS:
            fit = ols(log_scale, group[metric].to_numpy(np.float64))
            record[f"gain_{metric}"] = fit.slope
            record[f"gain_{metric}_stderr"] = fit.stderr
        records.append(record)
    gains = pd.DataFrame(records)
    # Percentile: share of heads whose gain is at most this head's.
    values = gains["gain_max_attn"].to_numpy()
    gains["percentile_max_attn"] = (values[None, :] <= values[:, None]).mean(axis=1) * 100
    logger.info(
        "gains of %d heads over %d scales, from %d rows in %d atlas parts",
        len(gains),
        rows["scale"].nunique(),
        len(rows),
        len(parts),
    )
    return gains


def compare_with_sweep(atlas_parts: list[str], sweep: pd.DataFrame, tolerance: float) -> dict:
    """The atlas's per-sample means against the hook-based sweep's, on the samples and scales both
    hold, for every intervened head. Returns a check report."""
    atlas = pd.concat([pd.read_parquet(p) for p in atlas_parts], ignore_index=True)
    keys = ["layer", "head", "scale", "sample_id"]
    atlas = atlas.astype({"layer": "int64", "head": "int64", "sample_id": "int64"})
    sweep = sweep.astype({"layer": "int64", "head": "int64", "sample_id": "int64"})
    atlas["scale"] = atlas["scale"].round(6)
    sweep = sweep.assign(scale=sweep["scale"].round(6))
    joined = sweep.merge(atlas, on=keys, suffixes=("_sweep", "_atlas"))
    deviations = {}
    for metric in GAIN_METRICS:
        a, b = joined[f"{metric}_atlas"], joined[f"{metric}_sweep"]
        deviations[metric] = float(((a - b).abs() / b.abs().clip(lower=1e-6)).max())
    worst = max(deviations.values()) if len(joined) else float("inf")

    def names(frame: pd.DataFrame) -> set[str]:
        return {f"L{r.layer}_H{r.head}" for r in frame[["layer", "head"]].itertuples()}

    unchecked = sorted(names(sweep) - names(joined))
    report = {
        "check": "atlas_vs_sweep",
        "passed": bool(len(joined) > 0 and not unchecked and worst <= tolerance),
        "tolerance": tolerance,
        "max_deviation": worst,
        "deviations": deviations,
        "compared_rows": int(len(joined)),
        "heads": sorted(names(joined)),
    }
    if unchecked:
        report["reason"] = (
            f"the atlas shares no (scale, sample) with the sweep of {', '.join(unchecked)}: "
            "give atlas.scales at least one of each head's scales"
        )
    return report
