"""What can be checked of a run before any job starts, beyond the schema: that there will be
enough sequences, that the model folder exists, holds safetensors weights, is an architecture
capture reads, has the intervened heads and a long enough context, that the corpus has the
split, and that a hub id can be used from here. Snakemake removes a job's outputs before running
it, so a value that would only fail inside a job (after the shards, the demo model or a sweep
were removed) is caught here instead.

Files are read (a model's ``config.json``, a corpus folder's names, the shards' manifest), no
torch. A hub id is asked of the local hub cache or, failing that, of the hub in one short
request (``spectra_attn.run.hub``); nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spectra_attn.config import sample_counts, uses_demo_corpus, uses_demo_model
from spectra_attn.data.corpus import CorpusError, find_split_files, hub_cache_dir, is_hub_id
from spectra_attn.data.shards import store_dir
from spectra_attn.demo.corpus import SPLITS as DEMO_SPLITS
from spectra_attn.demo.model import check_demo_settings
from spectra_attn.model.architectures import UnsupportedModelError, raw_shape
from spectra_attn.run import hub

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
# (repo id, "model" or "dataset", revision, config key) → why it cannot be used, or None.
HubLookup = Callable[[str, str, str | None, str], str | None]


def problems(
    config: Mapping[str, Any],
    hub_lookup: HubLookup = hub.repo_problem,
    store: str | Path | None = None,
) -> list[str]:
    """Every problem found, each naming the configuration key; empty when there is none.
    ``store``: the shard store the run reads, when it shares another run's
    (spectra_attn.data.shards.assign_stores); by default its own."""
    return [
        *_sample_counts(config, store),
        *_model(config, hub_lookup),
        *_corpus(config, hub_lookup),
    ]


def _sample_counts(config: Mapping[str, Any], store: str | Path | None = None) -> list[str]:
    """Each sample count against data.max_sequences, and against what the shards made with
    these settings hold when they exist (a corpus can yield fewer sequences than the maximum)."""
    available = config["data"]["max_sequences"]
    wanted = sample_counts(config)
    found = [
        f"config key '{key}': {count} sequences, but data.max_sequences={available} makes at "
        f"most {available} (raise data.max_sequences or lower {key})"
        for key, count in wanted.items()
        if count > available
    ]
    manifest = Path(store or store_dir(config)) / "manifest.json"
    if found or not manifest.is_file():
        return found
    try:
        made = int(json.loads(manifest.read_text())["sequences"])
    except (OSError, ValueError, KeyError, TypeError):
        return found  # its job reads it and names what is wrong
    return [
        f"config key '{key}': {count} sequences, but the shards of these data settings "
        f"({manifest}) hold only {made}: the corpus yields no more; lower {key} to at most "
        f"{made}, or give data.source more text"
        for key, count in wanted.items()
        if count > made
    ]


def _model_shape(
    config: Mapping[str, Any], hub_lookup: HubLookup
) -> tuple[dict[str, Any] | None, list[str]]:
    """The model's config.json (or the demo's settings), or None when it cannot be read here."""
    name = config["model"]["name_or_path"]
    if uses_demo_model(config):
        try:
            check_demo_settings(config["demo"])
        except ValueError as error:
            return None, [f"config key 'demo': {error}"]
        return {"model_type": "llama", **config["demo"]}, []
    folder = Path(name)
    if is_hub_id(name):  # its job loads (or downloads) it
        problem = hub_lookup(name, "model", config["model"]["revision"], "model.name_or_path")
        return None, [problem] if problem else []
    if not folder.exists():
        return None, [
            f"config key 'model.name_or_path': {name!r} is not a folder (nothing at "
            f"{folder.absolute()}), and not a hub id (org/name) either"
        ]
    if not folder.is_dir():
        return None, [f"config key 'model.name_or_path': {name!r} is not a folder"]
    if not (folder / "config.json").is_file():
        return None, [f"config key 'model.name_or_path': {name!r} holds no config.json"]
    found = []
    if not any((folder / weights).is_file() for weights in SAFETENSORS):
        found.append(
            f"config key 'model.name_or_path': {name!r} holds no safetensors weights "
            f"({' or '.join(SAFETENSORS)}); Spectra does not load pickled checkpoints "
            "(pytorch_model.bin): convert it with save_pretrained(..., safe_serialization=True)"
        )
    try:
        shape = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        return None, [*found, f"config key 'model.name_or_path': {name}/config.json: {error}"]
    return shape, found


def _model(config: Mapping[str, Any], hub_lookup: HubLookup) -> list[str]:
    shape, found = _model_shape(config, hub_lookup)
    if shape is None:
        return found
    name = config["model"]["name_or_path"]
    try:
        counts = raw_shape(shape)  # GPT-2's n_layer…, a multimodal Gemma-3's text_config
    except UnsupportedModelError as error:
        message = str(error).removeprefix("unsupported model architecture ")
        found.append(f"config key 'model.name_or_path': {name!r} is a {message}")
        counts = {"layers": None, "heads": None, "max_positions": None}
    longest = counts["max_positions"]
    length = config["data"]["context_length"]
    if longest is not None and length > longest:
        found.append(
            f"config key 'data.context_length': {length} exceeds the model's maximum context "
            f"(max_position_embeddings={longest})"
        )
    intervention = config["intervention"]
    layers, heads = counts["layers"], counts["heads"]
    if intervention["select"] == "explicit" and layers and heads:
        for index, entry in enumerate(intervention["heads"]):
            if entry["layer"] >= layers:
                found.append(
                    f"config key 'intervention.heads[{index}].layer': {entry['layer']} is out "
                    f"of range; the model has layers 0-{layers - 1}"
                )
            if entry["head"] >= heads:
                found.append(
                    f"config key 'intervention.heads[{index}].head': {entry['head']} is out of "
                    f"range; the model has heads 0-{heads - 1} per layer"
                )
    return found


def _corpus(config: Mapping[str, Any], hub_lookup: HubLookup) -> list[str]:
    source, split = config["data"]["source"], config["data"]["split"]
    if uses_demo_corpus(config):
        if split not in DEMO_SPLITS:
            return [
                f"config key 'data.split': the demo corpus has no split {split!r}; it has "
                f"{', '.join(DEMO_SPLITS)}"
            ]
        return []
    if is_hub_id(source):
        if hub_cache_dir(source, split).is_dir():
            return []  # downloaded already
        problem = hub_lookup(source, "dataset", None, "data.source")
        return [problem] if problem else []
    try:
        find_split_files(source, split)
    except CorpusError as error:
        return [f"config key 'data.source' / 'data.split': {error}"]
    return []
