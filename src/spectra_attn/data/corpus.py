"""Reading raw SlimPajama documents: the 627B jsonl(.zst) layout, the 6B parquet layout, hub ids.

Records are ``{"text": ..., "meta": {"redpajama_set_name": ...}}``; in the 6B parquet files ``meta``
is a struct column. Files are read in a fixed, natural order (chunk2 before chunk10) so the same
corpus always yields the same document stream.

No damaged file is read silently. A ``.zst`` file is decompressed frame by frame while it is read
(no extra pass): a file that ends inside a frame is truncated (zstandard's ``stream_reader`` would
just stop there), and libzstd's own checks (the frame checksum where the frame has one, the
decoded size against the header's content size, block corruption) become errors naming the file
and frame. A last line without a newline that is not valid JSON is a truncated file, not a bad
record. The records ``on_bad_record: skip`` drops are counted per file, logged with their first
locations, and a file (or corpus) with more than ``max_bad_record_fraction`` of them fails the run.
"""

from __future__ import annotations

import contextlib
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
# How many of them a log line or an error message quotes.
QUOTED_BAD_RECORDS = 3
# data.max_bad_record_fraction's default: a file (or corpus) with more malformed records than this
# is damaged, not a corpus with a few odd lines.
DEFAULT_MAX_BAD_RECORD_FRACTION = 0.01
# Compressed bytes handed to the zstd decompressor at once (its output is ~4x larger for text).
ZSTD_READ_SIZE = 1 << 18
# A zstd frame header is at most 18 bytes; kept to name the frame's content size in messages.
ZSTD_MAX_HEADER = 18


