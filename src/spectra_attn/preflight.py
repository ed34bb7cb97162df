"""What can be checked of a run before any job starts, beyond the schema: that there will be
enough sequences, that the model folder exists, holds safetensors weights, is an architecture
capture reads, has the intervened heads and a long enough context, and that the corpus has the
split. Snakemake removes a job's outputs before running it, so a value that would only fail inside
a job (after the shards, the demo model or a sweep were removed) is caught here instead.

Only files are read (a model's ``config.json``, a corpus folder's names): no torch, no network.
A hub id is not looked up; its job checks it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectra_attn.architectures import UnsupportedModelError, raw_shape
from spectra_attn.config import uses_demo_corpus, uses_demo_model
from spectra_attn.corpus import CorpusError, find_split_files, is_hub_id

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")


def problems(config: Mapping[str, Any]) -> list[str]:
    """Every problem found, each naming the configuration key; empty when there is none."""
    return [*_sample_counts(config), *_model(config), *_corpus(config)]


def _sample_counts(config: Mapping[str, Any]) -> list[str]:
    available = config["data"]["max_sequences"]
    intervention = config["intervention"]
    wanted = {
        "capture.n_samples": config["capture"]["n_samples"],
        "intervention.n_samples": intervention["n_samples"],
        "intervention.check_samples": intervention["check_samples"],
    }
    if intervention["select"] == "explicit":
        for index, entry in enumerate(intervention["heads"]):
            if "n_samples" in entry:
                wanted[f"intervention.heads[{index}].n_samples"] = entry["n_samples"]
    return [
        f"config key '{key}': {count} sequences, but data.max_sequences={available} makes at "
        f"most {available} (raise data.max_sequences or lower {key})"
        for key, count in wanted.items()
        if count > available
    ]


def _model_shape(config: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The model's config.json (or the demo's settings), or None when it cannot be read here."""
    name = config["model"]["name_or_path"]
    if uses_demo_model(config):
        from spectra_attn.demo_model import check_demo_settings

        try:
            check_demo_settings(config["demo"])
        except ValueError as error:
            return None, [f"config key 'demo': {error}"]
        return {"model_type": "llama", **config["demo"]}, []
    folder = Path(name)
    if is_hub_id(name):
        return None, []  # its job loads (or downloads) it
    if not folder.exists():
        return None, [
            f"config key 'model.name_or_path': {name!r} is not a folder, and not a hub id "
            "(org/name) either"
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


def _model(config: Mapping[str, Any]) -> list[str]:
    shape, found = _model_shape(config)
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


def _corpus(config: Mapping[str, Any]) -> list[str]:
    source, split = config["data"]["source"], config["data"]["split"]
    if uses_demo_corpus(config) or is_hub_id(source):
        return []
    try:
        find_split_files(source, split)
    except CorpusError as error:
        return [f"config key 'data.source' / 'data.split': {error}"]
    return []
