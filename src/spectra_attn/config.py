"""Configuration: the schema, validation with defaults, overlays, and a readable description.

The same schema file validates the config inside Snakemake (``rules/common.smk``) and outside it
(``spectra config show``), so both reject the same keys with the same messages.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from spectra_attn.io import atomic_path
from spectra_attn.model.architectures import UnsupportedModelError, pre_rope_meaning

SCHEMA_RESOURCE = "schemas/config.schema.yaml"
DEMO_MODEL_PATH = "resources/demo/model"
# Further demo models of a several-model configuration (``models:``), one folder each, built from
# their entry's demo settings; resources/demo/model stays the one of the top-level demo settings.
DEMO_MODELS_ROOT = "resources/demo/models"
DEMO_CORPUS_PATH = "resources/demo/slimpajama"


# Keys that only decide how the work is cut (batch and block sizes, GPUs per job): they reach the
# jobs as resources, never as params, change no result, and are left out of what identifies an
# output (the shard store's digest, the provenance's configuration hash).
EXECUTION_KEYS = (
    ("data", "tokenize_batch_size"),
    ("capture", "batch_size"),
    ("capture", "query_block_size"),
    ("intervention", "batch_size"),
    ("model", "gpus"),
)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


def schema_path() -> Path:
    """Path of the JSON schema (YAML) that every configuration is validated against."""
    return Path(str(resources.files("spectra_attn").joinpath(SCHEMA_RESOURCE)))


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(schema_path().read_text())


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay ``overlay`` on ``base`` the way ``snakemake --configfile`` does: mappings merge
    key by key, everything else (lists included) is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _fill_defaults(instance: dict[str, Any], schema: Mapping[str, Any]) -> None:
    for key, subschema in schema.get("properties", {}).items():
        if key not in instance and "default" in subschema:
            instance[key] = copy.deepcopy(subschema["default"])
        if isinstance(instance.get(key), dict) and subschema.get("type") == "object":
            _fill_defaults(instance[key], subschema)


def _is_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema counts 8.0 as an integer; Python code does not (``range(8.0)`` raises, and a
    head 2.0 becomes the path ``L2.0_H0``), so a configuration's integers must be written as
    integers."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_STRICT_VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        where = "at the top level" if key == "<top level>" else f"under '{key}'"
        return (
            f"unknown configuration key(s) {', '.join(repr(u) for u in unexpected)} {where}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    if (
        error.validator == "type"
        and isinstance(error.instance, float)
        and "integer" in str(error.validator_value)
    ):
        whole = f" (write {int(error.instance)})" if error.instance.is_integer() else ""
        return f"config key '{key}': {error.instance!r} is not an integer{whole}"
    if error.validator == "anyOf" and error.context:
        # Of the alternatives, the one of the value's own type says what is wrong (an unknown
        # device_map strategy, a bad device in a mapping); "is not valid under any" does not.
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        for errors in branches.values():
            if not any(e.validator == "type" and not e.relative_path for e in errors):
                return _describe(errors[0])
        alternatives = "; ".join(sorted({e.message for e in error.context}))
        return f"config key '{key}': {error.instance!r} fits none of the forms ({alternatives})"
    return f"config key '{key}': {error.message}"


def _head_problems(config: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about intervention.heads (explicit selection only): the gain
    analysis compares exactly one target with one control, two different heads, and the atlas is
    checked against each head's sweep on the scales they share."""
    intervention = config["intervention"]
    if intervention["select"] != "explicit":
        return []
    heads = intervention["heads"]
    problems = []
    for role in ("target", "control"):
        count = sum(entry["role"] == role for entry in heads)
        if count != 1:
            problems.append(
                f"config key 'intervention.heads': needs exactly one head with role {role!r}, "
                f"found {count} (the gain analysis compares one target with one control)"
            )
    atlas = config["atlas"]["scales"] or intervention["scales"]
    seen = set()
    for index, entry in enumerate(heads):
        key = (entry["layer"], entry["head"])
        if key in seen:
            problems.append(
                f"config key 'intervention.heads[{index}]': L{key[0]}_H{key[1]} is listed twice"
            )
        seen.add(key)
        scales = entry.get("scales", intervention["scales"])
        if not {round(s, 6) for s in scales} & {round(s, 6) for s in atlas}:
            problems.append(
                f"config key 'intervention.heads[{index}]': L{key[0]}_H{key[1]}'s scales "
                f"{scales} share none with the atlas' {atlas}, so the atlas could not be checked "
                "against its sweep (set atlas.scales)"
            )
    return problems


