"""Reading raw SlimPajama documents: the 627B jsonl(.zst) layout, the 6B parquet layout, hub ids.

Records are ``{"text": ..., "meta": {"redpajama_set_name": ...}}``; in the 6B parquet files ``meta``
is a struct column. Files are read in a fixed, natural order (chunk2 before chunk10) so the same
corpus always yields the same document stream.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

logger = logging.getLogger(__name__)

SOURCE_NAMES = (
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaWikipedia",
    "RedPajamaStackExchange",
    "RedPajamaGithub",
    "RedPajamaArXiv",
    "RedPajamaBook",
)
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# How many bad-record locations the manifest lists (the count is always complete).
MAX_LISTED_BAD_RECORDS = 20


class CorpusError(ValueError):
    """The raw corpus is missing, empty, corrupt or malformed; the message names the file."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    location: str  # "file:line" (jsonl) or "file:row" (parquet)


@dataclass
class ReadStats:
    """What the reader saw, for the manifest."""

    files: list[str] = field(default_factory=list)
    bad_records: int = 0
    bad_record_examples: list[str] = field(default_factory=list)

    def record_bad(self, location: str, reason: str) -> None:
        self.bad_records += 1
        if len(self.bad_record_examples) < MAX_LISTED_BAD_RECORDS:
            self.bad_record_examples.append(f"{location}: {reason}")


