"""Automatic head selection from the capture (the seed's Phase-0 correlation): the target is the
head whose query norm and attention entropy are most strongly rank-correlated (largest
|Spearman ρ| over all captured tokens with a defined entropy); the control is the head of the same
layer with the weakest correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def head_correlations(parts: list[str]) -> pd.DataFrame:
    """Spearman ρ(query_norm, entropy) and the token count per (layer, head), from capture parts.

    Ranks are taken within each head (average ranks for ties), then Pearson's r of the ranks.
    """
    frame = pd.concat(
        [
            pq.read_table(p, columns=["layer", "head", "query_norm", "entropy"]).to_pandas()
            for p in parts
        ],
        ignore_index=True,
    ).dropna(subset=["entropy"])
    grouped = frame.groupby(["layer", "head"], sort=True)
    frame["rank_norm"] = grouped["query_norm"].rank(method="average")
    frame["rank_entropy"] = grouped["entropy"].rank(method="average")
    rows = []
    for (layer, head), group in frame.groupby(["layer", "head"], sort=True):
        a = group["rank_norm"].to_numpy(np.float64)
        b = group["rank_entropy"].to_numpy(np.float64)
        a, b = a - a.mean(), b - b.mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        rho = float((a * b).sum() / denominator) if denominator > 0 else np.nan
        rows.append({"layer": int(layer), "head": int(head), "spearman_rho": rho, "tokens": len(a)})
    return pd.DataFrame(rows)


def select_heads(correlations: pd.DataFrame) -> list[dict]:
    """``[{layer, head, role: target, spearman_rho}, {..., role: control}]``."""
    usable = correlations.dropna(subset=["spearman_rho"]).assign(
        strength=lambda f: f["spearman_rho"].abs()
    )
    if usable.empty:
        raise ValueError("no head has a defined query_norm/entropy correlation to select from")
    target = usable.loc[usable["strength"].idxmax()]
    same_layer = usable[(usable["layer"] == target["layer"]) & (usable["head"] != target["head"])]
    if same_layer.empty:
        raise ValueError(f"layer {int(target['layer'])} has no other head to serve as control")
    control = same_layer.loc[same_layer["strength"].idxmin()]
    return [
        {
            "layer": int(row["layer"]),
            "head": int(row["head"]),
            "role": role,
            "spearman_rho": float(row["spearman_rho"]),
        }
        for row, role in ((target, "target"), (control, "control"))
    ]