def _placement_problems(config: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about model.device_map, model.gpus and max_memory_per_gpu: how
    they fit together and with device."""
    model, device = config["model"], config["device"]
    device_map, gpus = model["device_map"], model["gpus"]
    problems = []
    if device_map is None:
        if gpus > 1:
            problems.append(
                f"config key 'model.gpus': {gpus} GPUs per job need model.device_map (e.g. auto) "
                "to spread the model over them; without one the job would use only the first"
            )
        if model["max_memory_per_gpu"] is not None:
            problems.append(
                "config key 'model.max_memory_per_gpu': shapes a model.device_map strategy; "
                "set model.device_map (e.g. auto) or remove it"
            )
        return problems
    if isinstance(device_map, str):
        if device == "cpu":
            problems.append(
                f"config key 'model.device_map': {device_map} spreads the model over GPUs, but "
                "device is cpu; set device to auto or cuda, or model.device_map to null"
            )
        return problems
    gpu_indices = sorted({d for d in device_map.values() if isinstance(d, int)})
    if gpu_indices and device == "cpu":
        problems.append(
            "config key 'model.device_map': puts modules on GPU "
            f"{', '.join(map(str, gpu_indices))}, but device is cpu (which takes a mapping to cpu "
            "and disk only)"
        )
    elif gpu_indices and gpu_indices[-1] >= gpus:
        problems.append(
            f"config key 'model.device_map': puts modules on GPU {gpu_indices[-1]}, but each job "
            f"holds model.gpus: {gpus} (GPUs 0-{gpus - 1}); raise model.gpus"
        )
    if model["max_memory_per_gpu"] is not None:
        problems.append(
            "config key 'model.max_memory_per_gpu': shapes a model.device_map strategy (auto, "
            "balanced...); an explicit mapping already says where each module goes"
        )
    return problems


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a validated copy of ``config`` with every missing key set to its default.

    Raises ConfigError naming every offending key (all errors at once, not only the first).
    """
    schema = load_schema()
    instance = copy.deepcopy(dict(config))
    _fill_defaults(instance, schema)
    validator = _STRICT_VALIDATOR(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    problems = [_describe(e) for e in errors] or [
        *_head_problems(instance),
        *_placement_problems(instance),
    ]
    if not problems and instance.get("models"):
        problems = _models_problems(instance)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return instance


def load(configfiles: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Read YAML config files, each overlaying the previous one, and validate the result."""
    merged: dict[str, Any] = {}
    for path in configfiles:
        text = Path(path).read_text()
        try:
            content = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(content, Mapping):
            raise ConfigError(f"{path}: a config file must hold a mapping of keys, not {content!r}")
        merged = deep_merge(merged, content)
    return validate(merged)


def uses_demo_model(config: Mapping[str, Any]) -> bool:
    """Whether the workflow builds the model: resources/demo/model, or a further demo model
    resources/demo/models/<name>."""
    path = Path(config["model"]["name_or_path"])
    return path == Path(DEMO_MODEL_PATH) or path.parent == Path(DEMO_MODELS_ROOT)


# -- several models in one configuration (models:) ----------------------------------------------
def run_config(config: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of one ``models:`` entry, not yet validated: the top-level sections
    with the entry's keys laid over them (as ``--configfile`` would), without ``models``."""
    return deep_merge(_without_models(config), entry)


def resolve_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """run_name → the validated configuration of that run, in the configuration's order: each
    ``models:`` entry's, or, without ``models``, the configuration itself (less the empty
    ``models`` key: the same values, and so the same records, as before the key existed)."""
    if not config.get("models"):
        return {config["run_name"]: _without_models(config)}
    return {
        entry["run_name"]: _without_models(validate(run_config(config, entry)))
        for entry in config["models"]
    }


def _without_models(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != "models"}


def _models_problems(config: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about ``models:``: distinct run names, each entry's
    configuration valid, and one set of demo settings per demo model folder."""
    entries = config["models"]
    names = [entry["run_name"] for entry in entries]
    problems = [
        f"config key 'models': run_name {name!r} is given to {names.count(name)} entries "
        "(each model's outputs need a folder of their own)"
        for name in sorted(set(names))
        if names.count(name) > 1
    ]
    if config["run_name"] in names:
        problems.append(
            f"config key 'run_name': {config['run_name']!r} names the comparison of the models "
            "(results/<run_name>/comparison/) and must differ from every models[].run_name"
        )
    built: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, entry in enumerate(entries):
        where = f"models[{index}] ({entry['run_name']})"
        try:
            resolved = validate(run_config(config, entry))
        except ConfigError as error:
            lines = str(error).splitlines()[1:]
            problems += [f"{where}: {line.strip().removeprefix('- ')}" for line in lines]
            continue
        path = Path(resolved["model"]["name_or_path"])
        if path == Path(DEMO_MODEL_PATH) and resolved["demo"] != config["demo"]:
            problems.append(
                f"config key 'models[{index}].demo': {DEMO_MODEL_PATH} is built from the "
                f"top-level demo settings; name another folder, {DEMO_MODELS_ROOT}/<name>, for "
                "a demo model of other settings"
            )
        if uses_demo_model(resolved) and path != Path(DEMO_MODEL_PATH):
            first = built.setdefault(str(path), (index, resolved["demo"]))
            if first[1] != resolved["demo"]:
                problems.append(
                    f"config key 'models[{index}].demo': {path} is built by models[{first[0]}] "
                    "with other demo settings; give each set of settings a folder of its own"
                )
    return problems


def demo_models(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """name → demo settings of every further demo model the runs use (resources/demo/models/
    <name>)."""
    found = {}
    for config in runs.values():
        path = Path(config["model"]["name_or_path"])
        if uses_demo_model(config) and path.parent == Path(DEMO_MODELS_ROOT):
            found[path.name] = config["demo"]
    return found


def uses_demo_corpus(config: Mapping[str, Any]) -> bool:
    return Path(config["data"]["source"]) == Path(DEMO_CORPUS_PATH)


def sample_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """How many sequences each configuration key asks of the shards (the heads' own counts only
    with explicit selection: automatic selection chooses heads after the capture)."""
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
    return wanted


def describe(config: Mapping[str, Any]) -> str:
    """Every design decision and metric formula that the configuration implies (the original
    project's show_experiment_config), as plain text."""
    model, data, capture, intervention = (
        config["model"],
        config["data"],
        config["capture"],
        config["intervention"],
    )
    text_tokens = data["context_length"] - (1 if data["prepend_bos"] else 0)
    rope = capture["rope"]
    if intervention["select"] == "auto":
        heads = (
            "chosen after the capture: the strongest |Spearman(query_norm, entropy)| as target, "
            "the weakest of its layer as control"
        )
    else:
        heads = ", ".join(f"L{h['layer']}H{h['head']} ({h['role']})" for h in intervention["heads"])
    demo_note = (
        " (the offline demo Llama, built by the workflow)" if uses_demo_model(config) else ""
    )
    corpus_note = " (the offline demo corpus)" if uses_demo_corpus(config) else ""
    lines = [
        f"Spectra configuration — run '{config['run_name']}' (outputs under results/"
        f"{config['run_name']}/)",
        "",
        "Model",
        f"  model                 {model['name_or_path']}{demo_note}",
        f"  dtype                 {model['dtype']} (metrics always computed in float32)",
        f"  trust_remote_code     {model['trust_remote_code']}",
        f"  device                {config['device']}",
        *_placement_lines(model),
        f"  seed                  {config['seed']}",
        "",
        "Data",
        f"  source                {data['source']}{corpus_note}, split '{data['split']}'",
        f"  kept sources          {', '.join(data['include_sources'])}",
        "  tokenization          model tokenizer, no special tokens inside documents "
        "(special-token strings in the text are split, never mapped to BOS/EOS)",
        "  document joining      documents joined with EOS, in file order",
        f"  chunking              non-overlapping {data['context_length']}-token chunks = "
        + (
            f"1 BOS + {text_tokens} text tokens"
            if data["prepend_bos"]
            else f"{text_tokens} text tokens, no BOS"
        )
        + "; the remainder is dropped",
        f"  shards                {data['sequences_per_shard']} sequences per shard_NNNN.npz "
        f"(int32 input_ids), at most {data['max_sequences']} sequences",
        f"  malformed records     {data['on_bad_record']} (corrupt .zst/parquet files always fail)",
        f"  bad-record limit      {data['max_bad_record_fraction']:.2%} of a file's records "
        "(more fails the run with skip)",
        "",
        "Capture",
        f"  samples               the first {capture['n_samples']} sequences of the shards, "
        "in order",
        "  attention             "
        + (
            "pre-RoPE: p = softmax(transform(scaling·q·kᵀ) + causal mask), q and k after any "
            "q/k norm with the rotary embedding undone; scaling, soft-cap, ALiBi bias and "
            "sliding window the model's own"
            if rope == "pre"
            else "post-RoPE: the model's own attention (rotary embedding, its scaling, soft-cap, "
            "ALiBi bias and mask)"
        ),
        f"  architecture          {_architecture_line(config)}",
        "  grouped-query         query head h reads KV head h // (heads / kv_heads)",
        "  query_norm            ‖q‖₂ of the head's query vector"
        + (" (pre-RoPE)" if rope == "pre" else " (post-RoPE)"),
        "  entropy               H = −Σⱼ pⱼ·ln pⱼ over the causal row (nats); NaN for the first "
        f"{capture['entropy_skip_tokens']} positions",
        "  max_attn              maxⱼ pⱼ",
        "  k_eff                 smallest k with the k largest pⱼ summing to ≥ "
        f"{capture['k_eff_threshold']}",
        "",
        "Intervention",
        f"  heads                 {heads}",
        f"  scales                {', '.join(str(s) for s in intervention['scales'])} "
        "(q of one head multiplied by s after the projection and any q norm, before RoPE)",
        f"  samples               the first {intervention['n_samples']} sequences",
        "  expected              entropy decreasing (strongest), max_attn increasing, "
        "k_eff decreasing (weakest)",
        "  gain                  Gain = d mean(max_attn) / d ln(s), by OLS",
    ]
    if config.get("models"):
        lines += [
            "",
            f"Models (each a run of its own, the values above with its keys laid over them; "
            f"compared in results/{config['run_name']}/comparison/)",
        ]
        for name, run in resolve_runs(config).items():
            selected = run["intervention"]
            heads = (
                "auto"
                if selected["select"] == "auto"
                else ", ".join(
                    f"L{h['layer']}H{h['head']} ({h['role']})" for h in selected["heads"]
                )
            )
            lines.append(
                f"  {name:<21} {run['model']['name_or_path']} ({run['model']['dtype']}), "
                f"heads {heads}"
            )
    return "\n".join(lines)


def _placement_lines(model: Mapping[str, Any]) -> list[str]:
    """How a model spread over several devices is placed (nothing for one device)."""
    device_map = model["device_map"]
    if device_map is None:
        return []
    if isinstance(device_map, str):
        cap = model["max_memory_per_gpu"]
        where = f"{device_map}, at most {cap} of weights per GPU" if cap else device_map
    else:
        where = f"explicit mapping of {len(device_map)} module(s)"
    return [
        f"  device_map            layers spread over {model['gpus']} GPU(s) per job by "
        f"accelerate ({where})"
    ]


def _architecture_line(config: Mapping[str, Any]) -> str:
    """The model's architecture and what pre-RoPE means for it, when its config.json is here (a
    hub model's is read by its job)."""
    if uses_demo_model(config):
        shape: dict[str, Any] = {"model_type": "llama"}
    else:
        path = Path(config["model"]["name_or_path"]) / "config.json"
        try:
            shape = json.loads(path.read_text())
        except (OSError, ValueError):
            return "read from the model's config.json when its job starts"
    try:
        return f"{shape.get('model_type')}; pre-RoPE means: {pre_rope_meaning(shape)}"
    except UnsupportedModelError as error:
        return str(error)


def write_description(config: Mapping[str, Any], path: str | Path) -> None:
    """:func:`describe`'s text followed by every value of the (validated) configuration as YAML,
    written atomically to ``path``: the run's configuration, as the report shows it."""
    text = (
        describe(config)
        + "\n\nEvery value (validated, defaults filled in)\n\n"
        + yaml.safe_dump(dict(config), sort_keys=True, allow_unicode=True)
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
