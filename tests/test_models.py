"""Several models in one configuration (models:): each entry resolves to the configuration a
single-model run of it would have, models with the same tokenizer share one shard store, and the
comparison reads each run's outputs (checked against an independent recomputation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from spectra_attn import config as spectra_config
from spectra_attn.analysis import compare
from spectra_attn.data.shards import assign_stores, store_dir, tokenizer_identity

ROOT = Path(__file__).resolve().parents[1]
TWO_MODELS = ROOT / "configs" / "demo-two-models.yaml"


def two_models() -> dict:
    return spectra_config.load([ROOT / "config.yaml", TWO_MODELS])


def test_without_models_the_run_is_the_configuration_itself():
    config = spectra_config.load([ROOT / "config.yaml"])
    runs = spectra_config.resolve_runs(config)
    assert list(runs) == ["demo"]
    assert runs["demo"] == {k: v for k, v in config.items() if k != "models"}
    assert assign_stores(runs) == {"demo": store_dir(config)}


def test_each_entry_is_a_single_model_configuration():
    """An entry's run is exactly what --configfile with its keys over config.yaml would give."""
    config = two_models()
    runs = spectra_config.resolve_runs(config)
    assert list(runs) == ["demo", "demo-small"]
    for entry in yaml.safe_load(TWO_MODELS.read_text())["models"]:
        alone = spectra_config.load([ROOT / "config.yaml"])
        alone = spectra_config.validate(spectra_config.deep_merge(alone, entry))
        alone.pop("models")
        assert runs[entry["run_name"]] == alone
    assert runs["demo"]["model"]["name_or_path"] == "resources/demo/model"
    assert runs["demo-small"]["demo"]["hidden_size"] == 64
    assert runs["demo-small"]["intervention"]["heads"][0] == {
        "layer": 1,
        "head": 0,
        "role": "target",
    }
    assert runs["demo-small"]["capture"] == runs["demo"]["capture"]  # the top-level's
    assert spectra_config.demo_models(runs) == {"small": runs["demo-small"]["demo"]}


def test_models_with_the_same_tokenizer_share_one_store():
    runs = spectra_config.resolve_runs(two_models())
    stores = assign_stores(runs)
    # The first model's store, the one a run of it alone makes.
    assert stores == {"demo": store_dir(runs["demo"]), "demo-small": store_dir(runs["demo"])}
    assert store_dir(runs["demo-small"]) != store_dir(runs["demo"])  # alone: a store of its own


@pytest.mark.parametrize(
    "change",
    [
        {"demo": {"vocab_size": 2048}},  # another demo tokenizer
        {"data": {"context_length": 256}},  # other shards
    ],
    ids=lambda change: next(iter(change)),
)
def test_another_tokenizer_or_other_data_make_shards_of_their_own(change):
    config = two_models()
    config["models"][1] = spectra_config.deep_merge(config["models"][1], change)
    runs = spectra_config.resolve_runs(spectra_config.validate(config))
    stores = assign_stores(runs)
    assert stores["demo-small"] == store_dir(runs["demo-small"]) != stores["demo"]


def test_local_tokenizers_are_compared_by_content(tmp_path):
    def folder(name, tokenizer, vocab=100):
        path = tmp_path / name
        path.mkdir()
        (path / "tokenizer.json").write_text(tokenizer)
        (path / "config.json").write_text(json.dumps({"vocab_size": vocab}))
        return str(path)

    base = spectra_config.validate({})
    runs = {
        name: spectra_config.deep_merge(base, {"run_name": name, "model": {"name_or_path": path}})
        for name, path in (
            ("a", folder("a", "{}")),
            ("b", folder("b", "{}")),  # the same tokenizer in another folder
            ("c", folder("c", '{"x": 1}')),
            ("d", folder("d", "{}", vocab=128)),  # a larger embedding
        )
    }
    assert tokenizer_identity(runs["a"]) == tokenizer_identity(runs["b"])
    stores = assign_stores(runs)
    assert stores["a"] == stores["b"] == store_dir(runs["a"])
    assert len({stores["a"], stores["c"], stores["d"]}) == 3


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"run_name": "demo"}, "must differ from every models[].run_name"),
        ({"models": [{"run_name": "x", "model": {}}] * 2}, "run_name 'x' is given to 2 entries"),
        (
            {"models": [{"run_name": "x", "model": {}, "demo": {"hidden_size": 64}}]},
            "is built from the top-level demo settings",
        ),
        (
            {
                "models": [
                    {"run_name": "x", "model": {"name_or_path": "resources/demo/models/s"}},
                    {
                        "run_name": "y",
                        "model": {"name_or_path": "resources/demo/models/s"},
                        "demo": {"hidden_size": 64},
                    },
                ]
            },
            "is built by models[0] with other demo settings",
        ),
        (
            {"models": [{"run_name": "x", "model": {}, "intervention": {"heads": []}}]},
            "models[0] (x): config key 'intervention.heads': needs exactly one head",
        ),
        ({"models": [{"run_name": "x", "model": {"dtype": "int8"}}]}, "models[0].model.dtype"),
        # seed is not a key of an entry
        ({"models": [{"run_name": "x", "model": {}, "seed": 3}]}, "'seed'"),
    ],
    ids=[
        "comparison_name",
        "same_name",
        "default_demo",
        "two_demo_settings",
        "heads",
        "dtype",
        "seed",
    ],
)
def test_invalid_entries_are_named(change, words):
    config = spectra_config.deep_merge(two_models(), change)
    with pytest.raises(spectra_config.ConfigError) as raised:
        spectra_config.validate(config)
    assert words in str(raised.value)


