"""Automatic head selection against scipy's Spearman correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from spectra_attn.analysis.selection import head_correlations, select_heads


def test_correlations_equal_scipy(tmp_path):
    generator = np.random.default_rng(0)
    frames = []
    for layer in range(2):
        for head in range(3):
            norm = generator.normal(size=200)
            entropy = (head - 1) * norm + generator.normal(size=200) * (1 + layer)
            if head == 2:  # ties, which take their average rank
                norm, entropy = norm.round(1), entropy.round(0)
            entropy[:5] = np.nan  # the skipped first positions
            frames.append(
                pd.DataFrame(
                    {
                        "sample_id": 0,
                        "layer": layer,
                        "head": head,
                        "token_pos": np.arange(200),
                        "query_norm": norm,
                        "entropy": entropy,
                        "max_attn": generator.uniform(size=200),
                        "k_eff": generator.integers(1, 200, size=200),
                        "sink_attn": generator.uniform(size=200),
                    }
                )
            )
    frame = pd.concat(frames, ignore_index=True).astype(
        {
            "sample_id": "int32",
            "layer": "int16",
            "head": "int16",
            "token_pos": "int32",
            "query_norm": "float32",
            "entropy": "float32",
            "max_attn": "float32",
            "k_eff": "int32",
            "sink_attn": "float32",
        }
    )
    parts = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    frame.iloc[:500].to_parquet(parts[0])
    frame.iloc[500:].to_parquet(parts[1])
    correlations = head_correlations(parts).set_index(["layer", "head"])
    for (layer, head), group in frame.dropna().groupby(["layer", "head"]):
        expected = scipy.stats.spearmanr(group.query_norm, group.entropy).statistic
        assert correlations.loc[(layer, head), "spearman_rho"] == pytest.approx(expected, abs=1e-9)
        assert correlations.loc[(layer, head), "tokens"] == 195


def test_target_is_strongest_and_control_weakest_of_its_layer():
    table = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 1],
            "head": [0, 1, 0, 1, 2],
            "spearman_rho": [0.1, 0.05, -0.8, 0.3, -0.02],
            "tokens": 10,
        }
    )
    target, control = select_heads(table)
    assert (target["layer"], target["head"], target["role"]) == (1, 0, "target")
    assert (control["layer"], control["head"], control["role"]) == (1, 2, "control")
