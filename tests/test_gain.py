"""Gain analysis against scipy.stats.linregress, and the original project's verdict table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from spectra_attn.analysis.gain import bootstrap_ratio, head_gains, ols, verdict, verdict_text
from spectra_attn.model.intervention import trend_analysis

SCALES = [0.5, 0.75, 1.0, 1.25, 1.5]


def make_sweep(gains: dict[str, float], n_samples=20, noise=0.01, seed=0, curve=None):
    generator = np.random.default_rng(seed)
    rows = []
    for role, gain in gains.items():
        head = 0 if role == "target" else 5
        for sample in range(n_samples):
            offset = generator.normal(0, 0.02)
            for scale in SCALES:
                x = np.log(scale)
                max_attn = 0.3 + gain * (curve(x) if curve and role == "target" else x) + offset
                rows.append(
                    {
                        "layer": 2,
                        "head": head,
                        "role": role,
                        "scale": scale,
                        "sample_id": sample,
                        "max_attn": max_attn + generator.normal(0, noise),
                        "entropy": 3.0 - 2 * gain * x + generator.normal(0, noise),
                        "k_eff": 100 - 50 * gain * x + generator.normal(0, noise),
                        "query_norm": 5 * scale,
                        "loss": 3.0,
                        "kl": 0.0,
                    }
                )
    return pd.DataFrame(rows)


def test_ols_equals_linregress():
    generator = np.random.default_rng(1)
    x = np.log(SCALES)
    y = 0.2 + 0.15 * x + generator.normal(0, 0.01, size=len(x))
    fit = ols(x, y)
    reference = stats.linregress(x, y)
    assert fit.slope == pytest.approx(reference.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(reference.intercept, rel=1e-12)
    assert fit.stderr == pytest.approx(reference.stderr, rel=1e-10)
    assert fit.r2 == pytest.approx(reference.rvalue**2, rel=1e-12)
    half = stats.t.ppf(0.975, len(x) - 2) * reference.stderr
    assert (fit.ci_low, fit.ci_high) == pytest.approx(
        (reference.slope - half, reference.slope + half)
    )


def test_head_gains_fit_the_per_scale_means():
    sweep = make_sweep({"target": 0.2, "control": 0.05})
    gains = head_gains(sweep).set_index(["role", "metric"])
    for role in ("target", "control"):
        means = sweep[sweep.role == role].groupby("scale").max_attn.mean()
        reference = stats.linregress(np.log(means.index), means.to_numpy())
        assert gains.loc[(role, "max_attn"), "slope"] == pytest.approx(reference.slope)
    assert gains.loc[("target", "entropy"), "slope"] == pytest.approx(-0.4, abs=0.01)


def test_bootstrap_ratio_is_seeded_and_brackets_the_ratio():
    sweep = make_sweep({"target": 0.2, "control": 0.08})
    target, control = sweep[sweep.role == "target"], sweep[sweep.role == "control"]
    first = bootstrap_ratio(target, control, n_boot=500, seed=3)
    assert first == bootstrap_ratio(target, control, n_boot=500, seed=3)
    ratio, low, high = first
    assert ratio == pytest.approx(2.5, rel=0.05)
    assert low < ratio < high


@pytest.mark.parametrize(
    ("ratio", "words"),
    [
        (1.0, "no functional distinction"),
        (1.6, "higher sensitivity"),
        (2.4, "strong evidence"),
        (0.5, "control is more sensitive"),
    ],
)
def test_verdict_table(ratio, words):
    assert words in verdict_text(ratio)


def test_verdict_on_a_clear_difference():
    sweep = make_sweep({"target": 0.2, "control": 0.05})
    result = verdict(sweep, trend_analysis(sweep), head_gains(sweep), n_boot=300)
    assert result["gain_ratio"] == pytest.approx(4.0, rel=0.1)
    assert "strong evidence" in result["verdict"] and not result["failure_criterion_met"]
    assert result["target"] == {"layer": 2, "head": 0}
    assert "target_percentile" not in result
    atlas = pd.DataFrame(
        {"layer": [2, 2, 3], "head": [0, 1, 0], "percentile_max_attn": [100.0, 33.3, 66.7]}
    )
    ranked = verdict(sweep, trend_analysis(sweep), head_gains(sweep), n_boot=300, atlas=atlas)
    assert (ranked["target_percentile"], ranked["heads_in_atlas"]) == (100.0, 3)
    with pytest.raises(ValueError, match="no gain for the target head L2_H0"):
        verdict(sweep, trend_analysis(sweep), head_gains(sweep), n_boot=300, atlas=atlas[1:])


def test_failure_criterion_is_stated_plainly():
    """A target that rises then falls (not monotonic) against a flat control."""
    sweep = make_sweep({"target": 0.2, "control": 0.0}, noise=0.02, curve=lambda x: -(x**2) * 4)
    result = verdict(sweep, trend_analysis(sweep), head_gains(sweep), n_boot=300)
    assert result["failure_criterion_met"]
    assert result["verdict"].startswith("FAILURE CRITERION MET")
    assert "epiphenomenal" in result["verdict"]