# -- the comparison ----------------------------------------------------------------------------
def fake_run(tmp_path: Path, name: str, layers: int, heads: int, seed: int) -> compare.RunOutputs:
    rng = np.random.default_rng(seed)
    folder = tmp_path / name
    folder.mkdir()
    grid = [(layer, head) for layer in range(layers) for head in range(heads)]
    gains = rng.normal(0.05, 0.02, len(grid))
    atlas = pd.DataFrame(
        {
            "layer": [g[0] for g in grid],
            "head": [g[1] for g in grid],
            "gain_max_attn": gains,
            "percentile_max_attn": [(gains <= g).mean() * 100 for g in gains],
        }
    )
    atlas.to_csv(folder / "atlas_gain.csv", index=False)
    rho = rng.uniform(-0.9, 0.9, len(grid))
    rho[3] = np.nan  # a head without a defined correlation
    pd.DataFrame(
        {"layer": atlas.layer, "head": atlas["head"], "spearman_qn_entropy": rho, "rows": 10}
    ).to_parquet(folder / "head_summary.parquet")
    verdict = {
        "target": {"layer": layers - 1, "head": 1},
        "control": {"layer": layers - 1, "head": 0},
        "gain_ratio": 1.7,
        "ratio_ci_low": 1.2,
        "ratio_ci_high": 2.4,
        "failure_criterion_met": False,
        "verdict": "1.5–2×: ...",
    }
    (folder / "verdict.json").write_text(json.dumps(verdict))
    return compare.RunOutputs(
        name,
        f"models/{name}",
        folder / "verdict.json",
        folder / "atlas_gain.csv",
        folder / "head_summary.parquet",
    )


def test_comparison_rows_equal_an_independent_recomputation(tmp_path):
    runs = [fake_run(tmp_path, "big", 4, 8, 0), fake_run(tmp_path, "small", 3, 4, 1)]
    table, atlas, rho = compare.compare(runs)
    assert list(table.columns) == list(compare.COLUMNS)
    assert list(table.run_name) == ["big", "small"]
    for run, row in zip(runs, table.to_dict("records"), strict=True):
        verdict = json.loads(Path(run.verdict).read_text())
        gains = pd.read_csv(run.atlas)
        summary = pd.read_parquet(run.head_summary)
        layers = gains.layer.nunique()
        assert (row["n_layers"], row["n_heads"]) == (layers, gains["head"].nunique())
        for key in ("gain_ratio", "ratio_ci_low", "ratio_ci_high", "verdict"):
            assert row[key] == verdict[key]
        target = gains[(gains.layer == layers - 1) & (gains["head"] == 1)].iloc[0]
        # the percentile the atlas itself records, and scipy's "weak" percentile
        assert row["target_percentile"] == pytest.approx(target.percentile_max_attn)
        assert row["target_percentile"] == pytest.approx(
            stats.percentileofscore(gains.gain_max_attn, target.gain_max_attn, kind="weak")
        )
        assert row["target_depth"] == 1.0  # the last layer
        values = summary.spearman_qn_entropy.dropna()
        assert row["spearman_rho_median"] == pytest.approx(np.median(values))
        assert row["spearman_rho_max_abs"] == pytest.approx(np.abs(values).max())
    # the depth axis: first layer at 0, last at 1, for both sizes
    for name, layers in (("big", 4), ("small", 3)):
        heads = atlas[atlas.run_name == name]
        assert heads.depth.min() == 0 and heads.depth.max() == 1
        assert sorted(heads.depth.unique()) == pytest.approx(np.linspace(0, 1, layers))
        assert heads.target.sum() == 1 and rho[rho.run_name == name].target.sum() == 1


def test_the_comparison_writes_its_table_database_and_figures(tmp_path):
    import duckdb

    runs = [fake_run(tmp_path, "big", 4, 8, 0), fake_run(tmp_path, "small", 3, 4, 1)]
    out = tmp_path / "comparison"
    outputs = {
        "table": out / "comparison.csv",
        "database": out / "comparison.duckdb",
        "verdicts": out / "comparison_verdicts.png",
        "atlas": out / "comparison_atlas_depth.png",
        "correlations": out / "comparison_correlations.png",
    }
    table = compare.write_comparison(runs, outputs)
    pd.testing.assert_frame_equal(pd.read_csv(outputs["table"]), table, check_dtype=False)
    con = duckdb.connect(str(outputs["database"]), read_only=True)
    stored = con.execute("SELECT * FROM models").df()
    counts = con.execute("SELECT run_name, count(*) FROM atlas GROUP BY 1 ORDER BY 1").fetchall()
    con.close()
    pd.testing.assert_frame_equal(stored, table, check_dtype=False)
    assert counts == [("big", 32), ("small", 12)]
    for name in ("verdicts", "atlas", "correlations"):
        assert outputs[name].stat().st_size > 1000
        assert outputs[name].with_suffix(".svg").is_file()


def test_config_show_lists_the_models():
    text = spectra_config.describe(two_models())
    assert "compared in results/demo-two-models/comparison/" in text
    assert (
        "demo-small            resources/demo/models/small (float32), heads L1H0 (target)" in text
    )
