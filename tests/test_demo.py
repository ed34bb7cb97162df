"""The offline demo: the standard-library corpus in SlimPajama-627B layout, the Llama-3-style
tokenizer, and the small Llama trained on it (with a tiny configuration, to stay fast)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from spectra_attn.data.corpus import SOURCE_NAMES, find_split_files, iter_documents
from spectra_attn.demo.corpus import write_demo_corpus
from spectra_attn.demo.model import build_demo_model, train_tokenizer

SPLITS = ("train", "validation", "test")
TINY_DEMO = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 512,
    "max_position_embeddings": 128,
    "train_steps": 30,
    "train_batch_size": 8,
    "train_seq_len": 64,
    "learning_rate": 0.01,
}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "slimpajama"
    return out, write_demo_corpus(out, seed=0)


@pytest.fixture(scope="module")
def models(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """Two builds with the same seed, in different folders."""
    root = tmp_path_factory.mktemp("models")
    for name in ("a", "b"):
        build_demo_model(corpus[0], root / name / "model", TINY_DEMO, seed=0, threads=1)
    return root / "a" / "model", root / "b" / "model"


def test_corpus_layout_and_sources(corpus):
    root, summary = corpus
    for split in SPLITS:
        files = find_split_files(root, split)
        assert files, split
        for path in files:
            assert path.parent == root / split / "chunk1"
            assert path.name.startswith(f"example_{split}_") and path.name.endswith(".jsonl.zst")
        counts = Counter(doc.source for doc in iter_documents(files))
        assert set(counts) == set(SOURCE_NAMES), split
        assert all(doc.text.strip() for doc in iter_documents(files))
        assert sum(counts.values()) == summary["splits"][split]["docs"]
        for source in SOURCE_NAMES:
            assert counts[source] == summary["splits"][split]["sources"][source]["docs"]
    docs = {split: summary["splits"][split]["docs"] for split in SPLITS}
    assert docs["train"] > docs["validation"] and docs["train"] > docs["test"]
    assert 0.45 < docs["train"] / sum(docs.values()) < 0.75
    assert json.loads((root / "corpus_summary.json").read_text()) == summary


def test_corpus_flavours(corpus):
    """GitHub documents are Python source; StackExchange ones are Q/A threads."""
    root, _ = corpus
    by_source: dict[str, list[str]] = {}
    for doc in iter_documents(find_split_files(root, "validation")):
        by_source.setdefault(doc.source, []).append(doc.text)
    assert all(t.startswith("Q: ") and "\n\nA: " in t for t in by_source["RedPajamaStackExchange"])
    assert any("def " in t or "import " in t for t in by_source["RedPajamaGithub"])
    assert all(t.startswith("On the design of ") for t in by_source["RedPajamaArXiv"])


def test_corpus_is_byte_identical_across_writes(corpus, tmp_path, monkeypatch):
    root, summary = corpus
    # the process's state (here a logging setup's excepthook) must not change the text
    monkeypatch.setattr(sys, "excepthook", lambda *args: None)
    again = write_demo_corpus(tmp_path / "slimpajama", seed=0)
    assert again == summary
    assert _files(tmp_path / "slimpajama") == _files(root)
    assert not [p for p in (tmp_path / "slimpajama").rglob("*.tmp")]


def test_tokenizer_adds_bos_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    texts = [
        "def parse(text):\n    return text.split()\n",
        "Attention heads choose where to look; values carry what they find.",
        "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 \u00fcber \u65e5\u672c\u8a9e \U0001f600",
    ] * 20
    tokenizer = train_tokenizer(texts, vocab_size=400)
    assert train_tokenizer(texts, vocab_size=400).backend_tokenizer.to_str() == (
        tokenizer.backend_tokenizer.to_str()
    )
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for tok in (tokenizer, loaded):
        bos = tok.bos_token_id
        assert tok.convert_ids_to_tokens([bos, tok.eos_token_id, tok.pad_token_id]) == [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|pad|>",
        ]
        text = "  leading spaces,\ttabs\nand new lines; caf\u00e9 \U0001f600 unseen-words-xyzzy  "
        with_bos = tok(text)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        assert with_bos[0] == bos and with_bos[1:] == plain
        assert bos not in plain
        assert tok.decode(plain) == text
        assert tok.decode(with_bos, skip_special_tokens=True) == text


def test_model_loads_is_gqa_and_deterministic(models):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    first, second = models
    model = AutoModelForCausalLM.from_pretrained(first)
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert isinstance(model, LlamaForCausalLM)
    config = model.config
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.num_attention_heads == TINY_DEMO["num_attention_heads"]
    assert config.num_key_value_heads == TINY_DEMO["num_key_value_heads"]
    assert config.vocab_size == len(tokenizer) <= TINY_DEMO["vocab_size"]
    assert not config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("import os\nprint(os.getcwd())", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], config.vocab_size)
    assert torch.isfinite(logits).all()

    weights_a = load_file(first / "model.safetensors")
    weights_b = load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    # nothing half-written beside the model
    assert sorted(p.name for p in first.parent.iterdir()) == ["model"]


def test_training_log(models):
    log = json.loads((models[0] / "train_log.json").read_text())
    assert log["seed"] == 0 and log["demo"] == TINY_DEMO
    losses = [entry["loss"] for entry in log["loss"]]
    assert [entry["step"] for entry in log["loss"]] == [1, 10, 20, 30]
    assert losses[-1] < losses[0]
    # on fixed held-out sequences (single-batch training losses are noisy)
    assert log["validation_loss"]["after"] < log["validation_loss"]["before"] - 0.5
    entropy = log["head_entropy"]["after"]
    assert len(entropy) == TINY_DEMO["num_hidden_layers"]
    assert all(len(layer) == TINY_DEMO["num_attention_heads"] for layer in entropy)
    assert log["timing_s"]["training"] > 0


def test_failed_build_leaves_nothing(corpus, tmp_path, monkeypatch):
    import spectra_attn.demo.model as demo_model

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(demo_model, "write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        build_demo_model(corpus[0], tmp_path / "model", {**TINY_DEMO, "train_steps": 1}, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_bad_head_counts_are_rejected(corpus, tmp_path):
    bad = {**TINY_DEMO, "num_attention_heads": 4, "num_key_value_heads": 3}
    with pytest.raises(ValueError, match="num_key_value_heads"):
        build_demo_model(corpus[0], tmp_path / "model", bad, seed=0)
    assert not (tmp_path / "model").exists()
