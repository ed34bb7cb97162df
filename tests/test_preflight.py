"""What a configuration is checked against before any job runs (files only, no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spectra_attn import config as spectra_config
from spectra_attn.preflight import problems

LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "max_position_embeddings": 1024,
}
HEADS = [{"layer": 1, "head": 0, "role": "target"}, {"layer": 1, "head": 5, "role": "control"}]


def model_folder(tmp_path, shape=LLAMA, weights="model.safetensors"):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(shape))
    if weights:
        (folder / weights).write_bytes(b"\0")
    return folder


def corpus_folder(tmp_path, split="test"):
    folder = tmp_path / "corpus"
    (folder / split / "chunk1").mkdir(parents=True)
    (folder / split / "chunk1" / "example_0.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    return folder


def configured(tmp_path, **sections):
    base = {
        "model": {"name_or_path": str(model_folder(tmp_path))},
        "data": {"source": str(corpus_folder(tmp_path)), "split": "test"},
        "intervention": {"heads": HEADS, "n_samples": 8},
        "capture": {"n_samples": 16},
    }
    return spectra_config.validate(spectra_config.deep_merge(base, sections))


def test_a_sound_configuration_has_no_problem(tmp_path):
    assert problems(configured(tmp_path)) == []
    assert problems(spectra_config.load(["config.yaml"])) == []  # the demo, before it is built


def test_each_problem_names_its_key(tmp_path):
    found = problems(
        configured(
            tmp_path,
            data={"context_length": 2048, "max_sequences": 10, "split": "tset"},
            intervention={
                "heads": [
                    {"layer": 4, "head": 0, "role": "target", "n_samples": 12},
                    {"layer": 1, "head": 8, "role": "control"},
                ]
            },
        )
    )
    text = "\n".join(found)
    assert "'capture.n_samples': 16 sequences, but data.max_sequences=10" in text
    assert "'intervention.heads[0].n_samples': 12 sequences" in text
    assert "'intervention.n_samples'" not in text  # 8 ≤ 10
    assert "'data.context_length': 2048 exceeds the model's maximum context" in text
    assert "'intervention.heads[0].layer': 4 is out of range; the model has layers 0-3" in text
    assert "'intervention.heads[1].head': 8 is out of range" in text
    assert "no files of split 'tset'" in text
    assert len(found) == 6


def test_model_folders(tmp_path):
    pickled = configured(tmp_path)
    folder = tmp_path / "model"
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    assert any("no safetensors weights" in p for p in problems(pickled))
    bloom = {"model_type": "bloom", "architectures": ["BloomForCausalLM"], "n_layer": 2}
    (folder / "config.json").write_text(json.dumps(bloom))
    assert any(
        "is a BloomForCausalLM (model_type 'bloom'): BLOOM's attention does not call" in p
        for p in problems(pickled)
    )
    typo = spectra_config.deep_merge(pickled, {"model": {"name_or_path": "resources/demo/modle"}})
    assert problems(typo) == [
        "config key 'model.name_or_path': 'resources/demo/modle' is not a folder, and not a hub "
        "id (org/name) either"
    ]
    hub = spectra_config.deep_merge(pickled, {"model": {"name_or_path": "meta-llama/Llama-3-8B"}})
    assert problems(hub) == []  # looked up by its job


def test_demo_settings_are_checked_before_the_demo_model_is_built():
    demo = spectra_config.load(["config.yaml"])
    bad = spectra_config.deep_merge(demo, {"demo": {"num_key_value_heads": 3}})
    assert problems(bad) == [
        "config key 'demo': demo.num_attention_heads=8 must be a multiple of "
        "demo.num_key_value_heads=3"
    ]
    long = spectra_config.deep_merge(demo, {"data": {"context_length": 4096}})
    assert any("max_position_embeddings=2048" in p for p in problems(long))


@pytest.mark.parametrize("select", ["auto"])
def test_automatic_selection_skips_the_head_checks(tmp_path, select):
    chosen = configured(tmp_path, intervention={"select": select, "heads": []})
    assert problems(chosen) == []


@pytest.mark.parametrize(
    "shape, pre_rope",
    [
        (
            {"model_type": "gpt2", "n_layer": 1, "n_head": 4, "n_positions": 1024},
            "same as post-RoPE: gpt2 has no rotary embedding",
        ),
        (
            {
                "model_type": "gemma3",
                "text_config": {
                    "model_type": "gemma3_text",
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                    "max_position_embeddings": 1024,
                },
            },
            "after per-head RMSNorm q_norm/k_norm",
        ),
        (
            {"model_type": "falcon", "alibi": True, "n_layer": 1, "n_head": 4},
            "same as post-RoPE: falcon has no rotary embedding",
        ),
    ],
)
def test_other_architectures_are_read_from_their_own_keys(tmp_path, shape, pre_rope):
    """Layers and heads from GPT-2's n_layer/n_head and a multimodal Gemma-3's text_config; what
    pre-RoPE means for the model in `spectra config show`."""
    config = configured(tmp_path)
    (tmp_path / "model" / "config.json").write_text(json.dumps(shape))
    found = "\n".join(problems(config))
    assert "'intervention.heads[0].layer': 1 is out of range; the model has layers 0-0" in found
    assert f"architecture          {shape['model_type']}; pre-RoPE means: " in (
        spectra_config.describe(config)
    )
    assert pre_rope in spectra_config.describe(config)


@pytest.mark.parametrize("overlay", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_overlays_pass_the_checks_that_need_no_download(overlay):
    """Each example configuration (a real model of each family, by hub id) validates, has no
    problem found from files, is shown by `spectra config show`, names a supported model_type and
    heads within that model's shape (as its header states it)."""
    import re

    from spectra_attn.architectures import ARCHITECTURES

    config = spectra_config.load(["config.yaml", str(overlay)])
    assert problems(config) == []
    assert config["model"]["name_or_path"] in spectra_config.describe(config)
    model_type, layers, heads = re.search(
        r"# model_type (\w+): (\d+) layers, (\d+) heads", overlay.read_text()
    ).groups()
    assert model_type in ARCHITECTURES
    for entry in config["intervention"]["heads"]:
        assert entry["layer"] < int(layers) and entry["head"] < int(heads)
