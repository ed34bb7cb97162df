"""Provenance: what made an output, so that a result can be cited and reproduced from the outputs
alone — Spectra's version, the workflow's git commit (and whether its tree was dirty), the model's
identity (hub id and resolved revision, or the sha256 of the local safetensors files), the
corpus's (the shards manifest's files and checksums), a hash of the resolved configuration, and
the versions of Python, torch and transformers with the device used.

It is collected once per job (:func:`collect`) and stored with each output: as the
``spectra_provenance`` key of a Parquet file's metadata (capture parts, sweeps), as the
``provenance`` table of the DuckDB database, as ``verdict.json``'s ``provenance``. The workflow
part (:func:`run_identity`) is computed once by the Snakemake process and reaches the jobs as a
param that is a function of ``input`` — one Snakemake does not record — so a new commit or a dirty
tree does not rerun every job. :func:`check_folder` (``spectra provenance <results dir>``) reads
it back from every output of a folder and says whether they were made from the same shards,
model and configuration.

Free of torch at import: analysis jobs (no torch in their environment) use it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectra_attn import __version__
from spectra_attn.config import EXECUTION_KEYS

logger = logging.getLogger(__name__)

# The Parquet metadata key, the DuckDB table and the JSON key that hold it.
KEY = "spectra_provenance"
TABLE = "provenance"
JSON_KEY = "provenance"
# What two outputs must share to be consistent (made from the same shards, model, configuration):
# a name for each, and where its value sits in a provenance record.
IDENTITIES = {
    "corpus": ("corpus", "sha256"),
    "model": ("model", "id"),
    "configuration": ("config_shared_sha256",),
}
# The configuration every output depends on (the shards, the model, how a metric is defined): what
# outputs must share. The rest (intervention, atlas, gain, ...) may differ between, say, capture
# parts and sweeps rerun with other scales: the full hash (config_sha256) is reported, and its
# differences noted, but they do not make a folder inconsistent.
SHARED_SECTIONS = ("data", "model", "capture", "device")


def _git(basedir: str | Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(basedir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def workflow_identity(basedir: str | Path) -> dict[str, Any]:
    """Spectra's version and the git commit of the workflow at ``basedir``, and whether its tree
    has changes (tracked or untracked, not ignored files); commit and dirty are None outside a git
    checkout."""
    commit = _git(basedir, "rev-parse", "HEAD")
    status = _git(basedir, "status", "--porcelain") if commit else None
    return {
        "spectra_version": __version__,
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
    }


def config_sha256(config: Mapping[str, Any]) -> str:
    """sha256 of the resolved configuration as canonical JSON (sorted keys), without
    the keys that only size batches or memory (:data:`spectra_attn.config.EXECUTION_KEYS`)."""
    config = json.loads(json.dumps(config, default=str))
    for section, key in EXECUTION_KEYS:
        if isinstance(config.get(section), dict):
            config[section].pop(key, None)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_identity(basedir: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """What the Snakemake process knows: :func:`workflow_identity`, :func:`config_sha256` of the
    whole configuration and of its :data:`SHARED_SECTIONS`."""
    shared = {key: config[key] for key in SHARED_SECTIONS if key in config}
    return {
        **workflow_identity(basedir),
        "config_sha256": config_sha256(config),
        "config_shared_sha256": config_sha256(shared),
    }


def combined_sha256(entries: Mapping[str, str]) -> str:
    """One sha256 over (name, sha256) pairs, in name order."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(f"{name}\0{entries[name]}\n".encode())
    return digest.hexdigest()


def corpus_identity(manifest_path: str | Path) -> dict[str, Any]:
    """The shards manifest's files and checksums, and one sha256 over them."""
    manifest = json.loads(Path(manifest_path).read_text())
    shards = {entry["file"]: entry["sha256"] for entry in manifest.get("shards", [])}
    return {
        "manifest": Path(manifest_path).name,
        "shards": shards,
        "sha256": combined_sha256(shards),
    }


