"""Raw documents → tokens → fixed-length chunks → ``shard_NNNN.npz`` files and a JSON manifest.

Chunking: kept documents are tokenized without special tokens, each followed by EOS, and the
stream is cut into non-overlapping chunks of ``context_length`` tokens. With ``prepend_bos`` each
chunk is ``[BOS] + (context_length - 1)`` text tokens, so BOS sits at position 0 and nowhere else;
the remainder after the last full chunk is dropped. Shards hold ``input_ids`` (int32,
``[n, context_length]``) and are validated on write and on every read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectra_attn import __version__
from spectra_attn.config import EXECUTION_KEYS, uses_demo_corpus, uses_demo_model
from spectra_attn.data.corpus import (
    DEFAULT_MAX_BAD_RECORD_FRACTION,
    CorpusError,
    Document,
    ReadStats,
    check_file_headers,
    find_split_files,
    iter_documents,
)
from spectra_attn.io import atomic_dir, sha256_file, write_json, write_npz

logger = logging.getLogger(__name__)

SHARD_KEY = "input_ids"
SHARD_DTYPE = np.int32
# Where make_shards writes: one folder per set of settings that define the shards, so that a
# changed setting writes beside the finished shards instead of over them (Snakemake removes a
# job's outputs before it runs it: a bad value caught inside the job would cost the shards).
STORE_ROOT = "resources/shards"


class ShardError(ValueError):
    """A shard file is unreadable or violates the shard contract; the message names file and row."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What identifies the tokenizer, and what shard validation needs from it."""

    name_or_path: str
    class_name: str
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int | None
    model_max_length: int | None  # the model's max_position_embeddings, when a model config exists
    fingerprint: str  # sha256 of the serialized tokenizer

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShardSpec:
    """The contract every shard of one preprocessing run satisfies."""

    context_length: int
    vocab_size: int
    bos_token_id: int | None
    pad_token_id: int | None
    prepend_bos: bool


def shard_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The data keys that define the shards. data.tokenize_batch_size only sets how many
    documents are tokenized at once (an execution key), so it is left out: changing it remakes
    nothing."""
    execution = {key for section, key in EXECUTION_KEYS if section == "data"}
    return {k: v for k, v in config["data"].items() if k not in execution}


def tokenizer_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the tokenizer that makes the shards."""
    keys = ("name_or_path", "revision", "trust_remote_code")
    return {key: config["model"][key] for key in keys}


def store_key(config: Mapping[str, Any]) -> str:
    """A digest of everything the shards are made from: the data keys, the tokenizer's identity,
    and, where the workflow builds them, the demo corpus's and demo model's settings (their
    folders keep one name whatever they hold)."""
    made_from: dict[str, Any] = {
        "data": shard_settings(config),
        "tokenizer": tokenizer_settings(config),
    }
    if uses_demo_corpus(config) or uses_demo_model(config):
        made_from["seed"] = config["seed"]
    if uses_demo_model(config):
        made_from["demo"] = config["demo"]
    encoded = json.dumps(made_from, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def store_dir(config: Mapping[str, Any]) -> Path:
    """The folder make_shards writes the shards of ``config`` into (``shards/``, manifest.json)."""
    return Path(STORE_ROOT) / store_key(config)


# The files a Hugging Face tokenizer is loaded from (whichever of them a folder holds).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
)


