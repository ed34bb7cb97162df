"""The data stage against expectations computed independently from the raw files."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from spectra_attn import shards
from spectra_attn.corpus import CorpusError, download_hub_dataset, is_hub_id
from spectra_attn.shards import ShardError, load_shard, preprocess, validate_shards

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


def test_corrupt_parquet(tokenizer_dir, tmp_path):
    source = write_parquet_corpus(tmp_path / "raw", make_documents())
    path = source / "data" / "test-00000-of-00001.parquet"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CorpusError, match="corrupt parquet"):
        run(source, tokenizer_dir, tmp_path / "out")


def _corpus_with_bad_lines(root: Path) -> Path:
    write_jsonl_corpus(root, make_documents(), compress=False, per_file=10)
    path = sorted((root / "test").rglob("*.jsonl"))[0]
    lines = path.read_text().splitlines()
    lines[2] = '{"text": "broken'
    lines[4] = json.dumps({"text": "no meta"})
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_lines_are_skipped_and_counted(tokenizer_dir, tmp_path):
    path = _corpus_with_bad_lines(tmp_path / "raw")
    manifest = run(tmp_path / "raw", tokenizer_dir, tmp_path / "out")
    assert manifest["bad_records"] == 2
    assert manifest["bad_record_examples"][0].startswith(f"{path}:3: malformed JSON")
    assert f"{path}:5: missing 'meta" in manifest["bad_record_examples"][1]


def test_malformed_lines_fail_when_asked(tokenizer_dir, tmp_path):
    path = _corpus_with_bad_lines(tmp_path / "raw")
    with pytest.raises(CorpusError, match=f"{path}:3: malformed JSON"):
        run(tmp_path / "raw", tokenizer_dir, tmp_path / "out", on_bad_record="fail")


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

    from spectra_attn.shard_report import inspect_shards

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