def natural_key(path: Path) -> list:
    """Sort key that orders chunk2 before chunk10 and example_9 before example_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


LOCAL_PREFIXES = ("./", "../", "/", "~")


def is_hub_id(source: str) -> bool:
    """Whether ``source`` (data.source, model.name_or_path) names a Hugging Face hub repository.

    Local, never a hub id: an existing path; a path written as one (starting with ``./``,
    ``../``, ``/`` or ``~``); a relative path whose first folder exists here (``models/llama3``
    beside a ``models/`` folder is a missing local folder, not an organisation). Anything else
    of the form ``org/name`` is a hub id.
    """
    if source.startswith(LOCAL_PREFIXES) or Path(source).exists():
        return False
    return bool(HUB_ID_PATTERN.match(source)) and not Path(source.split("/")[0]).is_dir()


def hub_cache_dir(source: str, split: str, cache_root: str | Path = "resources/datasets") -> Path:
    """Where a split of a hub dataset is downloaded: resources/datasets/<org>__<name>/<split>."""
    return Path(cache_root) / source.replace("/", "__") / split


def find_split_files(root: str | Path, split: str) -> list[Path]:
    """The files of ``split`` below ``root``, in reading order.

    627B layout: ``<root>/<split>/chunk*/**.jsonl.zst`` or ``.jsonl``.
    6B layout: ``<split>-*.parquet`` anywhere below ``root`` (the hub's
    ``data/test-00000-of-00001.parquet``) or ``<root>/<split>/*.parquet``.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"data.source {str(root)!r} is not a directory")
    split_dir = root / split
    jsonl = [
        p
        for p in split_dir.rglob("*")
        if p.is_file() and (p.name.endswith(".jsonl.zst") or p.name.endswith(".jsonl"))
    ]
    parquet = [p for p in root.rglob(f"{split}-*.parquet") if p.is_file()]
    parquet += [p for p in split_dir.rglob("*.parquet") if p.is_file() and p not in parquet]
    files = sorted(jsonl + parquet, key=natural_key)
    if not files:
        present = sorted(p.name for p in root.iterdir())
        raise CorpusError(
            f"no files of split {split!r} in {str(root)!r}: expected {split}/chunkN/*.jsonl.zst "
            f"(or .jsonl), {split}-*.parquet or {split}/*.parquet; the directory holds "
            f"{present[:10]}"
        )
    empty = [str(p) for p in files if p.stat().st_size == 0]
    if empty:
        raise CorpusError(f"empty corpus file(s): {', '.join(empty[:5])}")
    return files


def check_file_headers(files: list[Path]) -> None:
    """Cheap pre-flight check of every file before any tokenizing: zstd and parquet magic
    numbers, and a parquet footer that parses. Deeper corruption is caught while reading, still
    naming the file."""
    import pyarrow.parquet as pq

    for path in files:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if path.name.endswith(".zst"):
            if head != ZSTD_MAGIC:
                raise CorpusError(f"{path}: not a zstd file (bad magic number {head!r})")
        elif path.suffix == ".parquet":
            try:
                pq.ParquetFile(path).metadata  # noqa: B018 — reading the footer is the check
            except Exception as exc:  # pyarrow raises several types for a damaged footer
                raise CorpusError(f"{path}: corrupt parquet file ({exc})") from exc


def _parse_record(record: object) -> tuple[str, str] | str:
    """(text, source) of a record, or the reason it is malformed."""
    if not isinstance(record, dict):
        return "record is not a JSON object"
    text, meta = record.get("text"), record.get("meta")
    if not isinstance(text, str):
        return "missing or non-string 'text'"
    if not isinstance(meta, dict) or not isinstance(meta.get("redpajama_set_name"), str):
        return "missing 'meta.redpajama_set_name'"
    return text, meta["redpajama_set_name"]


def _iter_jsonl_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        if path.name.endswith(".zst"):
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            stream = io.BufferedReader(reader, buffer_size=1 << 20)
        else:
            stream = raw
        try:
            yield from stream
        except zstandard.ZstdError as exc:
            raise CorpusError(f"{path}: corrupt zstd data ({exc})") from exc


def _iter_jsonl(path: Path, stats: ReadStats, on_bad_record: str) -> Iterator[Document]:
    for line_no, line in enumerate(_iter_jsonl_lines(path), start=1):
        if not line.strip():
            continue
        location = f"{path}:{line_no}"
        try:
            parsed = _parse_record(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            parsed = f"malformed JSON ({exc.__class__.__name__}: {exc})"
        if isinstance(parsed, str):
            if on_bad_record == "fail":
                raise CorpusError(f"{location}: {parsed} (data.on_bad_record: fail)")
            stats.record_bad(location, parsed)
            continue
        yield Document(text=parsed[0], source=parsed[1], location=location)


def _iter_parquet(path: Path, stats: ReadStats, on_bad_record: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        if "text" not in names or "meta" not in names:
            raise CorpusError(f"{path}: parquet file lacks a 'text' or 'meta' column (has {names})")
        row = 0
        for batch in parquet.iter_batches(columns=["text", "meta"], batch_size=2048):
            for record in batch.to_pylist():
                location = f"{path}:{row}"
                row += 1
                meta = record.get("meta")
                if isinstance(meta, str):  # some exports store meta as a JSON string
                    with contextlib.suppress(json.JSONDecodeError):
                        record["meta"] = json.loads(meta)
                parsed = _parse_record(record)
                if isinstance(parsed, str):
                    if on_bad_record == "fail":
                        raise CorpusError(f"{location}: {parsed} (data.on_bad_record: fail)")
                    stats.record_bad(location, parsed)
                    continue
                yield Document(text=parsed[0], source=parsed[1], location=location)
    except CorpusError:
        raise
    except Exception as exc:  # pyarrow's errors for damaged pages vary by version
        raise CorpusError(f"{path}: corrupt parquet file ({exc})") from exc


def iter_documents(
    files: list[Path], stats: ReadStats | None = None, on_bad_record: str = "skip"
) -> Iterator[Document]:
    """Every document of ``files`` in order. Malformed records are skipped and counted in
    ``stats`` (or raise, with ``on_bad_record='fail'``); corrupt files always raise CorpusError."""
    stats = stats if stats is not None else ReadStats()
    for path in files:
        stats.files.append(str(path))
        if path.suffix == ".parquet":
            yield from _iter_parquet(path, stats, on_bad_record)
        else:
            yield from _iter_jsonl(path, stats, on_bad_record)


def download_hub_dataset(dataset_id: str, split: str, cache_dir: str | Path) -> Path:
    """Download every file of ``split`` of a hub dataset in full (not streamed) into ``cache_dir``.

    Both hub layouts are matched: ``<split>/chunk*/...`` (SlimPajama-627B) and
    ``**/<split>-*.parquet`` (SlimPajama-6B). Returns ``cache_dir``.
    """
    from huggingface_hub import snapshot_download

    cache_dir = Path(cache_dir)
    try:
        snapshot_download(
            repo_id=dataset_id,
            repo_type="dataset",
            local_dir=cache_dir,
            allow_patterns=[f"{split}/*", f"{split}/**", f"*{split}-*.parquet", f"**/{split}-*"],
        )
    except Exception as exc:
        raise CorpusError(
            f"data.source {dataset_id!r} is not a local directory, so it was taken as a Hugging "
            f"Face dataset id, and downloading it failed: {exc.__class__.__name__}: {exc}"
        ) from exc
    files = find_split_files(cache_dir, split)  # fail here, naming the split, if nothing matched
    logger.info(
        "%s, split %s: %d files, %.1f MiB in %s",
        dataset_id,
        split,
        len(files),
        sum(f.stat().st_size for f in files) / 2**20,
        cache_dir,
    )
    return cache_dir
