"""Provenance: collected from independent references (hashlib over the files, git itself), stored
in Parquet metadata, DuckDB and JSON, and `spectra provenance` tells a consistent results folder
from inconsistent ones (another corpus, model or configuration; an output without provenance)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from spectra_attn import provenance
from spectra_attn.cli import main as spectra
from spectra_attn.io import write_json, write_parquet
from spectra_attn.run import model_provenance


def make_model(folder: Path, weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def make_manifest(folder: Path, shards: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"file": name, "rows": 1, "sha256": digest} for name, digest in shards.items()]
    path = folder / "manifest.json"
    path.write_text(json.dumps({"shards": entries}))
    return path


def test_model_identity_is_the_sha256_of_its_files(tmp_path):
    model = make_model(tmp_path / "model")
    identity = model_provenance.model_identity(model)
    assert identity["source"] == "local"
    assert identity["files"] == {
        "model.safetensors": hashlib.sha256(b"weights").hexdigest(),
        "config.json": hashlib.sha256(b'{"model_type": "llama"}').hexdigest(),
    }
    other = model_provenance.model_identity(make_model(tmp_path / "other", b"other weights"))
    assert other["id"] != identity["id"]


def test_corpus_identity_follows_the_manifest(tmp_path):
    one = provenance.corpus_identity(make_manifest(tmp_path / "a", {"shard_0000.npz": "ab"}))
    two = provenance.corpus_identity(make_manifest(tmp_path / "b", {"shard_0000.npz": "cd"}))
    assert one["shards"] == {"shard_0000.npz": "ab"} and one["sha256"] != two["sha256"]


def test_config_hash_ignores_only_resource_keys():
    config = {"seed": 0, "capture": {"batch_size": 8, "rope": "pre"}}
    same = {"capture": {"rope": "pre", "batch_size": 64}, "seed": 0}
    assert provenance.config_sha256(config) == provenance.config_sha256(same)
    other = {"seed": 1, "capture": {"batch_size": 8, "rope": "pre"}}
    assert provenance.config_sha256(config) != provenance.config_sha256(other)


def test_workflow_identity_reads_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (repo / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    identity = provenance.workflow_identity(repo)
    assert identity["git_commit"] == git("rev-parse", "HEAD") and identity["git_dirty"] is False
    (repo / "a.txt").write_text("changed")
    assert provenance.workflow_identity(repo)["git_dirty"] is True
    outside = provenance.workflow_identity(tmp_path / "elsewhere")
    assert outside["git_commit"] is None and outside["git_dirty"] is None


def record(
    tmp_path: Path,
    weights: bytes = b"weights",
    shard: str = "ab",
    seed: int = 0,
    rope: str = "pre",
):
    config = {"seed": seed, "capture": {"rope": rope}}
    run = provenance.run_identity(tmp_path / "no-git", config)
    return model_provenance.collect(
        run,
        model=make_model(tmp_path / f"model-{weights.hex()}", weights),
        manifest=make_manifest(tmp_path / f"shards-{shard}", {"shard_0000.npz": shard}),
        device="cpu",
    )


def make_results(folder: Path, records: dict[str, dict | None]) -> Path:
    """A results folder: two capture parts, a sweep, a database and a verdict, each carrying the
    record given for it (default: ``records["default"]``)."""
    frame = pd.DataFrame({"layer": [0], "head": [1], "entropy": [0.5]})
    default = records["default"]

    def meta(name):
        return provenance.parquet_metadata(records.get(name, default))

    write_parquet(frame, folder / "capture" / "part_0000.parquet", meta("part_0000"))
    write_parquet(frame, folder / "capture" / "part_0001.parquet", meta("part_0001"))
    write_parquet(frame, folder / "intervention" / "L0_H1" / "sweep.parquet", meta("sweep"))
    (folder / "aggregate").mkdir(parents=True)
    con = duckdb.connect(str(folder / "aggregate" / "spectra.duckdb"))
    con.execute("CREATE TABLE head_summary AS SELECT 1 AS layer")
    provenance.write_duckdb(con, records.get("database", default))
    con.close()
    write_json(
        folder / "gain" / "verdict.json",
        {"gain_ratio": 1.0, "provenance": records.get("verdict", default)},
    )
    return folder


def test_round_trip_through_every_output(tmp_path):
    rec = record(tmp_path)
    folder = make_results(tmp_path / "results", {"default": rec})
    found = provenance.folder_records(folder)
    assert sorted(found) == [
        "aggregate/spectra.duckdb",
        "capture/part_0000.parquet",
        "capture/part_0001.parquet",
        "gain/verdict.json",
        "intervention/L0_H1/sweep.parquet",
    ]
    assert all(value == json.loads(json.dumps(rec)) for value in found.values())
    # pandas still reads the Parquet file as before (its own metadata kept beside ours)
    assert list(pd.read_parquet(folder / "capture" / "part_0000.parquet").columns) == [
        "layer",
        "head",
        "entropy",
    ]


def test_consistent_folder(tmp_path, capsys):
    folder = make_results(tmp_path / "results", {"default": record(tmp_path)})
    consistent, text = provenance.check_folder(folder)
    assert consistent and "consistent: every output" in text
    assert spectra(["provenance", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "configuration sha256" in out and "cpu" in out
    assert "{'" not in out


@pytest.mark.parametrize(
    ("changed", "which", "words"),
    [
        ({"weights": b"other"}, "sweep", "model differs"),
        ({"shard": "cd"}, "part_0001", "corpus differs"),
        ({"rope": "post"}, "database", "configuration differs"),
    ],
)
def test_inconsistent_folder_names_what_differs(tmp_path, capsys, changed, which, words):
    base = record(tmp_path)
    other = record(tmp_path, **changed)
    folder = make_results(tmp_path / "results", {"default": base, which: other})
    consistent, text = provenance.check_folder(folder)
    assert not consistent and "INCONSISTENT" in text and words in text
    assert spectra(["provenance", str(folder)]) == 1
    assert words in capsys.readouterr().out


def test_other_analysis_settings_are_noted_not_inconsistent(tmp_path):
    """Sweeps rerun under another seed (or scales) beside the same capture: consistent, with a
    note that the configurations differ outside the shared sections."""
    folder = make_results(
        tmp_path / "results", {"default": record(tmp_path), "sweep": record(tmp_path, seed=5)}
    )
    consistent, text = provenance.check_folder(folder)
    assert consistent, text
    assert "made under 2 configurations that differ only outside data, model" in text


def test_output_without_provenance_is_inconsistent(tmp_path):
    folder = make_results(tmp_path / "results", {"default": record(tmp_path), "sweep": None})
    consistent, text = provenance.check_folder(folder)
    assert not consistent
    assert "intervention/L0_H1/sweep.parquet: carries no provenance" in text


def test_empty_folder_and_common(tmp_path):
    consistent, text = provenance.check_folder(tmp_path)
    assert not consistent and "no outputs" in text
    rec, other = record(tmp_path), record(tmp_path, rope="post")
    assert provenance.common([rec, rec]) == rec
    assert provenance.common([rec, other]) is None
    assert provenance.common([rec, None]) is None
    assert spectra(["provenance", str(tmp_path / "missing")]) == 2


def test_hub_model_identity_is_the_resolved_revision(monkeypatch):
    import transformers

    class Config:
        _commit_hash = "0123456789abcdef0123456789abcdef01234567"

    calls = []

    def from_pretrained(name, revision=None, trust_remote_code=False):
        calls.append((name, revision))
        return Config()

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    identity = model_provenance.model_identity("org/model", "main")
    assert calls == [("org/model", "main")]
    assert identity["source"] == "hub" and identity["revision"] == "main"
    assert identity["id"] == f"org/model@{Config._commit_hash}"
    rows = dict(provenance.summary_rows({"model": identity}))
    assert rows["model"] == f"org/model revision main → {Config._commit_hash}"