# -- storing and reading back ------------------------------------------------------------------
def to_json(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def parquet_metadata(record: Mapping[str, Any] | None) -> dict[str, str]:
    """``{KEY: json}`` for a Parquet file's key-value metadata (empty without a record)."""
    return {KEY: to_json(record)} if record else {}


def read_parquet(path: str | Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq  # lazy: Snakemake's main process imports this module

    values = pq.read_schema(path).metadata or {}
    raw = values.get(KEY.encode())
    return json.loads(raw) if raw else None


def write_duckdb(con: Any, record: Mapping[str, Any] | None) -> None:
    """The ``provenance`` table (one row, column ``json``) of an open DuckDB connection."""
    if record:
        con.execute(f"CREATE OR REPLACE TABLE {TABLE} (json VARCHAR)")
        con.execute(f"INSERT INTO {TABLE} VALUES (?)", [to_json(record)])


def read_duckdb(path: str | Path) -> dict[str, Any] | None:
    import duckdb  # lazy: Snakemake's main process imports this module

    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        if TABLE not in tables:
            return None
        row = con.execute(f"SELECT json FROM {TABLE} LIMIT 1").fetchone()
        return json.loads(row[0]) if row else None
    finally:
        con.close()


def read_json(path: str | Path) -> dict[str, Any] | None:
    content = json.loads(Path(path).read_text())
    return content.get(JSON_KEY) if isinstance(content, dict) else None


def common(records: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The record that every one of ``records`` shares (the first, when they agree on
    :data:`IDENTITIES`); None when there is none or they disagree."""
    present = [r for r in records if r]
    if not present or len(present) != len(records):
        return None
    if any(_identity(r) != _identity(present[0]) for r in present[1:]):
        return None
    return present[0]


def _get(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _identity(record: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _get(record, path) for name, path in IDENTITIES.items()}


# Which outputs of a results folder carry provenance, and how each is read.
READERS = {".parquet": read_parquet, ".duckdb": read_duckdb, ".json": read_json}
PATTERNS = (
    "capture/part_*.parquet",
    "intervention/*/sweep.parquet",
    "intervention/*/tokens.parquet",
    "aggregate/*.duckdb",
    "gain/verdict.json",
)


def folder_records(folder: str | Path) -> dict[str, dict[str, Any] | None]:
    """Each output of a results folder (``results/<run>``) that should carry provenance, by its
    path relative to the folder, with what it carries (None: nothing)."""
    folder = Path(folder)
    records = {}
    for pattern in PATTERNS:
        for path in sorted(folder.glob(pattern)):
            records[str(path.relative_to(folder))] = READERS[path.suffix](path)
    return records


def read(path: str | Path) -> dict[str, Any] | None:
    """The provenance an output carries (Parquet, DuckDB or JSON), None if it carries none."""
    return READERS[Path(path).suffix](path)


def check_folder(folder: str | Path) -> tuple[bool, str]:
    """:func:`check_records` of the outputs of a results folder (:func:`folder_records`)."""
    return check_records(folder_records(folder), str(folder))


def check_records(records: Mapping[str, dict[str, Any] | None], where: str) -> tuple[bool, str]:
    """Whether outputs are mutually consistent — each carries provenance, and all were made from
    the same corpus, model and configuration — and a text that says so, with the shared
    provenance and every difference. ``records``: output name → what it carries."""
    lines = [f"Provenance of {where}: {len(records)} outputs"]
    if not records:
        return False, "\n".join([*lines, "no outputs with provenance found"])
    missing = [name for name, record in records.items() if not record]
    present = {name: record for name, record in records.items() if record}
    problems = [f"{name}: carries no provenance" for name in missing]
    differing = {}
    for name in IDENTITIES:
        values: dict[Any, list[str]] = {}
        for output, record in present.items():
            values.setdefault(_get(record, IDENTITIES[name]), []).append(output)
        present_values = {k: v for k, v in values.items() if k is not None}
        if len(present_values) > 1:
            differing[name] = present_values
            problems.append(f"{name} differs between outputs:")
            for value, outputs in present_values.items():
                shown = ", ".join(outputs[:4]) + (
                    f" and {len(outputs) - 4} more" if len(outputs) > 4 else ""
                )
                problems.append(f"  {_short(value)}: {shown}")
    commits = {(r.get("git_commit"), r.get("git_dirty")) for r in present.values()}
    configurations = {r.get("config_sha256") for r in present.values()}
    if present:
        reference = next(iter(present.values()))
        lines += [f"  {label}: {value}" for label, value in summary_rows(reference)]
    if len(commits) > 1:
        lines.append(
            "  note: made by several workflow commits (not an inconsistency by itself): "
            + ", ".join(
                f"{_short(c)}{' (dirty)' if d else ''}" for c, d in sorted(commits, key=str)
            )
        )
    if len(configurations) > 1 and "configuration" not in differing:
        lines.append(
            f"  note: made under {len(configurations)} configurations that differ only outside "
            f"{', '.join(SHARED_SECTIONS)} (e.g. a sweep rerun with other scales)"
        )
    consistent = not problems
    lines.append(
        "consistent: every output carries provenance and all were made from the same corpus, "
        "model and configuration"
        if consistent
        else "INCONSISTENT:"
    )
    lines += [f"  {problem}" for problem in problems]
    return consistent, "\n".join(lines)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 or len(text) == 40 else text


def summary_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The record as (label, text) rows for a page: no raw dicts."""
    model = record.get("model") or {}
    corpus = record.get("corpus") or {}
    runtime_ = record.get("runtime") or {}
    rows = [("Spectra version", str(record.get("spectra_version")))]
    commit = record.get("git_commit")
    if commit:
        dirty = record.get("git_dirty")
        rows.append(("workflow commit", f"{commit}{' (tree dirty)' if dirty else ' (clean tree)'}"))
    else:
        rows.append(("workflow commit", "unknown (not a git checkout)"))
    if model.get("source") == "hub":
        rows.append(
            (
                "model",
                f"{model.get('hub_id')} revision {model.get('revision') or 'default'} → "
                f"{model.get('resolved_revision') or 'unresolved'}",
            )
        )
    elif model:
        files = model.get("files") or {}
        rows.append(("model", f"{model.get('path')} (local)"))
        rows += [(f"model file {name}", f"sha256 {digest}") for name, digest in files.items()]
        rows.append(("model id (sha256 over files)", str(model.get("id"))))
    if corpus:
        shards = corpus.get("shards") or {}
        count = f"{len(shards)} shard{'s' if len(shards) != 1 else ''}"
        rows.append(
            (
                "corpus",
                f"{count} of {corpus.get('manifest')}, sha256 over them {corpus.get('sha256')}",
            )
        )
    rows.append(("configuration sha256", str(record.get("config_sha256"))))
    if record.get("config_shared_sha256"):
        rows.append(
            (
                f"configuration sha256 of {', '.join(SHARED_SECTIONS)}",
                str(record["config_shared_sha256"]),
            )
        )
    versions = ", ".join(f"{k} {v}" for k, v in runtime_.items() if k != "device" and v)
    if versions:
        rows.append(("software", versions))
    if runtime_.get("device"):
        rows.append(("device", str(runtime_["device"])))
    return rows
