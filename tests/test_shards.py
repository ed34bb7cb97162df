"""The data stage against expectations computed independently from the raw files."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from spectra_attn.data import shards
from spectra_attn.data.corpus import CorpusError, download_hub_dataset, is_hub_id
from spectra_attn.data.shards import ShardError, load_shard, preprocess, validate_shards

from .conftest import (
    INCLUDED,
    SOURCES,
    jsonl_file_order,
    make_documents,
    marker,
    write_jsonl_corpus,
    write_parquet_corpus,
)

CONTEXT = 64


def run(source, tokenizer_dir, out, **overrides):
    options = dict(
        include_sources=INCLUDED,
        context_length=CONTEXT,
        sequences_per_shard=7,
        max_sequences=10_000,
        batch_size=5,
    )
    options.update(overrides)
    return preprocess(
        source, "test", str(tokenizer_dir), out / "shards", out / "manifest.json", **options
    )


def all_rows(out: Path) -> np.ndarray:
    return np.concatenate([load_shard(p) for p in sorted((out / "shards").glob("shard_*.npz"))])


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_jsonl_corpus(tmp_path / "raw", make_documents())


def test_shards_equal_independent_tokenization(corpus, tokenizer_dir, tmp_path):
    manifest = run(corpus, tokenizer_dir, tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = []
    for record in jsonl_file_order(corpus):
        if record["meta"]["redpajama_set_name"] in INCLUDED:
            expected += tokenizer(record["text"], add_special_tokens=False)["input_ids"]
            expected.append(tokenizer.eos_token_id)
    rows = all_rows(tmp_path / "out")
    n_rows = len(expected) // (CONTEXT - 1)
    assert rows.shape == (n_rows, CONTEXT) and rows.dtype == np.int32
    assert manifest["sequences"] == n_rows
    np.testing.assert_array_equal(rows[:, 1:].ravel(), expected[: n_rows * (CONTEXT - 1)])
    # BOS at position 0 and nowhere else.
    assert (rows[:, 0] == tokenizer.bos_token_id).all()
    assert not (rows[:, 1:] == tokenizer.bos_token_id).any()
    # Shards of sequences_per_shard rows, the last one shorter.
    assert [s["rows"] for s in manifest["shards"]] == [7] * (n_rows // 7) + (
        [n_rows % 7] if n_rows % 7 else []
    )


def test_excluded_sources_never_reach_the_shards(corpus, tokenizer_dir, tmp_path):
    run(corpus, tokenizer_dir, tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = tokenizer.decode(all_rows(tmp_path / "out")[:, 1:].ravel())
    for source in SOURCES:
        for index in range(5):  # the last documents may fall in the dropped remainder
            assert (marker(source, index) in text) == (source in INCLUDED), (source, index)


def test_manifest_counts_equal_counts_from_raw_files(corpus, tokenizer_dir, tmp_path):
    manifest = run(corpus, tokenizer_dir, tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    records = jsonl_file_order(corpus)
    seen = Counter(r["meta"]["redpajama_set_name"] for r in records)
    tokens = Counter()
    for r in records:
        if r["meta"]["redpajama_set_name"] in INCLUDED:
            name = r["meta"]["redpajama_set_name"]
            tokens[name] += len(tokenizer(r["text"], add_special_tokens=False)["input_ids"])
    assert manifest["documents_seen_per_source"] == dict(seen)
    assert manifest["documents_used_per_source"] == {s: seen[s] for s in INCLUDED}
    assert manifest["tokens_used_per_source"] == dict(tokens)
    assert manifest["tokenizer"]["eos_token_id"] == tokenizer.eos_token_id
    assert manifest["bad_records"] == 0
    validate_shards(tmp_path / "out" / "manifest.json")


def test_special_token_text_inside_a_document_is_not_a_special_token(tokenizer_dir, tmp_path):
    records = make_documents(n_per_source=3)
    records[0]["text"] = "<|begin_of_text|> fake bos <|end_of_text|> fake eos " * 20
    source = write_jsonl_corpus(tmp_path / "raw", records)
    run(source, tokenizer_dir, tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = all_rows(tmp_path / "out")
    assert not (rows[:, 1:] == tokenizer.bos_token_id).any()
    n_docs = sum(r["meta"]["redpajama_set_name"] in INCLUDED for r in records)
    assert (rows == tokenizer.eos_token_id).sum() <= n_docs


def test_layouts_give_identical_shards(tokenizer_dir, tmp_path):
    records = make_documents()
    zst = write_jsonl_corpus(tmp_path / "zst", records)
    plain = write_jsonl_corpus(tmp_path / "plain", records, compress=False)
    parquet = write_parquet_corpus(tmp_path / "parquet", records)
    outputs = []
    for name, source in [("zst", zst), ("plain", plain), ("parquet", parquet)]:
        manifest = run(source, tokenizer_dir, tmp_path / f"out_{name}")
        outputs.append([s["sha256"] for s in manifest["shards"]])
    assert outputs[0] == outputs[1] == outputs[2]


def test_rerun_is_byte_identical(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    run(corpus, tokenizer_dir, out)
    first = {
        p.name: p.read_bytes() for p in [*sorted((out / "shards").iterdir()), out / "manifest.json"]
    }
    run(corpus, tokenizer_dir, out)
    second = {
        p.name: p.read_bytes() for p in [*sorted((out / "shards").iterdir()), out / "manifest.json"]
    }
    assert first == second


def test_prepend_bos_false_cuts_pure_text(corpus, tokenizer_dir, tmp_path):
    run(corpus, tokenizer_dir, tmp_path / "out", prepend_bos=False)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = all_rows(tmp_path / "out")
    assert not (rows == tokenizer.bos_token_id).any()
    validate_shards(tmp_path / "out" / "manifest.json")


def test_max_sequences_stops_reading_and_counts_only_used_documents(
    corpus, tokenizer_dir, tmp_path
):
    manifest = run(corpus, tokenizer_dir, tmp_path / "out", max_sequences=3)
    assert manifest["sequences"] == 3 and manifest["stopped_at_max_sequences"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    used = sum(manifest["documents_used_per_source"].values())
    # The used documents are exactly those whose tokens reach into the 3 rows.
    kept = [r for r in jsonl_file_order(corpus) if r["meta"]["redpajama_set_name"] in INCLUDED]
    lengths = [len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in kept]
    needed = 3 * (CONTEXT - 1)
    assert sum(lengths[: used - 1]) < needed <= sum(lengths[:used])


# ---- bad input: clear errors, before expensive work, nothing half-written ----------------------


def test_missing_source(tokenizer_dir, tmp_path):
    with pytest.raises(CorpusError, match="is not a directory"):
        run(tmp_path / "nowhere", tokenizer_dir, tmp_path / "out")


def test_source_without_split_files(tokenizer_dir, tmp_path):
    (tmp_path / "raw" / "train").mkdir(parents=True)
    with pytest.raises(CorpusError, match="no files of split 'test'"):
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out")


def test_empty_file(tokenizer_dir, tmp_path):
    (tmp_path / "raw" / "test" / "chunk1").mkdir(parents=True)
    (tmp_path / "raw" / "test" / "chunk1" / "example_test_0.jsonl.zst").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty corpus file"):
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out")


def test_nothing_left_after_filtering(tokenizer_dir, tmp_path):
    records = [r for r in make_documents() if r["meta"]["redpajama_set_name"] not in INCLUDED]
    source = write_jsonl_corpus(tmp_path / "raw", records)
    with pytest.raises(CorpusError, match="nothing left after filtering"):
        run(source, tokenizer_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "shards").exists()


def test_context_length_above_model_maximum(corpus, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="exceeds the model's maximum context"):
        run(corpus, tokenizer_dir, tmp_path / "out", context_length=257)


def test_corrupt_zstd_magic_fails_before_tokenizing(corpus, tokenizer_dir, tmp_path, monkeypatch):
    bad = sorted((corpus / "test").rglob("*.zst"))[-1]
    bad.write_bytes(b"not zstd at all")
    monkeypatch.setattr(shards, "load_tokenizer", lambda *a: pytest.fail("tokenizer loaded"))
    with pytest.raises(CorpusError, match=f"{bad.name}: not a zstd file"):
        run(corpus, tokenizer_dir, tmp_path / "out")


def test_corrupt_zstd_payload_names_the_file_and_keeps_old_output(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    run(corpus, tokenizer_dir, out)
    before = sorted(p.read_bytes() for p in (out / "shards").iterdir())
    bad = sorted((corpus / "test").rglob("*.zst"))[-1]
    data = bad.read_bytes()
    bad.write_bytes(data[:8] + bytes(b ^ 0x5A for b in data[8:]))
    with pytest.raises(CorpusError, match=bad.name):
        run(corpus, tokenizer_dir, out)
    assert sorted(p.read_bytes() for p in (out / "shards").iterdir()) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.parametrize("cut", ["footer", "half"])
def test_corrupt_parquet(tokenizer_dir, tmp_path, cut):
    source = write_parquet_corpus(tmp_path / "raw", make_documents())
    path = source / "data" / "test-00000-of-00001.parquet"
    data = path.read_bytes()
    path.write_bytes(data[:-20] if cut == "footer" else data[: len(data) // 2])
    with pytest.raises(CorpusError, match=f"{path}: corrupt parquet"):
        run(source, tokenizer_dir, tmp_path / "out")


def _corpus_with_bad_lines(root: Path) -> Path:
    write_jsonl_corpus(root, make_documents(), compress=False, per_file=10)
    path = sorted((root / "test").rglob("*.jsonl"))[0]
    lines = path.read_text().splitlines()
    lines[2] = '{"text": "broken'
    lines[4] = json.dumps({"text": "no meta"})
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_lines_are_skipped_counted_and_logged(tokenizer_dir, tmp_path, caplog):
    """2 bad records of 10 in one file: skipped when the limit allows 20 %, counted per file in
    the manifest, logged with their locations, and shown by `spectra shards inspect`."""
    from spectra_attn.data.shard_report import inspect_shards

    path = _corpus_with_bad_lines(tmp_path / "raw")
    with caplog.at_level("WARNING", logger="spectra_attn"):
        manifest = run(
            tmp_path / "raw", tokenizer_dir, tmp_path / "out", max_bad_record_fraction=0.2
        )
    assert manifest["bad_records"] == 2
    assert manifest["bad_record_examples"][0].startswith(f"{path}:3: malformed JSON")
    assert f"{path}:5: missing 'meta" in manifest["bad_record_examples"][1]
    assert manifest["bad_records_per_file"] == {str(path): 2}
    assert manifest["records_per_file"][str(path)] == 10
    assert len(manifest["records_per_file"]) == len(manifest["files_read"])
    logged = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert logged and "skipped 2 of 10 records" in logged[0] and f"{path}:3:" in logged[0]
    text = inspect_shards(tmp_path / "out" / "manifest.json", top=1)
    assert "bad records: 2 skipped as malformed, in 1 files" in text
    assert f"       2 of 10 records  {path}" in text
    assert f"{path}:5: missing 'meta" in text


def test_a_file_over_the_bad_record_limit_fails_naming_it(tokenizer_dir, tmp_path):
    """The same file under the default limit (1 %): 2 of 10 records is a damaged file."""
    path = _corpus_with_bad_lines(tmp_path / "raw")
    with pytest.raises(CorpusError) as error:
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"{path}: 2 of 10 records are malformed (20.0%)")
    assert "data.max_bad_record_fraction=0.01" in message and f"{path}:3: malformed" in message
    assert not (tmp_path / "out" / "shards").exists()
    # The limit is a share of the file: 2 of 10 passes at 0.2 (above), fails just below it.
    with pytest.raises(CorpusError, match="2 of 10 records are malformed"):
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out", max_bad_record_fraction=0.19)


def test_the_bad_record_limit_covers_a_file_read_only_in_part(tokenizer_dir, tmp_path):
    """Reading stops at data.max_sequences inside the damaged file, so that file is never read
    to its end: the limit is checked on every record read as well."""
    path = _corpus_with_bad_lines(tmp_path / "raw")
    with pytest.raises(CorpusError, match=r"2 of \d+ records read are malformed") as error:
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out", max_sequences=1)
    assert f"{path}: 2" in str(error.value) and f"{path}:3: malformed" in str(error.value)


def test_an_all_malformed_corpus_says_what_was_skipped(tokenizer_dir, tmp_path):
    root = tmp_path / "raw"
    write_jsonl_corpus(root, make_documents(n_per_source=1), compress=False, per_file=7)
    path = next((root / "test").rglob("*.jsonl"))
    path.write_text("".join(f'{{"text": {i}}}\n' for i in range(7)))
    with pytest.raises(CorpusError, match=f"{path}: 7 of 7 records are malformed"):
        run(root, tokenizer_dir, tmp_path / "out")
    with pytest.raises(CorpusError) as error:
        run(root, tokenizer_dir, tmp_path / "out", max_bad_record_fraction=1.0)
    message = str(error.value)
    assert "nothing left after filtering" in message
    assert "7 records were skipped as malformed" in message
    assert f"{path}: 7" in message and f"{path}:1: missing or non-string 'text'" in message


def test_malformed_lines_fail_when_asked(tokenizer_dir, tmp_path):
    path = _corpus_with_bad_lines(tmp_path / "raw")
    with pytest.raises(CorpusError, match=f"{path}:3: malformed JSON"):
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out", on_bad_record="fail")


# ---- damaged zstd and jsonl files ---------------------------------------------------------------


def _random_records(n: int, seed: int = 0) -> bytes:
    """jsonl of ``n`` records of random words: text that compresses about 2:1, so that a file of a
    few frames is tens of kilobytes."""
    generator = np.random.default_rng(seed)
    lines = []
    for index in range(n):
        words = " ".join(f"w{v}" for v in generator.integers(0, 100_000, size=60))
        source = SOURCES[index % len(SOURCES)]
        lines.append(json.dumps({"text": words, "meta": {"redpajama_set_name": source}}) + "\n")
    return "".join(lines).encode()


def _zst_file(tmp_path: Path, frames: list[bytes]) -> Path:
    path = tmp_path / "raw" / "test" / "chunk1" / "example_test_0.jsonl.zst"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(frames))
    return path


def _read(path: Path, **options) -> list:
    from spectra_attn.data.corpus import ReadStats, iter_documents

    return list(iter_documents([path], ReadStats(), **options))


def test_a_good_multi_frame_zst_file_reads_completely(tmp_path):
    """Frames with and without checksum and content size, one of them empty and one ending in
    the middle of a line: every record is read, as an independent decompressor reads them."""
    import subprocess

    import zstandard

    data = _random_records(300)
    cuts = [0, 9_000, 9_000, 40_001, 70_000, len(data)]
    frames = [
        zstandard.ZstdCompressor(
            level=3, write_checksum=i % 2 == 0, write_content_size=i != 3
        ).compress(data[a:b])
        for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))
    ]
    path = _zst_file(tmp_path, frames)
    reference = zstandard.ZstdDecompressor().stream_reader(path.open("rb"), read_across_frames=True)
    expected = [json.loads(line)["text"] for line in reference.read().decode().splitlines()]
    assert len(expected) == 300
    assert [d.text for d in _read(path)] == expected
    if shutil.which("zstd"):
        assert subprocess.run(["zstd", "-dc", str(path)], capture_output=True).stdout == data


@pytest.mark.parametrize("cut", [2000, "half", -1])
def test_a_truncated_zst_file_is_an_error_naming_it(tokenizer_dir, tmp_path, cut):
    """Cut to 2,000 bytes, to half its size, or by its last byte (the end of the last frame's
    checksum): zstandard's stream_reader reads such a file silently up to the cut."""
    import zstandard

    data = _random_records(400)
    frames = [
        zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data[i : i + 30_000])
        for i in range(0, len(data), 30_000)
    ]
    whole = b"".join(frames)
    end = {2000: 2000, "half": len(whole) // 2, -1: len(whole) - 1}[cut]
    path = _zst_file(tmp_path, [whole[:end]])
    with pytest.raises(CorpusError, match="truncated: the file ends inside zstd frame") as error:
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out")
    assert str(error.value).startswith(f"{path}: ")
    assert not (tmp_path / "out" / "shards").exists()


def _flip_silently(frame_without_checksum: bytes, original: bytes) -> int:
    """A byte of a frame whose flip libzstd decodes without an error into 10 or more lines that
    are no longer JSON: what only a checksum, or counting the bad records, can catch. (A flip that
    changes a letter of a text is seen by a checksum only.)"""
    import zstandard

    def malformed(decoded: bytes) -> bool:
        bad = 0
        for line in decoded.splitlines():
            try:
                json.loads(line)
            except ValueError:
                bad += 1
        return bad >= 10

    for position in range(9, len(frame_without_checksum)):  # after the 9-byte header
        damaged = bytearray(frame_without_checksum)
        damaged[position] ^= 0x10
        try:
            decoded = zstandard.ZstdDecompressor().decompressobj().decompress(bytes(damaged))
        except zstandard.ZstdError:
            continue
        if len(decoded) == len(original) and malformed(decoded):
            return position
    raise AssertionError("no silent flip found")


def test_a_flipped_byte_fails_the_checksum_or_the_bad_record_limit(tokenizer_dir, tmp_path):
    """The same flipped byte in a frame with a checksum, and in the same frame without one (the
    header's checksum flag cleared, the checksum removed): the first fails its checksum; the
    second decodes into malformed records (10 or more of 200), which the bad-record limit
    catches."""
    import zstandard

    data = _random_records(200)
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    assert frame[4] & 0x04  # the header's checksum flag
    bare = bytes([*frame[:4], frame[4] & ~0x04]) + frame[5:-4]
    assert zstandard.ZstdDecompressor().decompress(bare) == data
    position = _flip_silently(bare, data)
    for with_checksum in (True, False):
        damaged = bytearray(frame if with_checksum else bare)
        damaged[position] ^= 0x10
        path = _zst_file(tmp_path, [bytes(damaged)])
        expected = "fails its checksum" if with_checksum else "records are malformed"
        with pytest.raises(CorpusError, match=expected) as error:
            run(tmp_path / "raw", tokenizer_dir, tmp_path / "out")
        assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_frame_whose_size_differs_from_its_header_is_an_error(tmp_path, delta):
    import struct

    import zstandard

    data = _random_records(200)
    frame = bytearray(zstandard.ZstdCompressor(level=3).compress(data))
    # Frame header: magic, descriptor (content-size field of 4 bytes, single segment: no
    # window byte), then the content size, little-endian.
    assert frame[4] >> 6 == 2 and frame[4] & 0x20 and len(data) > 65_791
    assert struct.unpack("<I", frame[5:9])[0] == len(data)
    frame[5:9] = struct.pack("<I", len(data) + delta)
    path = _zst_file(tmp_path, [bytes(frame)])
    with pytest.raises(
        CorpusError, match=f"content size its header declares \\({len(data) + delta:,}"
    ):
        _read(path)
    with pytest.raises(CorpusError, match=str(path)):
        _read(path)


@pytest.mark.parametrize("compress", [False, True])
def test_a_jsonl_cut_inside_its_last_line_is_truncated(tmp_path, compress):
    """A last line without newline that is not JSON is a cut file, not a bad record to skip; a
    last line without newline that is JSON is fine."""
    import zstandard

    data = _random_records(5)
    path = tmp_path / "raw" / "test" / "chunk1" / "example_test_0.jsonl"
    path.parent.mkdir(parents=True)
    if compress:
        path = path.with_name(path.name + ".zst")
    encode = zstandard.ZstdCompressor().compress if compress else bytes
    path.write_bytes(encode(data[:-1]))  # no final newline: still complete
    assert len(_read(path)) == 5
    path.write_bytes(encode(data[:-40]))
    with pytest.raises(CorpusError, match=f"{path}:5: truncated: the last line has no newline"):
        _read(path, max_bad_record_fraction=1.0)


# ---- shard validation on read ------------------------------------------------------------------


@pytest.fixture
def good_run(corpus, tokenizer_dir, tmp_path) -> Path:
    run(corpus, tokenizer_dir, tmp_path / "out")
    return tmp_path / "out"


def _replace_first_shard(out: Path, array, **savez_kwargs) -> Path:
    path = out / "shards" / "shard_0000.npz"
    np.savez(path, input_ids=array, **savez_kwargs)
    return path


def test_object_array_shard_is_refused(good_run):
    path = _replace_first_shard(good_run, np.array([[1, 2], [3]], dtype=object))
    with pytest.raises(ShardError, match="object array.*pickle"):
        load_shard(path)


def test_a_file_that_is_not_an_npz_is_named_as_such(good_run):
    """np.load takes any file without the zip or .npy magic for a pickle: such a file is not
    reported as holding an object array, and a bare pickle is refused all the same."""
    import pickle

    path = good_run / "shards" / "shard_0000.npz"
    path.write_text("input_ids\n1 2 3\n")
    with pytest.raises(ShardError, match=r"not an \.npz file .* starts with b'inpu'"):
        load_shard(path)
    path.write_bytes(pickle.dumps({"input_ids": [[1, 2]]}))
    with pytest.raises(ShardError, match=r"not an \.npz file"):
        load_shard(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.astype(np.int64), "dtype int64"),
        (lambda a: a[:, :-1], "shape"),
        (lambda a: _set(a, 3, 5, 10**6), "row 3: token id outside"),
        (lambda a: _set(a, 2, 0, 7), "row 2: position 0 is not BOS"),
        (lambda a: _set(a, 4, 9, -1), "row 4: token id outside"),
    ],
)
def test_bad_shard_contents_name_file_and_row(good_run, mutate, message):
    path = good_run / "shards" / "shard_0000.npz"
    _replace_first_shard(good_run, mutate(load_shard(path)))
    with pytest.raises(ShardError, match=message) as error:
        validate_shards(good_run / "manifest.json", check_checksums=False)
    assert "shard_0000.npz" in str(error.value)


