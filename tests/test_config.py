"""The configuration contract: schema, defaults, overlays and messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spectra_attn import config as spectra_config
from spectra_attn.cli import main

ROOT = Path(__file__).resolve().parents[1]

CONTRACT_KEYS = {
    "model.name_or_path",
    "model.dtype",
    "data.source",
    "data.split",
    "data.include_sources",
    "data.context_length",
    "data.sequences_per_shard",
    "data.max_sequences",
    "capture.n_samples",
    "capture.rope",
    "capture.k_eff_threshold",
    "capture.entropy_skip_tokens",
    "intervention.heads",
    "intervention.scales",
    "intervention.n_samples",
    "device",
    "seed",
}


CAPTURE_CONTRACT = {
    "n_samples": 64,
    "rope": "pre",
    "k_eff_threshold": 0.9,
    "entropy_skip_tokens": 2,
}


def walk(schema, prefix=""):
    """Every key of the schema, with the keys of list items as ``<list>[].<key>``."""
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        yield name, sub
        if sub.get("type") == "object":
            yield from walk(sub, f"{name}.")
        if sub.get("items", {}).get("type") == "object":
            yield from walk(sub["items"], f"{name}[].")


def test_every_key_has_a_description_and_a_default():
    keys = dict(walk(spectra_config.load_schema()))
    assert set(keys) >= CONTRACT_KEYS
    assert "intervention.heads[].scales" in keys
    for name, sub in keys.items():
        assert sub.get("description"), name
        if "[]" not in name:  # an item's keys are required or optional, not defaulted
            assert "default" in sub, name


def test_contract_defaults():
    config = spectra_config.validate({})
    assert config["data"]["split"] == "test"
    assert config["data"]["include_sources"] == [
        "RedPajamaCommonCrawl",
        "RedPajamaC4",
        "RedPajamaWikipedia",
        "RedPajamaStackExchange",
    ]
    assert (config["data"]["context_length"], config["data"]["sequences_per_shard"]) == (512, 3000)
    assert config["data"]["max_sequences"] == 12000
    assert {k: config["capture"][k] for k in CAPTURE_CONTRACT} == CAPTURE_CONTRACT
    assert config["intervention"]["heads"] == [
        {"layer": 12, "head": 0, "role": "target"},
        {"layer": 12, "head": 15, "role": "control"},
    ]
    assert config["intervention"]["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert (config["device"], config["seed"]) == ("auto", 0)
    assert spectra_config.uses_demo_model(config) and spectra_config.uses_demo_corpus(config)


def test_repository_config_is_valid_and_is_the_demo():
    config = spectra_config.load([ROOT / "config.yaml"])
    assert spectra_config.uses_demo_model(config)
    # config.yaml spells out every key, so users see the whole contract in one file.
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    schema = spectra_config.load_schema()
    assert set(leaf_keys(raw)) == {
        name for name, sub in walk(schema) if sub.get("type") != "object" and "[]" not in name
    }


def leaf_keys(mapping, prefix=""):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"data": {"bogus": 1}}, "unknown configuration key(s) 'bogus' under 'data'"),
        ({"bogus": 1}, "'bogus' at the top level"),
        ({"capture": {"rope": "mid"}}, "'capture.rope': 'mid' is not one of"),
        ({"data": {"include_sources": ["RedPajamaFoo"]}}, "'data.include_sources[0]'"),
        ({"model": {"dtype": "int8"}}, "'model.dtype'"),
        (
            {"intervention": {"heads": [{"layer": -1, "head": 0, "role": "target"}]}},
            "'intervention.heads[0].layer'",
        ),
        (
            {"intervention": {"heads": [{"layer": 1, "head": 0, "role": "boss"}]}},
            "'intervention.heads[0].role'",
        ),
        ({"device": "tpu"}, "'device'"),
        ({"atlas": {"scales": [1.0]}}, "'atlas.scales': [1.0] is too short"),
        (
            {
                "intervention": {
                    "heads": [
                        {"layer": 1, "head": 0, "role": "target"},
                        {"layer": 1, "head": 1, "role": "target"},
                    ]
                }
            },
            "needs exactly one head with role 'target', found 2",
        ),
        (
            {"intervention": {"heads": [{"layer": 1, "head": 0, "role": "target"}]}},
            "needs exactly one head with role 'control', found 0",
        ),
        ({"intervention": {"heads": []}}, "role 'target', found 0"),
        (
            {
                "intervention": {
                    "heads": [
                        {"layer": 1, "head": 0, "role": "target"},
                        {"layer": 1, "head": 0, "role": "control"},
                    ]
                }
            },
            "'intervention.heads[1]': L1_H0 is listed twice",
        ),
        (
            {
                "intervention": {
                    "heads": [
                        {"layer": 1, "head": 0, "role": "target", "scales": [0.8, 1.2]},
                        {"layer": 1, "head": 1, "role": "control"},
                    ]
                }
            },
            "'intervention.heads[0]': L1_H0's scales [0.8, 1.2] share none with the atlas'",
        ),
    ],
)
def test_bad_values_name_the_key(overlay, message):
    with pytest.raises(spectra_config.ConfigError) as error:
        spectra_config.validate(overlay)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"model": {"device_map": "everywhere"}}, "'model.device_map': 'everywhere' is not one of"),
        ({"model": {"device_map": {"model.layers.0": "gpu"}}}, "'model.device_map.model.layers.0'"),
        ({"model": {"device_map": {"lm_head": -1}}}, "'model.device_map.lm_head'"),
        ({"model": {"device_map": {}}}, "'model.device_map': {} should be non-empty"),
        ({"model": {"gpus": 0}}, "'model.gpus': 0 is less than the minimum of 1"),
        ({"model": {"gpus": 2}}, "'model.gpus': 2 GPUs per job need model.device_map"),
        (
            {"model": {"device_map": "auto", "max_memory_per_gpu": "60 gigs"}},
            "'model.max_memory_per_gpu': '60 gigs' does not match",
        ),
        ({"model": {"max_memory_per_gpu": "60GiB"}}, "shapes a model.device_map strategy"),
        (
            {"model": {"device_map": {"": 0}, "max_memory_per_gpu": "60GiB"}},
            "an explicit mapping already says where each module goes",
        ),
        (
            {"device": "cpu", "model": {"device_map": "auto"}},
            "auto spreads the model over GPUs, but device is cpu",
        ),
        (
            {"device": "cpu", "model": {"device_map": {"model": 0, "lm_head": "cpu"}}},
            "puts modules on GPU 0, but device is cpu",
        ),
        (
            {"model": {"device_map": {"model.layers.0": 0, "model.layers.1": 2}, "gpus": 2}},
            "puts modules on GPU 2, but each job holds model.gpus: 2 (GPUs 0-1)",
        ),
    ],
)
def test_bad_placements_name_the_key(overlay, message):
    with pytest.raises(spectra_config.ConfigError) as error:
        spectra_config.validate(overlay)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "model",
    [
        {"device_map": "auto", "gpus": 4, "max_memory_per_gpu": "70GiB"},
        {"device_map": "balanced"},  # one GPU: fine (what does not fit goes to CPU memory)
        {"device_map": {"model.embed_tokens": 0, "model.layers": 1, "lm_head": "cpu"}, "gpus": 2},
    ],
)
def test_placements_that_fit_together_are_valid(model):
    config = spectra_config.validate({"model": model})
    assert config["model"]["device_map"] == model["device_map"]


def test_a_cpu_run_takes_a_mapping_to_cpu_and_disk():
    """What the tests use to split a model on a machine without GPUs."""
    mapping = {"model.layers.0": "cpu", "model.layers.1": "disk"}
    config = spectra_config.validate({"device": "cpu", "model": {"device_map": mapping}})
    assert "spread over 1 GPU(s) per job" in spectra_config.describe(config)


def test_heads_are_free_when_selected_automatically():
    chosen = spectra_config.validate({"intervention": {"select": "auto", "heads": []}})
    assert chosen["intervention"]["heads"] == []


def test_overlay_merges_mappings_and_replaces_lists(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump({"data": {"split": "validation", "include_sources": ["RedPajamaC4"]}})
    )
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"data": {"include_sources": ["RedPajamaWikipedia"]}}))
    config = spectra_config.load([base, mine])
    assert config["data"]["split"] == "validation"
    assert config["data"]["include_sources"] == ["RedPajamaWikipedia"]


def test_config_show_prints_decisions_and_formulas(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text(
        yaml.safe_dump({"capture": {"rope": "post", "k_eff_threshold": 0.8}})
    )
    assert main(["config", "show", "--configfile", "mine.yaml"]) == 0
    out = capsys.readouterr().out
    assert "H = −Σⱼ pⱼ·ln pⱼ" in out and "≥ 0.8" in out and "post-RoPE" in out
    assert "1 BOS + 511 text tokens" in out


def test_config_show_rejects_a_bad_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("capture:\n  n_sample: 3\n")
    assert main(["config", "show", "--configfile", "mine.yaml"]) == 2
    assert "'n_sample' under 'capture'" in capsys.readouterr().err


def test_write_description_explains_and_lists_every_value(tmp_path):
    config = spectra_config.load([ROOT / "config.yaml"])
    spectra_config.write_description(config, tmp_path / "configuration.txt")
    text = (tmp_path / "configuration.txt").read_text()
    explained, _, listed = text.partition("Every value (validated, defaults filled in)")
    assert "pre-RoPE" in explained and listed
    assert yaml.safe_load(listed) == config  # every value, as the jobs got it


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["capture", "--n-samples", "0"], "n_samples must be at least 1, not 0"),
        (["capture", "--n-samples", "4", "--batch-size", "0"], "at least 1, not 0"),
        (["capture", "--n-samples", "4", "--k-eff-threshold", "5"], "at most 1, not 5"),
        (["capture", "--n-samples", "4", "--k-eff-threshold", "0"], "above 0, not 0"),
        (["capture", "--n-samples", "x"], "'x' is not an integer"),
        (["intervene", "--layer", "0", "--head", "-1"], "--head must be at least 0"),
        (["intervene", "--layer", "0", "--head", "1", "--scales", "1", "-1"], "above 0, not -1"),
    ],
)
def test_command_options_are_held_to_the_schema(arguments, message, capsys):
    """The commands' options take their defaults and bounds from the configuration schema."""
    command, *rest = arguments
    with pytest.raises(SystemExit) as stop:
        main([command, "--model", "m", "--shards", "s", "--out", "o", *rest])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_command_errors_are_one_line(tmp_path, capsys):
    scales = ["--layer", "0", "--head", "1", "--scales", "1.0"]
    common = ["--shards", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(["intervene", "--model", "m", *common, *scales]) == 2
    assert "--scales needs at least two values" in capsys.readouterr().err
    assert main(["capture", "--model", "/no/such/model", *common, "--n-samples", "1"]) == 2
    assert "no manifest.json for shards" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    assert main(["config", "show", "--configfile", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def integer_keys(schema, prefix=""):
    """Every key the schema types as an integer (list items as [0])."""
    for key, sub in schema.get("properties", {}).items():
        yield from integer_keys(sub, f"{prefix}{key}.")
        if "integer" in (
            [sub.get("type")] if isinstance(sub.get("type"), str) else sub.get("type") or []
        ):
            yield f"{prefix}{key}"
    if "items" in schema:
        yield from integer_keys(schema["items"], f"{prefix.rstrip('.')}[0].")


def test_whole_number_floats_are_not_integers():
    """JSON Schema counts 8.0 as an integer; range(8.0) raises and a layer 2.0 makes the path
    L2.0_H0, so every integer key refuses a float with a word, before any job."""
    keys = list(integer_keys(spectra_config.load_schema()))
    assert {"capture.n_samples", "intervention.heads[0].layer", "data.max_sequences"} <= set(keys)
    base = spectra_config.load(["config.yaml"])
    for key in keys:
        overlay: dict = {}
        node, parts = overlay, key.replace("[0]", "").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if "[0]" in key:  # a key of the heads' entries: one entry with it as a float
            head = {**base["intervention"]["heads"][0], parts[-1]: 2.0}
            overlay = {"intervention": {"heads": [head, base["intervention"]["heads"][1]]}}
        else:
            node[parts[-1]] = 8.0
        with pytest.raises(spectra_config.ConfigError) as error:
            spectra_config.validate(spectra_config.deep_merge(base, overlay))
        assert "is not an integer (write " in str(error.value), key
    fine = spectra_config.deep_merge(base, {"capture": {"k_eff_threshold": 1}})
    spectra_config.validate(fine)  # a number may be written as an integer
