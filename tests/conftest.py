"""Shared fixtures: small raw corpora in each SlimPajama layout and a small tokenizer folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

SOURCES = (
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaWikipedia",
    "RedPajamaStackExchange",
    "RedPajamaGithub",
    "RedPajamaArXiv",
    "RedPajamaBook",
)
INCLUDED = SOURCES[:4]
WORDS = (
    "attention heads read keys while queries choose where to look and values carry what they "
    "find across the layers of a decoder model trained on text from the web"
).split()


def marker(source: str, index: int) -> str:
    """A word that appears only in document ``index`` of ``source``."""
    return f"MARK{source[10:].upper()}X{index}Y"


def make_documents(n_per_source: int = 6, words: int = 120) -> list[dict]:
    """Records interleaving all seven sources, each document carrying its own marker."""
    records = []
    for index in range(n_per_source):
        for position, source in enumerate(SOURCES):
            body = " ".join(WORDS[(index * 7 + position + k) % len(WORDS)] for k in range(words))
            text = f"{marker(source, index)} {body} {source.lower()} ends here."
            records.append({"text": text, "meta": {"redpajama_set_name": source}})
    return records


def write_jsonl_corpus(
    root: Path, records: list[dict], split: str = "test", compress: bool = True, per_file: int = 3
) -> Path:
    """SlimPajama-627B layout: <root>/<split>/chunkN/example_<split>_K.jsonl(.zst), six files a
    chunk, so that reading in record order needs a natural sort (example_9 before example_10)."""
    for start in range(0, len(records), per_file):
        index = start // per_file
        chunk = root / split / f"chunk{index // 6 + 1}"
        chunk.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in records[start : start + per_file]).encode()
        name = f"example_{split}_{index}.jsonl"
        if compress:
            (chunk / f"{name}.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
        else:
            (chunk / name).write_bytes(lines)
    return root


def write_parquet_corpus(root: Path, records: list[dict], split: str = "test") -> Path:
    """SlimPajama-6B layout: <root>/data/<split>-00000-of-00001.parquet, meta a struct column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "text": [r["text"] for r in records],
            "meta": pa.array(
                [r["meta"] for r in records],
                type=pa.struct([("redpajama_set_name", pa.string())]),
            ),
            "__index_level_0__": list(range(len(records))),
        }
    )
    pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet", row_group_size=7)
    return root


def jsonl_file_order(root: Path, split: str = "test") -> list[dict]:
    """The records of a jsonl corpus in the order the reader must use (natural file order),
    read independently of the package."""
    import re

    def key(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.as_posix())]

    records = []
    for path in sorted((root / split).rglob("*.jsonl*"), key=key):
        data = path.read_bytes()
        if path.name.endswith(".zst"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        records += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return records


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer with Llama-3's special tokens (BOS added by default) and a
    LlamaConfig whose max_position_embeddings is 256, saved like a model folder."""
    from transformers import LlamaConfig

    from spectra_attn.demo.model import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [r["text"] for r in make_documents(n_per_source=3)] * 2
    tokenizer = train_tokenizer(texts, vocab_size=400)
    tokenizer.save_pretrained(out)
    LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).save_pretrained(out)
    return out