class CorpusError(ValueError):
    """The raw corpus is missing, empty, corrupt or malformed; the message names the file."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    location: str  # "file:line" (jsonl) or "file:row" (parquet)


@dataclass
class ReadStats:
    """What the reader saw, for the manifest and the log."""

    files: list[str] = field(default_factory=list)
    bad_record_examples: list[str] = field(default_factory=list)
    # Records read (good + bad) of every file, and the bad ones of files that have any.
    records_per_file: dict[str, int] = field(default_factory=dict)
    bad_records_per_file: dict[str, int] = field(default_factory=dict)
    # The first few bad records of each file, for its log line and its error.
    _file_examples: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def bad_records(self) -> int:
        return sum(self.bad_records_per_file.values())

    @property
    def records(self) -> int:
        """Records read, good and bad."""
        return sum(self.records_per_file.values())

    def start_file(self, path: Path) -> None:
        self.files.append(str(path))
        self.records_per_file[str(path)] = 0

    def record_good(self, path: Path) -> None:
        self.records_per_file[str(path)] += 1

    def record_bad(self, location: str, reason: str, path: Path) -> None:
        example, name = f"{location}: {reason}", str(path)
        if len(self.bad_record_examples) < MAX_LISTED_BAD_RECORDS:
            self.bad_record_examples.append(example)
        self.records_per_file[name] += 1
        self.bad_records_per_file[name] = self.bad_records_per_file.get(name, 0) + 1
        examples = self._file_examples.setdefault(name, [])
        if len(examples) < QUOTED_BAD_RECORDS:
            examples.append(example)

    def finish_file(self, path: Path, limit: float) -> None:
        """Log the records skipped in ``path``, read to its end, and fail if they are more than
        ``limit`` (data.max_bad_record_fraction) of its records."""
        name = str(path)
        bad, total = self.bad_records_per_file.get(name, 0), self.records_per_file[name]
        if not bad:
            return
        examples = "; ".join(self._file_examples[name])
        logger.warning(
            "%s: skipped %d of %d records as malformed (data.on_bad_record: skip); first: %s",
            name,
            bad,
            total,
            examples,
        )
        if bad / total > limit:
            raise CorpusError(
                f"{name}: {bad} of {total} records are malformed ({bad / total:.1%}), more than "
                f"data.max_bad_record_fraction={limit} allows: a file this damaged is not a "
                f"corpus file with a few odd lines. First: {examples}. Repair or remove the "
                f"file, or raise data.max_bad_record_fraction to skip them."
            )

    def check_total(self, limit: float) -> None:
        """Fail if the malformed records are more than ``limit`` of all records read (this also
        covers a file whose reading stopped early, at data.max_sequences)."""
        total = self.records
        if not self.bad_records:
            return
        logger.warning(
            "skipped %d of %d records as malformed in %d of %d files "
            "(data.on_bad_record: skip). %s",
            self.bad_records,
            total,
            len(self.bad_records_per_file),
            len(self.files),
            self.describe_bad_records(),
        )
        if self.bad_records / total > limit:
            raise CorpusError(
                f"{self.bad_records} of {total} records read are malformed "
                f"({self.bad_records / total:.1%}), more than "
                f"data.max_bad_record_fraction={limit} allows. "
                f"{self.describe_bad_records()}"
            )

    def describe_bad_records(self) -> str:
        """The malformed records per file and the first few, for an error message."""
        per_file = ", ".join(
            f"{name}: {n}" for name, n in list(self.bad_records_per_file.items())[:5]
        )
        more = len(self.bad_records_per_file) - 5
        if more > 0:
            per_file += f" and {more} more files"
        first = "; ".join(self.bad_record_examples[:QUOTED_BAD_RECORDS])
        return f"Per file: {per_file}. First: {first}."


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
    import pyarrow.parquet as pq  # lazy: Snakemake's main process imports this module

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


def _declared_content_size(head: bytes) -> int | None:
    """The content size a zstd frame header declares, if it declares one."""
    try:
        size = zstandard.get_frame_parameters(head).content_size
    except zstandard.ZstdError:
        return None
    return None if size == zstandard.CONTENTSIZE_UNKNOWN else size


def _zstd_error(path: Path, exc: Exception, frame: int, start: int, head: bytes) -> CorpusError:
    """libzstd's complaint about frame ``frame`` of ``path``, said in words."""
    declared = _declared_content_size(head)
    where = f"zstd frame {frame} (at byte {start:,})"
    reason = str(exc)
    if "checksum" in reason.lower():
        what = f"{where} fails its checksum: the data decompressed differ from the data compressed"
    elif "too small" in reason and declared is not None:
        # libzstd decodes into a buffer of the declared size and runs past it.
        what = f"{where} decodes to more than the content size its header declares"
        what += f" ({declared:,} bytes)"
    elif declared is not None:
        # libzstd reports a decoded size short of the header's content size as corruption too.
        what = (
            f"corrupt {where}: its blocks are damaged or do not decode to the content size its "
            f"header declares ({declared:,} bytes)"
        )
    else:
        what = f"corrupt {where}"
    return CorpusError(f"{path}: {what} (zstd: {reason}); `zstd -t {path}` tests the file")