def test_bos_mid_chunk_and_padding_are_caught(good_run, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    array = load_shard(good_run / "shards" / "shard_0000.npz")
    _replace_first_shard(good_run, _set(array.copy(), 1, 30, tokenizer.bos_token_id))
    with pytest.raises(ShardError, match="row 1: BOS after position 0"):
        validate_shards(good_run / "manifest.json", check_checksums=False)
    _replace_first_shard(good_run, _set(array.copy(), 5, 30, tokenizer.pad_token_id))
    with pytest.raises(ShardError, match="row 5: padding token"):
        validate_shards(good_run / "manifest.json", check_checksums=False)


def test_modified_shard_fails_its_checksum(good_run):
    array = load_shard(good_run / "shards" / "shard_0000.npz")
    array[0, 5] += 1
    _replace_first_shard(good_run, array)
    with pytest.raises(ShardError, match="sha256 differs"):
        validate_shards(good_run / "manifest.json")


def test_not_a_zip(good_run):
    path = good_run / "shards" / "shard_0000.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(ShardError, match="shard_0000.npz"):
        load_shard(path)


def _set(array, row, col, value):
    array = array.copy()
    array[row, col] = value
    return array


# ---- hub ids -----------------------------------------------------------------------------------


def test_hub_id_detection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("DKYoon/SlimPajama-6B")
    assert is_hub_id("cerebras/SlimPajama-627B")
    assert not is_hub_id("./local/dir")
    assert not is_hub_id("/abs/path")
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name")  # an existing directory wins


def test_hub_download_is_full_and_lands_in_cache(tmp_path, monkeypatch):
    """snapshot_download is replaced by a local copy; the real call signature is what is checked."""
    published = write_parquet_corpus(tmp_path / "published", make_documents())
    calls = []

    def fake_snapshot_download(repo_id, repo_type, local_dir, allow_patterns):
        calls.append((repo_id, repo_type, allow_patterns))
        shutil.copytree(published, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    cache = download_hub_dataset("DKYoon/SlimPajama-6B", "test", tmp_path / "cache" / "test")
    assert calls[0][:2] == ("DKYoon/SlimPajama-6B", "dataset")
    assert (cache / "data" / "test-00000-of-00001.parquet").is_file()


def test_hub_download_failure_is_explained(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(CorpusError, match="taken as a Hugging Face dataset id.*no network"):
        download_hub_dataset("someone/missing", "test", tmp_path / "cache")


def test_inspect_counts_tokens_and_decodes_them(good_run, tokenizer_dir, tmp_path, monkeypatch):
    """`spectra shards inspect` against numpy on the same array; the manifest's tokenizer is used
    when it can be found from here, and named as not found (ids only) when it cannot."""
    import json

    from spectra_attn.data.shard_report import inspect_shards

    array = load_shard(good_run / "shards" / "shard_0000.npz")
    values, counts = np.unique(array, return_counts=True)
    commonest = int(values[np.argmax(counts)])
    text = inspect_shards(good_run / "manifest.json", top=3)
    assert f"shape            {array.shape}" in text
    assert f"unique values    {len(values)}" in text
    first = text.split("most frequent tokens (top 3):\n")[1].splitlines()[0].split()
    assert (int(first[0]), int(first[1])) == (commonest, int(counts.max()))
    decoded = AutoTokenizer.from_pretrained(tokenizer_dir).decode([commonest])
    assert repr(decoded) in text
    assert (
        f"BOS              id {AutoTokenizer.from_pretrained(tokenizer_dir).bos_token_id}" in text
    )
    manifest = json.loads((good_run / "manifest.json").read_text())
    manifest["tokenizer"]["name_or_path"] = "resources/elsewhere/model"  # relative, as in a run
    (good_run / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    text = inspect_shards(good_run / "manifest.json", top=3)
    assert "resources/elsewhere/model (not found from here" in text
    assert repr(decoded) not in text
