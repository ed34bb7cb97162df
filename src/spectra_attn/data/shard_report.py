"""``spectra shards inspect``: what a shard holds (the original project's explore_npz), as plain
text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from spectra_attn.data.corpus import is_hub_id
from spectra_attn.data.shards import load_shard, read_manifest


def find_shards(path: str | Path) -> list[Path]:
    """A shard file, a directory of shards, or a manifest (its shards directory)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        manifest = read_manifest(path)
        directory = path.parent / manifest.get("shards_dir", "shards")
        return [directory / entry["file"] for entry in manifest["shards"]]
    if path.is_dir():
        found = sorted(path.glob("shard_*.npz")) or sorted(path.glob("*.npz"))
        if not found:
            raise FileNotFoundError(f"no .npz shards in {path}")
        return found
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [path]


def manifest_for(shard_path: Path) -> dict | None:
    """The manifest next to a shards directory, if there is one."""
    candidate = shard_path.parent.parent / "manifest.json"
    return read_manifest(candidate) if candidate.is_file() else None


def describe_array(
    name: str,
    array: np.ndarray,
    top: int = 20,
    decode: Callable[[int], str] | None = None,
    special: dict[str, int | None] | None = None,
) -> str:
    """Shape, dtype, statistics, unique values and the most frequent tokens of one array."""
    flat = array.ravel()
    values, counts = np.unique(flat, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    lines = [
        f"{name}",
        f"  shape            {tuple(array.shape)}  ({array.shape[0]} sequences × "
        f"{array.shape[1] if array.ndim > 1 else 1} tokens)",
        f"  dtype            {array.dtype}",
        f"  min / max        {flat.min()} / {flat.max()}",
        f"  mean / std       {flat.mean():.2f} / {flat.std():.2f}",
        f"  unique values    {len(values)}",
    ]
    for label, token_id in (special or {}).items():
        if token_id is not None:
            positions = np.argwhere(array == token_id)
            at_zero = int((positions[:, -1] == 0).sum()) if len(positions) else 0
            lines.append(
                f"  {label:<16} id {token_id}: {len(positions)} occurrences, "
                f"{at_zero} at position 0"
            )
    lines.append(f"  most frequent tokens (top {len(order)}):")
    for index in order:
        token_id, count = int(values[index]), int(counts[index])
        shown = repr(decode(token_id)) if decode else ""
        lines.append(f"    {token_id:>8}  {count:>10}  {100 * count / flat.size:6.2f}%  {shown}")
    return "\n".join(lines)


def describe_bad_records(manifest: dict, examples: int = 5) -> str:
    """The malformed records the preprocessing skipped: their count per file (with the file's
    records read) and the first few locations."""
    bad = manifest.get("bad_records", 0)
    if not bad:
        return "bad records: none skipped"
    per_file = manifest.get("bad_records_per_file") or {}
    records = manifest.get("records_per_file") or {}
    lines = [f"bad records: {bad} skipped as malformed, in {len(per_file) or '?'} files"]
    for name, count in per_file.items():
        read = f" of {records[name]} records" if name in records else ""
        lines.append(f"  {count:>8}{read}  {name}")
    listed = manifest.get("bad_record_examples", [])[:examples]
    lines.append(f"  first {len(listed)}:")
    lines += [f"    {example}" for example in listed]
    return "\n".join(lines)


def _loadable(name: str) -> bool:
    """A tokenizer folder that exists from here, or a name that can only be a hub id."""
    return Path(name).is_dir() or is_hub_id(name)


def inspect_shards(path: str | Path, tokenizer: str | None = None, top: int = 20) -> str:
    paths = find_shards(path)
    manifest = manifest_for(paths[0])
    tokenizer_name = tokenizer or (manifest or {}).get("tokenizer", {}).get("name_or_path")
    decode = None
    special: dict[str, int | None] = {}
    note = ""
    if tokenizer_name and not tokenizer and not _loadable(tokenizer_name):
        # The manifest names the tokenizer as the workflow saw it, relative to its folder.
        note = " (not found from here: tokens shown as ids; pass --tokenizer to decode them)"
        tokenizer_name, shown_name = None, tokenizer_name
    else:
        shown_name = tokenizer_name
    if tokenizer_name:
        from transformers import AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(tokenizer_name)
        decode = lambda token_id: loaded.decode([token_id])  # noqa: E731
        special = {
            "BOS": loaded.bos_token_id,
            "EOS": loaded.eos_token_id,
            "PAD": loaded.pad_token_id,
        }
    reports = []
    if manifest:
        reports.append(
            f"manifest: {manifest['sequences']} sequences in {len(manifest['shards'])} shards, "
            f"split {manifest['split']!r} of {manifest['source']}, tokenizer {shown_name}{note}"
        )
        reports.append(describe_bad_records(manifest))
    reports += [describe_array(str(p), load_shard(p), top, decode, special) for p in paths]
    return "\n\n".join(reports)