def _iter_zstd(path: Path, raw) -> Iterator[bytes]:
    """The decompressed bytes of every frame of a .zst file, checked as they are read.

    Decompressed frame by frame: ``stream_reader`` returns what it decoded before the end of a
    truncated file and stops without a word, so the end of every frame is checked here (a file
    that ends inside a frame is truncated), and libzstd checks each frame's checksum (where
    the frame has one) and its content size (where the header declares one)."""
    decompressor = zstandard.ZstdDecompressor()
    frame_reader = None  # the decompressor of the frame being read; None between frames
    frame, start, fed, head = 0, 0, 0, b""
    while data := raw.read(ZSTD_READ_SIZE):
        while data:
            if frame_reader is None:
                frame_reader = decompressor.decompressobj()
                frame, start, head = frame + 1, fed, b""
            head += data[: ZSTD_MAX_HEADER - len(head)]
            fed += len(data)
            try:
                out = frame_reader.decompress(data)
            except zstandard.ZstdError as exc:
                raise _zstd_error(path, exc, frame, start, head) from exc
            if out:
                yield out
            data = b""
            if frame_reader.eof:  # the frame ended (and was checked); the rest is the next one
                data = frame_reader.unused_data
                fed -= len(data)
                frame_reader = None
    if frame_reader is not None:
        declared = _declared_content_size(head)
        size = f", content size {declared:,} bytes" if declared is not None else ""
        raise CorpusError(
            f"{path}: truncated: the file ends inside zstd frame {frame} (at byte {start:,}{size}; "
            f"the file has {fed:,} bytes); `zstd -t {path}` tests the file"
        )


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a stream of byte chunks, each with its newline (the last one may lack it)."""
    pending: list[bytes] = []  # pieces of a line longer than a chunk
    for chunk in chunks:
        if not chunk:
            continue
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            pending.append(chunk)
            continue
        lines[0] = b"".join([*pending, lines[0]])
        rest = lines.pop()  # the start of the next line (empty if the chunk ends with one)
        pending = [rest] if rest else []
        for line in lines:
            yield line + b"\n"
    if pending:
        yield b"".join(pending)


def _iter_jsonl_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        if path.name.endswith(".zst"):
            yield from _lines(_iter_zstd(path, raw))
        else:
            yield from raw


def _iter_jsonl(path: Path, stats: ReadStats, on_bad_record: str) -> Iterator[Document]:
    for line_no, line in enumerate(_iter_jsonl_lines(path), start=1):
        if not line.strip():
            continue
        location = f"{path}:{line_no}"
        try:
            parsed = _parse_record(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if not line.endswith(b"\n"):  # only the last line can lack its newline
                raise CorpusError(
                    f"{location}: truncated: the last line has no newline and is not valid JSON "
                    f"({exc.__class__.__name__}: {exc}); the file was cut short"
                ) from exc
            parsed = f"malformed JSON ({exc.__class__.__name__}: {exc})"
        document = _accepted(parsed, location, path, stats, on_bad_record)
        if document is not None:
            yield document


def _accepted(
    parsed: tuple[str, str] | str,
    location: str,
    path: Path,
    stats: ReadStats,
    on_bad_record: str,
) -> Document | None:
    """The document of a parsed record, counted as good; None for a bad one (``parsed`` is then
    the reason), counted and logged as skipped, or raised with ``on_bad_record: fail``."""
    if isinstance(parsed, str):
        if on_bad_record == "fail":
            raise CorpusError(f"{location}: {parsed} (data.on_bad_record: fail)")
        stats.record_bad(location, parsed, path)
        return None
    stats.record_good(path)
    return Document(text=parsed[0], source=parsed[1], location=location)


def _iter_parquet(path: Path, stats: ReadStats, on_bad_record: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        # Page checksums are verified where the writer wrote them (pyarrow does not by default).
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
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
                document = _accepted(parsed, location, path, stats, on_bad_record)
                if document is not None:
                    yield document
    except CorpusError:
        raise
    except Exception as exc:  # pyarrow's errors for damaged pages vary by version
        raise CorpusError(f"{path}: corrupt parquet file ({exc})") from exc


def iter_documents(
    files: list[Path],
    stats: ReadStats | None = None,
    on_bad_record: str = "skip",
    max_bad_record_fraction: float = DEFAULT_MAX_BAD_RECORD_FRACTION,
) -> Iterator[Document]:
    """Every document of ``files`` in order. Malformed records are skipped, counted per file in
    ``stats`` and logged (or raise, with ``on_bad_record='fail'``); a file read to its end with
    more than ``max_bad_record_fraction`` of its records malformed raises CorpusError, and so do
    corrupt and truncated files. The caller checks the whole read with ``stats.check_total``."""
    stats = stats if stats is not None else ReadStats()
    for path in files:
        stats.start_file(path)
        if path.suffix == ".parquet":
            yield from _iter_parquet(path, stats, on_bad_record)
        else:
            yield from _iter_jsonl(path, stats, on_bad_record)
        stats.finish_file(path, max_bad_record_fraction)


def download_hub_dataset(dataset_id: str, split: str, cache_dir: str | Path) -> Path:
    """Download every file of ``split`` of a hub dataset in full (not streamed) into ``cache_dir``.

    Both hub layouts are matched: ``<split>/chunk*/...`` (SlimPajama-627B) and
    ``**/<split>-*.parquet`` (SlimPajama-6B). Returns ``cache_dir``.
    """
    from huggingface_hub import (
        snapshot_download,  # lazy: Snakemake's main process imports this module
    )

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
