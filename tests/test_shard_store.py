"""Where the shards live: one folder per set of settings they are made from, so that a changed
setting writes beside finished shards, never over them; the run's results/<run>/data/ links to
the shards in use. And which names are hub ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spectra_attn import config as spectra_config
from spectra_attn.data.corpus import CorpusError, is_hub_id
from spectra_attn.data.shards import (
    preprocess,
    publish,
    read_manifest,
    shard_settings,
    store_dir,
    store_key,
    validate_shards,
)

from .conftest import make_documents, write_jsonl_corpus

INCLUDED = ["RedPajamaC4", "RedPajamaWikipedia"]


@pytest.fixture
def demo_config():
    return spectra_config.load(["config.yaml"])


@pytest.mark.parametrize(
    "overlay",
    [
        {"data": {"context_length": 256}},
        {"data": {"include_sources": ["RedPajamaC4"]}},
        {"data": {"max_sequences": 100}},
        {"data": {"split": "validation"}},
        {"data": {"on_bad_record": "fail"}},
        {"data": {"prepend_bos": False}},
        {"data": {"sequences_per_shard": 10}},
        {"data": {"source": "elsewhere/corpus"}},
        {"model": {"revision": "v2"}},
        {"model": {"trust_remote_code": True}},
        {"seed": 1},  # the demo corpus and model are made from it
        {"demo": {"train_steps": 100}},  # the demo model's tokenizer is trained with them
    ],
    ids=lambda overlay: json.dumps(overlay, sort_keys=True),
)
def test_every_setting_the_shards_are_made_from_moves_them(demo_config, overlay):
    changed = spectra_config.validate(spectra_config.deep_merge(demo_config, overlay))
    assert store_key(changed) != store_key(demo_config)


@pytest.mark.parametrize(
    "overlay",
    [
        {"data": {"tokenize_batch_size": 7}},  # how the work is cut, not what it makes
        {"capture": {"n_samples": 8}},
        {"intervention": {"scales": [0.5, 1.0]}},
        {"device": "cpu"},
        {"model": {"dtype": "bfloat16"}},
        {"run_name": "other"},  # runs with the same settings share the shards
    ],
    ids=lambda overlay: next(iter(overlay)),
)
def test_what_the_shards_are_not_made_from_keeps_them(demo_config, overlay):
    changed = spectra_config.validate(spectra_config.deep_merge(demo_config, overlay))
    assert store_dir(changed) == store_dir(demo_config)


def test_the_key_covers_every_param_make_shards_records(demo_config):
    """rules/data.smk gives make_shards shard_settings() and tokenizer_settings() as params: every
    key of them is part of the digest (a new data key is covered without being listed)."""

    def altered(value):
        if isinstance(value, bool):
            return not value
        return value + (1 if isinstance(value, int | float) else value[:1])

    for key, value in shard_settings(demo_config).items():
        changed = json.loads(json.dumps(demo_config))
        changed["data"][key] = altered(value)
        assert store_key(changed) != store_key(demo_config), key


def make(tmp_path, tokenizer_dir, out, **options):
    corpus = write_jsonl_corpus(tmp_path / "raw", make_documents())
    return preprocess(
        corpus,
        "test",
        str(tokenizer_dir),
        out / "shards",
        out / "manifest.json",
        include_sources=INCLUDED,
        context_length=64,
        sequences_per_shard=7,
        max_sequences=10_000,
        batch_size=5,
        **options,
    )


def test_too_few_sequences_for_the_sample_counts_is_refused_before_the_shards_land(
    tmp_path, tokenizer_dir
):
    made = make(tmp_path, tokenizer_dir, tmp_path / "enough")
    yielded = made["sequences"]
    assert make(tmp_path / "again", tokenizer_dir, tmp_path / "exact", min_sequences=yielded)
    with pytest.raises(CorpusError) as error:
        make(tmp_path / "more", tokenizer_dir, tmp_path / "short", min_sequences=yielded + 1)
    assert f"the corpus yields {yielded} sequences of 64 tokens" in str(error.value)
    assert f"fewer than the {yielded + 1} the configuration asks for" in str(error.value)
    assert "capture.n_samples" in str(error.value)
    assert list((tmp_path / "short").iterdir()) == []  # nothing half-made is left


def test_published_shards_are_links_to_the_store(tmp_path, tokenizer_dir):
    store = tmp_path / "resources" / "shards" / "abc"
    make(tmp_path, tokenizer_dir, store)
    run = tmp_path / "results" / "run" / "data"
    old = run / "shards"
    old.mkdir(parents=True)
    (old / "shard_0099.npz").write_bytes(b"stale")  # replaced as a whole
    published = publish(store / "manifest.json", run / "shards", run / "manifest.json")
    assert published["made_in"] == str(store)
    assert sorted(p.name for p in (run / "shards").iterdir()) == sorted(
        entry["file"] for entry in published["shards"]
    )
    for entry in published["shards"]:
        linked, original = run / "shards" / entry["file"], store / "shards" / entry["file"]
        assert os.path.samefile(linked, original)  # a hard link: no second copy
    assert [p.name for p in validate_shards(run / "manifest.json")] == [
        p.name for p in validate_shards(store / "manifest.json")
    ]
    stored = read_manifest(store / "manifest.json")
    assert {k: v for k, v in published.items() if k != "made_in"} == stored


def test_publishing_copies_where_links_cannot_be_made(tmp_path, tokenizer_dir, monkeypatch):
    store = tmp_path / "store"
    make(tmp_path, tokenizer_dir, store)

    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "out"
    publish(store / "manifest.json", out / "shards", out / "manifest.json")
    for path in (tmp_path / "out" / "shards").iterdir():
        assert not os.path.samefile(path, store / "shards" / path.name)
        assert path.read_bytes() == (store / "shards" / path.name).read_bytes()


def test_hub_ids_and_local_paths(tmp_path, monkeypatch):
    """The rule users read in the docs: a path that exists, is written as a path (./ ../ / ~),
    or whose first folder exists here is local; any other org/name is a hub id."""
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("meta-llama/Meta-Llama-3-8B")
    assert is_hub_id("models/llama3")  # no models/ folder here: read as a hub id, then checked
    for local in ("./models/llama3", "../models/llama3", "/models/llama3", "~/llama3"):
        assert not is_hub_id(local), local
    (tmp_path / "models").mkdir()
    assert not is_hub_id("models/llama3")  # beside a models/ folder: a missing local folder
    assert not is_hub_id("resources/demo/model")  # three parts: never a hub id
    Path("org/name").mkdir(parents=True)
    assert not is_hub_id("org/name")
