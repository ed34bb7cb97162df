"""What a configuration is checked against before any job runs (files only, no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spectra_attn import config as spectra_config
from spectra_attn.run.preflight import problems

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
        "config key 'model.name_or_path': 'resources/demo/modle' is not a folder (nothing at "
        f"{Path('resources/demo/modle').absolute()}), and not a hub id (org/name) either"
    ]
    hub = spectra_config.deep_merge(pickled, {"model": {"name_or_path": "meta-llama/Llama-3-8B"}})
    asked = []

    def usable(*question):
        asked.append(question)

    assert problems(hub, hub_lookup=usable) == []  # its job loads it
    assert asked == [("meta-llama/Llama-3-8B", "model", None, "model.name_or_path")]


def test_hub_ids_that_cannot_be_used_are_refused_naming_the_key(tmp_path, monkeypatch):
    """A missing relative folder that looks like org/name (models/llama3, data/slimpajama) is
    read as a hub id and asked of the hub: one short request, refused here at once (no network)
    or in HF_HUB_OFFLINE mode without a request, and the message names the key and says how to
    write a local path."""
    monkeypatch.chdir(tmp_path)
    config = configured(tmp_path)
    model = spectra_config.deep_merge(config, {"model": {"name_or_path": "models/llama3"}})
    data = spectra_config.deep_merge(config, {"data": {"source": "data/slimpajama"}})
    for overlay, key, kind in (
        (model, "model.name_or_path", "model"),
        (data, "data.source", "dataset"),
    ):
        (found,) = problems(overlay)
        assert found.startswith(
            f"config key '{key}': '{overlay_value(overlay, key)}' is not a path"
        )
        assert f"read as a Hugging Face hub {kind} id" in found
        assert "write its path starting with ./ or /" in found
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (found,) = problems(model)
    assert "not in the local hub cache, and HF_HUB_OFFLINE is set" in found
    # Written as a path, or beside an existing first folder, it is a missing local folder.
    (tmp_path / "models").mkdir()
    (found,) = problems(model)
    assert "is not a folder (nothing at" in found
    local = spectra_config.deep_merge(config, {"model": {"name_or_path": "./elsewhere/llama3"}})
    (found,) = problems(local)
    assert "is not a folder (nothing at" in found


def overlay_value(config, key):
    section, name = key.split(".")
    return config[section][name]


def test_hub_lookup_is_one_short_request(monkeypatch):
    """The hub is asked once with a timeout (no retries), and its answers become messages."""
    from huggingface_hub.errors import RepositoryNotFoundError

    from spectra_attn.run import hub

    calls = []

    class Api:
        def repo_info(self, repo_id, **options):
            calls.append((repo_id, options))
            # built without its HTTP response, which the message does not use
            raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)

    monkeypatch.setattr("huggingface_hub.HfApi", Api)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    found = hub.repo_problem("org/missing", "model", "main", "model.name_or_path")
    assert "the hub has no model of that name" in found, found
    assert calls == [
        ("org/missing", {"repo_type": "model", "revision": "main", "timeout": hub.TIMEOUT_S})
    ]
    Api.repo_info = lambda self, repo_id, **options: None
    assert hub.repo_problem("org/present", "model", None, "model.name_or_path") is None


def test_sample_counts_are_checked_against_what_the_shards_hold(tmp_path, monkeypatch):
    """data.max_sequences is a maximum: a small corpus yields fewer. Once the shards of these data
    settings exist, every sample count is checked against their manifest, before any job."""
    from spectra_attn.data.shards import store_dir

    monkeypatch.chdir(tmp_path)
    config = configured(tmp_path)
    manifest = store_dir(config) / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"sequences": 16}))
    assert problems(config) == []  # capture.n_samples: 16
    more = spectra_config.deep_merge(config, {"capture": {"n_samples": 17}})
    assert problems(more) == [
        f"config key 'capture.n_samples': 17 sequences, but the shards of these data settings "
        f"({manifest}) hold only 16: the corpus yields no more; lower capture.n_samples to at "
        "most 16, or give data.source more text"
    ]
    # Other data settings make other shards: their count is not known before they are made.
    other = spectra_config.deep_merge(more, {"data": {"prepend_bos": False}})
    assert store_dir(other) != store_dir(more)
    assert problems(other) == []


def test_demo_corpus_split_is_checked_before_it_is_built():
    demo = spectra_config.load(["config.yaml"])
    typo = spectra_config.deep_merge(demo, {"data": {"split": "tset"}})
    assert problems(typo) == [
        "config key 'data.split': the demo corpus has no split 'tset'; it has train, "
        "validation, test"
    ]


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


# The hub models' overlays (configs/demo-two-models.yaml, of several demo models, has tests of its
# own in tests/test_models.py).
HUB_OVERLAYS = sorted(p for p in Path("configs").glob("*.yaml") if not p.stem.startswith("demo-"))


@pytest.mark.parametrize("overlay", HUB_OVERLAYS, ids=lambda p: p.stem)
def test_example_overlays_pass_the_checks_that_need_no_download(overlay):
    """Each example configuration (a real model of each family, by hub id) validates, has no
    problem found from files, is shown by `spectra config show`, names a supported model_type and
    heads within that model's shape (as its header states it)."""
    import re

    from spectra_attn.model.architectures import ARCHITECTURES

    config = spectra_config.load(["config.yaml", str(overlay)])
    asked = []
    assert problems(config, hub_lookup=lambda *question: asked.append(question)) == []
    assert ("model", "model.name_or_path") in {(q[1], q[3]) for q in asked}  # (no network here)
    assert config["model"]["name_or_path"] in spectra_config.describe(config)
    model_type, layers, heads = re.search(
        r"# model_type (\w+): (\d+) layers, (\d+) heads", overlay.read_text()
    ).groups()
    assert model_type in ARCHITECTURES
    for entry in config["intervention"]["heads"]:
        assert entry["layer"] < int(layers) and entry["head"] < int(heads)