def tokenizer_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the tokenizer is, by content where that can be known before any job runs, so that two
    models with the same tokenizer share their shards: for a demo model, the settings its tokenizer
    is trained from (the random seed, the corpus and demo.vocab_size, not the model's size); for a
    local folder, the sha256 of its tokenizer files and the vocabulary size of its config.json (the
    embedding bounds the valid ids); for a hub id, its name and revision. A wrong match cannot go
    unseen: every model job compares its own tokenizer's fingerprint with the one the manifest
    records (spectra_attn.model.loading.check_tokenizer)."""
    if uses_demo_model(config):
        return {"demo_tokenizer": {"seed": config["seed"], "vocab": config["demo"]["vocab_size"]}}
    folder = Path(config["model"]["name_or_path"])
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not files:
        return {"settings": tokenizer_settings(config)}
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        vocab = None
    return {"files_sha256": digest.hexdigest(), "vocab_size": vocab}


def assign_stores(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Path]:
    """run_name → the shard store the run reads. Runs that make the same shards (the same data
    settings and the same tokenizer, by :func:`tokenizer_identity`) share one store, named as
    the first of them (in the configuration's order) would name it alone (:func:`store_dir`), so
    a model that runs alone or first in a list reads the same shards. A single run: its
    :func:`store_dir`, as ever."""
    owners: dict[str, Path] = {}
    stores = {}
    for name, config in runs.items():
        made_from = {
            "data": shard_settings(config),
            "tokenizer": tokenizer_identity(config),
            "seed": config["seed"] if uses_demo_corpus(config) else None,
        }
        key = json.dumps(made_from, sort_keys=True)
        stores[name] = owners.setdefault(key, store_dir(config))
    return stores


def publish(
    manifest_path: str | Path, out_dir: str | Path, out_manifest: str | Path
) -> dict[str, Any]:
    """Make the shards a manifest lists visible at ``out_dir`` / ``out_manifest`` (the run's
    results/<run>/data/): each file a hard link to the store's (no copy, no extra space; a copy
    where links cannot be made, e.g. across file systems), the manifest a copy naming where the
    shards were made. Atomic: the old published shards stay until the new ones are complete.
    """
    manifest_path, out_dir, out_manifest = Path(manifest_path), Path(out_dir), Path(out_manifest)
    manifest = read_manifest(manifest_path)
    source_dir = manifest_path.parent / manifest.get("shards_dir", "shards")
    with atomic_dir(out_dir) as tmp:
        for entry in manifest["shards"]:
            source = (source_dir / entry["file"]).resolve()  # a cache link: its target
            try:
                os.link(source, tmp / entry["file"])
            except OSError:
                shutil.copy2(source, tmp / entry["file"])
    published = {
        **manifest,
        "shards_dir": os.path.relpath(out_dir, out_manifest.parent),
        "made_in": str(manifest_path.parent),
    }
    write_json(out_manifest, published)
    logger.info(
        "published %d shards of %s at %s", len(manifest["shards"]), manifest_path.parent, out_dir
    )
    return published


def load_tokenizer(
    name_or_path: str, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, TokenizerInfo]:
    """Load the model's tokenizer and describe it. The model's vocabulary size and maximum context
    come from its config (the embedding matrix, not the tokenizer, bounds valid ids)."""
    from transformers import (  # lazy: Snakemake's main process imports this module
        AutoConfig,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code
    )
    try:
        model_config = AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError):
        model_config = None
    vocab_size = len(tokenizer)
    model_max_length = None
    if model_config is not None:
        text_config = getattr(model_config, "text_config", None) or model_config
        vocab_size = max(vocab_size, int(getattr(text_config, "vocab_size", 0) or 0))
        model_max_length = getattr(text_config, "max_position_embeddings", None)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {name_or_path!r} has no EOS token to join documents with")
    if getattr(tokenizer, "is_fast", False):
        serialized = tokenizer.backend_tokenizer.to_str()
    else:
        serialized = repr(sorted(tokenizer.get_vocab().items()))
    info = TokenizerInfo(
        name_or_path=str(name_or_path),
        class_name=type(tokenizer).__name__,
        vocab_size=int(vocab_size),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=tokenizer.pad_token_id,
        model_max_length=int(model_max_length) if model_max_length else None,
        fingerprint=hashlib.sha256(serialized.encode()).hexdigest(),
    )
    return tokenizer, info


def make_encoder(tokenizer: Any):
    """A function texts → list of token-id lists, with no special tokens added and special-token
    strings inside the text split like ordinary text (so a document can never inject BOS/EOS)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is not None:
        backend.encode_special_tokens = True
        encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

        def encode(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in encode_batch(texts, add_special_tokens=False)]

        return encode

    def encode_slow(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    return encode_slow


def check_context_length(context_length: int, info: TokenizerInfo) -> None:
    if info.model_max_length is not None and context_length > info.model_max_length:
        raise ValueError(
            f"data.context_length={context_length} exceeds the model's maximum context "
            f"(max_position_embeddings={info.model_max_length}) of {info.name_or_path!r}"
        )


def _batched(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Chunker:
    """Cuts a stream of token arrays into fixed-length rows, carrying the remainder over."""

    def __init__(self, context_length: int, bos_token_id: int | None, prepend_bos: bool):
        if prepend_bos and bos_token_id is None:
            raise ValueError("data.prepend_bos is true but the tokenizer has no BOS token")
        self.text_length = context_length - (1 if prepend_bos else 0)
        self.bos_token_id = bos_token_id
        self.prepend_bos = prepend_bos
        self.pending = np.empty(0, dtype=SHARD_DTYPE)

    def push(self, tokens: np.ndarray, max_rows: int) -> np.ndarray:
        """Append ``tokens``; return at most ``max_rows`` full rows ``[rows, context_length]``."""
        stream = np.concatenate([self.pending, tokens]) if len(self.pending) else tokens
        n_rows = min(len(stream) // self.text_length, max_rows)
        used = n_rows * self.text_length
        rows = stream[:used].reshape(n_rows, self.text_length)
        self.pending = stream[used:].copy()
        if self.prepend_bos:
            bos = np.full((n_rows, 1), self.bos_token_id, dtype=SHARD_DTYPE)
            rows = np.concatenate([bos, rows], axis=1)
        return rows


class ShardWriter:
    """Collects rows and writes ``shard_NNNN.npz`` files of ``rows_per_shard`` rows."""

    def __init__(self, directory: Path, rows_per_shard: int, spec: ShardSpec):
        self.directory = directory
        self.rows_per_shard = rows_per_shard
        self.spec = spec
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, rows: np.ndarray) -> None:
        while len(rows):
            take = min(self.rows_per_shard - self.buffered, len(rows))
            self.buffer.append(rows[:take])
            self.buffered += take
            rows = rows[take:]
            if self.buffered == self.rows_per_shard:
                self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        array = np.concatenate(self.buffer).astype(SHARD_DTYPE, copy=False)
        path = self.directory / f"shard_{len(self.shards):04d}.npz"
        validate_array(array, self.spec, str(path))
        write_npz(path, {SHARD_KEY: array})
        self.shards.append(
            {"file": path.name, "rows": int(array.shape[0]), "sha256": sha256_file(path)}
        )
        logger.info("wrote %s (%d rows)", path.name, array.shape[0])
        self.buffer, self.buffered = [], 0


def make_shards(
    files: list[Path],
    tokenizer: Any,
    info: TokenizerInfo,
    out_dir: str | Path,
    *,
    include_sources: Iterable[str],
    context_length: int,
    sequences_per_shard: int,
    max_sequences: int,
    prepend_bos: bool = True,
    batch_size: int = 256,
    on_bad_record: str = "skip",
    min_sequences: int = 1,
    max_bad_record_fraction: float = DEFAULT_MAX_BAD_RECORD_FRACTION,
) -> dict[str, Any]:
    """Tokenize and chunk the documents of ``files`` into shards under ``out_dir``.

    The shards are written into a temporary sibling directory that replaces ``out_dir`` only when
    every shard is written and validated, and when they hold at least ``min_sequences`` sequences
    (what the configuration's sample counts ask for). Malformed records skipped are logged per
    file; more than ``max_bad_record_fraction`` of a file's records, or of all records read, fails
    the run. Returns the manifest's statistics section.
    """
    include = set(include_sources)
    out_dir = Path(out_dir)
    check_context_length(context_length, info)
    spec = ShardSpec(
        context_length, info.vocab_size, info.bos_token_id, info.pad_token_id, prepend_bos
    )
    encode = make_encoder(tokenizer)
    chunker = Chunker(context_length, info.bos_token_id, prepend_bos)
    eos = np.array([info.eos_token_id], dtype=SHARD_DTYPE)

    read_stats = ReadStats()
    seen: Counter[str] = Counter()
    used_docs: Counter[str] = Counter()
    used_tokens: Counter[str] = Counter()
    rows_written = 0
    started = time.perf_counter()

    def kept(documents: Iterable[Document]) -> Iterator[Document]:
        for document in documents:
            seen[document.source] += 1
            if document.source in include:
                yield document

    with atomic_dir(out_dir) as tmp_dir:  # replaces out_dir once every shard is written
        writer = ShardWriter(tmp_dir, sequences_per_shard, spec)
        documents = kept(iter_documents(files, read_stats, on_bad_record, max_bad_record_fraction))
        for batch in _batched(documents, batch_size):
            token_lists = encode([d.text for d in batch])
            lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(batch))
            remaining = max_sequences - rows_written
            # Only the documents needed to fill the remaining rows count as used.
            needed = remaining * chunker.text_length - len(chunker.pending)
            ends = np.cumsum(lengths + 1)
            n_used = min(len(batch), int(np.searchsorted(ends, needed)) + 1)
            pieces = []
            for document, tokens, length in zip(
                batch[:n_used], token_lists[:n_used], lengths[:n_used], strict=True
            ):
                used_docs[document.source] += 1
                used_tokens[document.source] += int(length)
                pieces.append(np.asarray(tokens, dtype=SHARD_DTYPE))
                pieces.append(eos)
            rows = chunker.push(np.concatenate(pieces), remaining)
            writer.add(rows)
            rows_written += len(rows)
            if rows_written >= max_sequences:
                logger.info("reached data.max_sequences=%d; stopping the read", max_sequences)
                break
        writer.flush()
        read_stats.check_total(max_bad_record_fraction)
        if not used_docs:
            found = ", ".join(f"{k}: {v}" for k, v in sorted(seen.items())) or "no documents"
            skipped = ""
            if read_stats.bad_records:
                skipped = (
                    f"; {read_stats.bad_records} records were skipped as malformed "
                    f"(data.on_bad_record: skip). {read_stats.describe_bad_records()}"
                )
            raise CorpusError(
                f"nothing left after filtering: no document has a source in "
                f"data.include_sources={sorted(include)} (documents found: {found}){skipped}"
            )
        if rows_written == 0:
            raise CorpusError(
                f"the kept documents hold {sum(used_tokens.values())} tokens, too few for one "
                f"sequence of {context_length}"
            )
        if rows_written < min_sequences:
            raise CorpusError(
                f"the corpus yields {rows_written} sequences of {context_length} tokens from the "
                f"sources {sorted(include)}, fewer than the {min_sequences} the configuration "
                "asks for (the largest of capture.n_samples, intervention.n_samples, "
                "intervention.check_samples and the heads' n_samples): lower those to at most "
                f"{rows_written}, or give data.source more text (more files, data.include_sources)"
            )

    elapsed = time.perf_counter() - started
    total_text_tokens = sum(used_tokens.values())
    logger.info(
        "%d sequences in %d shards from %d documents (%d text tokens) in %.1f s",
        rows_written,
        len(writer.shards),
        sum(used_docs.values()),
        total_text_tokens,
        elapsed,
    )
    return {
        "sequences": rows_written,
        "tokens_in_shards": rows_written * context_length,
        "shards": writer.shards,
        "stopped_at_max_sequences": rows_written >= max_sequences,
        "documents_seen_per_source": dict(sorted(seen.items())),
        "documents_used_per_source": dict(sorted(used_docs.items())),
        "tokens_used_per_source": dict(sorted(used_tokens.items())),
        "bad_records": read_stats.bad_records,
        "bad_record_examples": read_stats.bad_record_examples,
        "bad_records_per_file": read_stats.bad_records_per_file,
        "records_per_file": read_stats.records_per_file,
        "files_read": read_stats.files,
        "seconds": round(elapsed, 3),
    }


def preprocess(
    source_dir: str | Path,
    split: str,
    tokenizer_name_or_path: str,
    out_dir: str | Path,
    manifest_path: str | Path,
    *,
    include_sources: Iterable[str],
    context_length: int,
    sequences_per_shard: int,
    max_sequences: int,
    prepend_bos: bool = True,
    batch_size: int = 256,
    on_bad_record: str = "skip",
    min_sequences: int = 1,
    max_bad_record_fraction: float = DEFAULT_MAX_BAD_RECORD_FRACTION,
    revision: str | None = None,
    trust_remote_code: bool = False,
    config_used: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole first stage: checks that fail fast, then shards and the manifest."""
    files = find_split_files(source_dir, split)
    check_file_headers(files)
    tokenizer, info = load_tokenizer(tokenizer_name_or_path, revision, trust_remote_code)
    check_context_length(context_length, info)
    logger.info(
        "%d files of split %r in %s; tokenizer %s (vocab %d)",
        len(files),
        split,
        source_dir,
        info.class_name,
        info.vocab_size,
    )
    stats = make_shards(
        files,
        tokenizer,
        info,
        out_dir,
        include_sources=include_sources,
        context_length=context_length,
        sequences_per_shard=sequences_per_shard,
        max_sequences=max_sequences,
        prepend_bos=prepend_bos,
        batch_size=batch_size,
        on_bad_record=on_bad_record,
        min_sequences=min_sequences,
        max_bad_record_fraction=max_bad_record_fraction,
    )
    manifest = {
        "spectra_version": __version__,
        "source": str(source_dir),
        "split": split,
        "include_sources": sorted(include_sources),
        "tokenizer": info.as_dict(),
        "shard_spec": asdict(
            ShardSpec(
                context_length, info.vocab_size, info.bos_token_id, info.pad_token_id, prepend_bos
            )
        ),
        "config": dict(config_used or {}),
        "shards_dir": os.path.relpath(Path(out_dir), Path(manifest_path).parent),
        **stats,
    }
    manifest.pop("seconds")  # timing would make the manifest differ between identical runs
    write_json(manifest_path, manifest)
    return manifest


def load_shard(path: str | Path) -> np.ndarray:
    """The ``input_ids`` array of a shard, loaded without pickle."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ShardError(f"{path}: not a readable .npz file ({exc})") from exc
    if magic != b"PK\x03\x04":  # np.load would take anything else for a pickle
        raise ShardError(f"{path}: not an .npz file (a zip archive); it starts with {magic!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if SHARD_KEY not in archive.files:
                raise ShardError(f"{path}: no {SHARD_KEY!r} array (has {archive.files})")
            return archive[SHARD_KEY]
    except ShardError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise ShardError(
                f"{path}: holds an object array, which only pickle can load; shards must hold "
                f"plain int32 arrays and pickles are never loaded"
            ) from exc
        raise ShardError(f"{path}: unreadable shard ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ShardError(f"{path}: not a readable .npz file ({exc})") from exc


def validate_array(array: np.ndarray, spec: ShardSpec, name: str) -> None:
    """Raise ShardError naming ``name`` and the first bad row if ``array`` breaks the contract."""
    if array.dtype != SHARD_DTYPE:
        raise ShardError(f"{name}: dtype {array.dtype}, expected int32")
    if array.ndim != 2 or array.shape[1] != spec.context_length or array.shape[0] == 0:
        raise ShardError(f"{name}: shape {array.shape}, expected [n >= 1, {spec.context_length}]")

    def fail(bad_rows: np.ndarray, what: str) -> None:
        if bad_rows.any():
            row = int(np.argmax(bad_rows))
            raise ShardError(f"{name}: row {row}: {what} (first bad row of {int(bad_rows.sum())})")

    fail(
        ((array < 0) | (array >= spec.vocab_size)).any(axis=1),
        f"token id outside [0, {spec.vocab_size})",
    )
    if spec.pad_token_id is not None and spec.pad_token_id != spec.bos_token_id:
        fail((array == spec.pad_token_id).any(axis=1), f"padding token {spec.pad_token_id}")
    if spec.prepend_bos:
        fail(array[:, 0] != spec.bos_token_id, f"position 0 is not BOS ({spec.bos_token_id})")
        fail((array[:, 1:] == spec.bos_token_id).any(axis=1), "BOS after position 0")
    elif spec.bos_token_id is not None:
        fail((array == spec.bos_token_id).any(axis=1), "BOS inside a chunk cut without BOS")


def read_manifest(manifest_path: str | Path) -> dict[str, Any]:
    return json.loads(Path(manifest_path).read_text())


def iter_validated_shards(
    manifest_path: str | Path, only: set[str] | None = None, check_checksums: bool = True
) -> Iterator[tuple[Path, np.ndarray]]:
    """The shards a manifest lists (or those named in ``only``), in manifest order, one at a time:
    each is checked against its checksum and the shard contract before it is yielded, and only one
    is held in memory at once (a corpus of many shards need not fit in memory)."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    spec = ShardSpec(**manifest["shard_spec"])
    shard_dir = manifest_path.parent / manifest.get("shards_dir", "shards")
    for entry in manifest["shards"]:
        if only is not None and entry["file"] not in only:
            continue
        path = shard_dir / entry["file"]
        if not path.is_file():
            raise ShardError(f"{path}: listed in {manifest_path} but missing")
        if check_checksums and sha256_file(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from {manifest_path} (modified or corrupt)")
        array = load_shard(path)
        validate_array(array, spec, str(path))
        if array.shape[0] != entry["rows"]:
            raise ShardError(f"{path}: {array.shape[0]} rows, manifest says {entry['rows']}")
        yield path, array
        del array  # before the next shard loads


def validate_shards(manifest_path: str | Path, check_checksums: bool = True) -> list[Path]:
    """Validate every shard a manifest lists, one at a time; return their paths in order."""
    paths = []
    for path, array in iter_validated_shards(manifest_path, check_checksums=check_checksums):
        paths.append(path)
        del array  # before the next shard loads
    return paths
