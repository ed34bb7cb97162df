"""Figures: every plot function writes a PNG and an SVG, atomically and deterministically, and
the heatmap puts each value in its (layer, head) cell."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from spectra_attn.analysis import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS, HEADS = 2, 4
SCALES = (0.5, 1.0, 2.0)
SAMPLES = 5
POSITIONS = 16
TARGET, CONTROL = (1, 2), (1, 0)


def make_sweep() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for (layer, head), role, strength in ((TARGET, "target", 1.0), (CONTROL, "control", 0.2)):
        for scale in SCALES:
            ln = np.log(scale)
            for sample in range(SAMPLES):
                noise = rng.normal(0.0, 0.02, size=6)
                rows.append(
                    {
                        "layer": layer,
                        "head": head,
                        "role": role,
                        "scale": np.float32(scale).item(),
                        "sample_id": 100 + sample,
                        "query_norm": 10.0 * scale + noise[0],
                        "entropy": 2.0 - strength * ln + noise[1],
                        "max_attn": 0.3 + 0.1 * strength * ln + noise[2],
                        "k_eff": 8.0 - 2.0 * strength * ln + noise[3],
                        "loss": 3.0 + 0.2 * strength * ln**2 + noise[4],
                        "kl": strength * 0.1 * ln**2 + abs(noise[5]),
                    }
                )
    return pd.DataFrame(rows)


def make_gain(sweep: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (layer, head, role), group in sweep.groupby(["layer", "head", "role"]):
        for metric in ("max_attn", "entropy", "k_eff"):
            means = group.groupby("scale")[metric].mean()
            x = np.log(means.index.to_numpy(float))
            slope, intercept = np.polyfit(x, means.to_numpy(), 1)
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "role": role,
                    "metric": metric,
                    "slope": slope,
                    "stderr": 0.01,
                    "intercept": intercept,
                    "r2": 0.99,
                    "ci_low": slope - 0.02,
                    "ci_high": slope + 0.02,
                    "n_points": len(x),
                }
            )
    return pd.DataFrame(rows)


def make_head_summary() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for layer in range(LAYERS):
        for head in range(HEADS):
            row = {"layer": layer, "head": head, "rows": 1000}
            for metric in ("query_norm", "entropy", "max_attn", "k_eff", "sink_attn"):
                row[f"{metric}_mean"] = 10 * layer + head + 0.5  # recognisable per cell
                row[f"{metric}_std"] = rng.uniform(0.1, 1.0)
                row[f"{metric}_q50"] = rng.uniform(0.0, 5.0)
            row["pearson_qn_entropy"] = rng.uniform(-1, 1)
            row["spearman_qn_entropy"] = rng.uniform(-1, 1)
            row["sink_share"] = rng.uniform(0, 1)
            rows.append(row)
    return pd.DataFrame(rows).sample(frac=1.0, random_state=2)  # rows out of order on purpose


def make_positions() -> pd.DataFrame:
    rows = []
    for layer in range(LAYERS):
        for head in range(HEADS):
            for pos in range(POSITIONS):
                rows.append(
                    {
                        "layer": layer,
                        "head": head,
                        "token_pos": pos,
                        "query_norm": 5.0 + head,
                        "entropy": np.nan if pos < 2 else np.log(pos + 1) * (1 + 0.1 * layer),
                        "max_attn": 1.0 / (pos + 1) ** 0.5,
                        "k_eff": 1.0 + 0.6 * pos,
                        "sink_attn": 0.9 / (1 + 0.1 * pos * (layer + 1)),
                    }
                )
    return pd.DataFrame(rows)


def make_atlas() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        [{"layer": layer, "head": head} for layer in range(LAYERS) for head in range(HEADS)]
    )
    frame["gain_max_attn"] = rng.normal(0.05, 0.03, len(frame))
    frame["gain_entropy"] = -rng.uniform(0.1, 1.0, len(frame))
    frame["gain_k_eff"] = -rng.uniform(0.5, 3.0, len(frame))
    frame["percentile_max_attn"] = frame["gain_max_attn"].rank(pct=True) * 100
    return frame


VERDICT = {
    "target": {"layer": TARGET[0], "head": TARGET[1]},
    "control": {"layer": CONTROL[0], "head": CONTROL[1]},
    "gain_ratio": 4.8,
    "ratio_ci_low": 3.1,
    "ratio_ci_high": 7.2,
    "verdict": "target responds more strongly than control (ratio CI excludes 1)",
    "target_percentile": 93.75,
}


def figure_calls():
    sweep = make_sweep()
    gain = make_gain(sweep)
    summary = make_head_summary()
    highlight = [(*TARGET, "target"), CONTROL]
    return {
        "intervention_panels": lambda stem: plots.plot_intervention_panels(sweep, stem),
        "gain_fit": lambda stem: plots.plot_gain_fit(sweep, gain, *TARGET, stem),
        "gain_comparison": lambda stem: plots.plot_gain_comparison(gain, stem, verdict=VERDICT),
        "gain_comparison_plain": lambda stem: plots.plot_gain_comparison(gain, stem),
        "heatmap_entropy": lambda stem: plots.plot_heatmap(
            summary, "entropy_mean", stem, "Mean attention entropy", highlight=highlight
        ),
        "heatmap_spearman": lambda stem: plots.plot_heatmap(
            summary, "spearman_qn_entropy", stem, "Spearman ρ(query norm, entropy)", center=0.0
        ),
        "heatmap_atlas": lambda stem: plots.plot_heatmap(
            make_atlas(), "gain_max_attn", stem, "max_attn gain", cmap="magma"
        ),
        "position_profiles": lambda stem: plots.plot_position_profiles(make_positions(), stem),
        "downstream": lambda stem: plots.plot_downstream(sweep, stem),
    }


CALLS = figure_calls()


def atlas_of(layers: int, heads: int) -> pd.DataFrame:
    rng = np.random.default_rng(layers * 100 + heads)
    frame = pd.DataFrame(
        [{"layer": layer, "head": head} for layer in range(layers) for head in range(heads)]
    )
    frame["gain_max_attn"] = rng.normal(0.05, 0.03, len(frame))
    return frame


# Every figure, and the atlas heatmap at the report's shapes: the demo model's 4 × 8 heads (whose
# colour-bar label ran off the figure), a tiny model and a 32 × 32 one.
SHAPES = {
    f"atlas_{layers}x{heads}": lambda stem, layers=layers, heads=heads: plots.plot_heatmap(
        atlas_of(layers, heads),
        "gain_max_attn",
        stem,
        "Gain atlas: d max_attn / d ln s",
        highlight=[(1, 0, "target"), (1, 1, "control")],
    )
    for layers, heads in ((4, 8), (2, 2), (32, 32), (12, 40))
}


@pytest.mark.parametrize("name", sorted(CALLS) + sorted(SHAPES))
def test_no_text_is_cut_off(name, tmp_path, monkeypatch):
    """Every text of every figure lies inside the figure as saved (titles, labels, colour-bar
    labels, tick labels, legends)."""
    seen = []
    save = plots.save_figure

    def checked_save(fig, stem):
        seen.append(plots.clipped_texts(fig))
        return save(fig, stem)

    monkeypatch.setattr(plots, "save_figure", checked_save)
    (CALLS | SHAPES)[name](tmp_path / name)
    assert seen == [[]]


def test_clipped_texts_finds_text_past_an_edge():
    """The check above fails on a figure whose text runs off an edge."""
    fig = plt.figure(figsize=(4, 3))
    try:
        fig.text(0.5, 0.5, "inside")
        assert plots.clipped_texts(fig) == []
        fig.text(0.97, 0.5, "a label running off the right edge", rotation=0)
        fig.text(0.5, 0.99, "over the top", va="bottom")
        assert plots.clipped_texts(fig) == ["a label running off the right edge", "over the top"]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_figure_written_and_deterministic(name, tmp_path):
    outputs = {}
    for run in ("a", "b"):
        stem = tmp_path / run / f"{name}.v1"  # a dotted stem keeps its dots
        CALLS[name](stem)
        png = stem.with_name(stem.name + ".png")
        svg = stem.with_name(stem.name + ".svg")
        assert png.read_bytes().startswith(PNG_MAGIC)
        assert svg.stat().st_size > 0
        root = ET.fromstring(svg.read_bytes())
        assert root.tag.endswith("svg")
        # nothing but the two outputs: no temporary files left behind
        assert sorted(p.name for p in stem.parent.iterdir()) == [png.name, svg.name]
        outputs[run] = (png.read_bytes(), svg.read_bytes())
    assert outputs["a"][1] == outputs["b"][1], "SVG differs between identical calls"
    assert outputs["a"][0] == outputs["b"][0], "PNG differs between identical calls"
    assert plt.get_fignums() == [], "figure left open"


def test_svg_has_no_date(tmp_path):
    CALLS["downstream"](tmp_path / "fig")
    text = (tmp_path / "fig.svg").read_text()
    assert "<dc:date>" not in text


def test_heatmap_matrix_places_values():
    summary = make_head_summary()
    matrix = plots.heatmap_matrix(summary, "entropy_mean")
    assert list(matrix.index) == list(range(LAYERS))
    assert list(matrix.columns) == list(range(HEADS))
    assert matrix.loc[1, 3] == pytest.approx(13.5)
    assert matrix.loc[0, 2] == pytest.approx(2.5)
    expected = summary.set_index(["layer", "head"])["spearman_qn_entropy"]
    spearman = plots.heatmap_matrix(summary, "spearman_qn_entropy")
    for (layer, head), value in expected.items():
        assert spearman.loc[layer, head] == value


def test_heatmap_matrix_missing_cell_and_duplicates():
    summary = make_head_summary()
    partial = summary[~((summary["layer"] == 0) & (summary["head"] == 1))]
    matrix = plots.heatmap_matrix(partial, "entropy_mean")
    assert np.isnan(matrix.loc[0, 1])
    assert matrix.loc[1, 1] == pytest.approx(11.5)
    with pytest.raises(ValueError, match="duplicated"):
        plots.heatmap_matrix(pd.concat([summary, summary.head(1)]), "entropy_mean")


def test_mean_ci_by_scale():
    frame = pd.DataFrame({"scale": [1.0, 1.0, 1.0, 2.0], "v": [1.0, 2.0, 3.0, 5.0]})
    stats = plots.mean_ci_by_scale(frame, "v")
    assert stats.loc[1.0, "mean"] == pytest.approx(2.0)
    half = 1.959963984540054 * 1.0 / np.sqrt(3)
    assert stats.loc[1.0, "high"] == pytest.approx(2.0 + half)
    assert stats.loc[2.0, "low"] == stats.loc[2.0, "high"] == 5.0  # one sample: no band


def test_head_styles_colour_by_role():
    sweep = make_sweep()
    extra = sweep[sweep["role"] == "target"].assign(layer=0, head=3)
    styles = plots.head_styles(pd.concat([sweep, extra]))
    assert [(s.layer, s.head, s.role) for s in styles] == [
        (0, 3, "target"),
        (1, 2, "target"),
        (1, 0, "control"),
    ]
    assert [s.color for s in styles] == ["tab:red", "tab:red", "tab:blue"]
    assert styles[0].linestyle != styles[1].linestyle


def test_gain_fit_unknown_head_raises(tmp_path):
    sweep = make_sweep()
    with pytest.raises(ValueError, match="L0 H0"):
        plots.plot_gain_fit(sweep, make_gain(sweep), 0, 0, tmp_path / "fig")
    assert list(tmp_path.iterdir()) == []
    assert plt.get_fignums() == []


def test_report_figures_writes_every_declared_file(tmp_path):
    """What the plots rule declares: each figure's PNG and SVG and the folders; nothing else."""
    sweep = make_sweep()
    out = {name: tmp_path / f"{name}.png" for name in plots.REPORT_FIGURES}
    out |= {name: tmp_path / name for name in plots.REPORT_FOLDERS}
    plots.report_figures(
        sweep, make_gain(sweep), VERDICT, make_head_summary(), make_atlas(), make_positions(), out
    )
    expected = {f"{name}.{ext}" for name in plots.REPORT_FIGURES for ext in ("png", "svg")}
    expected |= set(plots.REPORT_FOLDERS)
    assert {p.name for p in tmp_path.iterdir()} == expected
    heatmaps = {p.name for p in (tmp_path / "heatmaps").iterdir()}
    assert heatmaps == {f"{v}.{ext}" for v in plots.METRIC_HEATMAPS for ext in ("png", "svg")}
    fits = {p.name for p in (tmp_path / "gain_fits").iterdir()}
    assert fits == {
        f"gain_fit_L{layer}_H{head}.{ext}"
        for layer, head in (TARGET, CONTROL)
        for ext in ("png", "svg")
    }
    with pytest.raises(ValueError, match="gain_fits"):
        plots.report_figures(sweep, make_gain(sweep), VERDICT, None, None, None, {"panels": "x"})


def test_loss_change_is_paired_by_sample():
    sweep = make_sweep()
    table = plots.loss_change(sweep)
    row = table[(table["role"] == "target") & (table["scale"] == 2.0)].iloc[0]
    base = sweep[
        (sweep["role"] == "target")
        & (sweep["scale"] == 1.0)
        & (sweep["sample_id"] == row.sample_id)
    ]["loss"].item()
    assert row.loss_change == pytest.approx(row.loss - base)
    assert (table.loc[table["scale"] == 1.0, "loss_change"] == 0).all()


def test_downstream_without_scale_one_plots_the_loss(tmp_path):
    sweep = make_sweep()
    plots.plot_downstream(sweep[sweep["scale"] != 1.0], tmp_path / "fig")
    assert (tmp_path / "fig.png").is_file()
    assert plots.loss_change(sweep[sweep["scale"] != 1.0])["loss_change"].isna().all()
