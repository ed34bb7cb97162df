"""Automatic head selection from the capture (the query-norm–entropy correlation): the target is the
head whose query norm and attention entropy are most strongly rank-correlated (largest
|Spearman ρ| over all captured tokens with a defined entropy); the control is the head of the same
layer with the weakest correlation."""

from __future__ import annotations

import pandas as pd

from spectra_attn.analysis.aggregate import connect, spearman


def head_correlations(parts: list[str]) -> pd.DataFrame:
    """Spearman ρ(query_norm, entropy) and the token count per (layer, head), from capture parts.

    Ranks are taken within each head (average ranks for ties), then Pearson's r of the ranks: the
    aggregate's ``spearman_qn_entropy`` (:func:`spectra_attn.analysis.aggregate.spearman`),
    computed by DuckDB out of core, so the capture never has to fit in memory and the two always
    agree.
    """
    con = connect()
    try:
        table = spearman(con, parts)
    finally:
        con.close()
    return table.rename(columns={"spearman_qn_entropy": "spearman_rho"})[
        ["layer", "head", "spearman_rho", "tokens"]
    ]


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
