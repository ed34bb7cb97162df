"""Loading a model for capture and the sweeps: which model (:class:`ModelSpec`), its dtype and
device (or a device map over several GPUs), the checks that can fail before its weights load
(architecture, context length, vocabulary, tokenizer), and :func:`prepare`, which does all of it
for one job's samples. Weights are read from safetensors only, never unpickled, and the model
runs the capture attention function of :mod:`spectra_attn.model.attention`.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import get_max_memory
from transformers import AutoConfig, AutoModelForCausalLM

from spectra_attn.data.corpus import is_hub_id
from spectra_attn.data.samples import load_samples, sample_table
from spectra_attn.data.shards import load_tokenizer, read_manifest
from spectra_attn.model.architectures import (
    architecture_for,
    check_transformers_version,
    text_config,
)
from spectra_attn.model.attention import ATTN_IMPLEMENTATION, register_attention

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# accelerate's ways of spreading a model's layers over GPUs (ModelSpec.device_map).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


class UnsafeWeightsError(OSError):
    """The model has no safetensors weights: Spectra never unpickles a checkpoint."""


def check_model_type(model_config: Any) -> None:
    """Raise :class:`UnsupportedModelError` unless the table of architectures has the model, and
    the installed transformers gives it to capture."""
    check_transformers_version(architecture_for(model_config))


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else the CPU with a warning in the log."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was requested but CUDA is not available on this machine")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        logger.warning("no CUDA device found: running on the CPU, which is much slower")
        return torch.device("cpu")
    return torch.device(device)


@dataclass(frozen=True)
class ModelSpec:
    """Which model a job loads, and how."""

    name_or_path: str
    dtype: str = "float32"
    device: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    # None: the whole model on ``device``. Else accelerate spreads its layers over the GPUs the job
    # holds: a strategy of DEVICE_MAP_STRATEGIES, or module name → GPU index (0 = the job's
    # first), "cpu" or "disk" (see :func:`placement_kwargs`).
    device_map: str | dict[str, int | str] | None = None
    max_memory_per_gpu: str | None = None  # e.g. "70GiB": caps what a strategy puts on each GPU

    def config(self):
        if not Path(self.name_or_path).exists() and not is_hub_id(self.name_or_path):
            raise FileNotFoundError(
                f"model {self.name_or_path!r}: no such folder, and not a hub id (org/name)"
            )
        return AutoConfig.from_pretrained(
            self.name_or_path, revision=self.revision, trust_remote_code=self.trust_remote_code
        )


def load_model(spec: ModelSpec, model_config=None) -> torch.nn.Module:
    """Load a causal LM for capture, after checking its architecture from its config alone
    (``model_config``, when the caller has already read it)."""
    check_model_type(model_config if model_config is not None else spec.config())
    register_attention()
    placement = placement_kwargs(spec)
    target = None if placement else resolve_device(spec.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.name_or_path,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            dtype=DTYPES[spec.dtype],
            attn_implementation=ATTN_IMPLEMENTATION,
            use_safetensors=True,  # never a pickled pytorch_model.bin
            **placement,
        )
    except OSError as error:
        if "safetensors" not in str(error):
            raise
        raise UnsafeWeightsError(
            f"{spec.name_or_path}: no safetensors weights (model.safetensors or its index). "
            "Spectra does not load pickled checkpoints (pytorch_model.bin); convert it once, "
            "in an environment you trust, with AutoModelForCausalLM.from_pretrained(...)"
            ".save_pretrained(new_dir, safe_serialization=True)"
        ) from error
    if target is None:
        _log_placement(model, placement)
        return model.eval()
    return model.to(target).eval()


def placement_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """``from_pretrained``'s keywords that spread the model over devices as ``spec.device_map``
    says (accelerate places each decoder layer whole on one device and moves the activations
    between them); none for a model on one device.

    A strategy (``auto``, ``balanced``...) spreads the layers over every GPU the process sees, which
    in a job is the ones it holds (:mod:`spectra_attn.run.gpus`), each at most
    ``max_memory_per_gpu``; where they do not fit, accelerate puts the rest in CPU memory, then on
    disk. Without CUDA a strategy has only the CPU: the model loads there whole, as with ``device:
    auto``. An explicit map gives each module (``model.layers.12``) a GPU index, ``cpu`` or
    ``disk``. Weights put on disk are read back at every forward pass (slow, but it is how the tests
    run a split model on a machine without GPUs); what accelerate writes for them goes to a
    temporary folder removed when the process ends."""
    device_map = spec.device_map
    if device_map is None:
        if spec.max_memory_per_gpu is not None:
            raise ValueError("max_memory_per_gpu needs a device_map strategy (e.g. auto)")
        return {}
    cuda = spec.device != "cpu" and torch.cuda.is_available()
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ValueError(
                f"device_map {device_map!r}: not one of {', '.join(DEVICE_MAP_STRATEGIES)} "
                "(or a mapping of module names to devices)"
            )
        if spec.device == "cpu":
            raise ValueError(
                f"device_map {device_map!r} spreads the model over GPUs, but device is cpu: "
                "set device_map to null (or device to auto or cuda)"
            )
        if not cuda:
            resolve_device(spec.device)  # device: cuda without CUDA fails here
            logger.warning(
                "device_map %r: no CUDA device here, so the whole model runs on the CPU",
                device_map,
            )
            return {}
        kwargs: dict[str, Any] = {"device_map": device_map}
        if spec.max_memory_per_gpu is not None:
            kwargs["max_memory"] = {
                device: spec.max_memory_per_gpu if isinstance(device, int) else memory
                for device, memory in get_max_memory().items()
            }
    else:
        if spec.max_memory_per_gpu is not None:
            raise ValueError(
                "max_memory_per_gpu shapes a device_map strategy; an explicit device_map "
                "already says where each module goes"
            )
        invalid = [
            f"{name}: {device!r}"
            for name, device in device_map.items()
            if device not in ("cpu", "disk")
            and not (isinstance(device, int) and not isinstance(device, bool) and device >= 0)
        ]
        if invalid:
            raise ValueError(
                "device_map: each module goes to a GPU index (0 = the job's first GPU), "
                f"'cpu' or 'disk', not {', '.join(invalid)}"
            )
        gpus = sorted({device for device in device_map.values() if isinstance(device, int)})
        if gpus and not cuda:
            raise ValueError(
                f"device_map puts modules on GPU {', '.join(map(str, gpus))}, but "
                + ("device is cpu" if spec.device == "cpu" else "CUDA is not available here")
            )
        if gpus and gpus[-1] >= torch.cuda.device_count():
            raise ValueError(
                f"device_map puts modules on GPU {gpus[-1]}, but this job sees "
                f"{torch.cuda.device_count()} GPU(s): raise model.gpus"
            )
        kwargs = {"device_map": dict(device_map)}
    kwargs["offload_folder"] = _offload_folder()
    return kwargs


def _offload_folder() -> str:
    """A temporary folder for weights a device map puts on disk (used only then), removed when
    the process ends."""
    folder = tempfile.mkdtemp(prefix="spectra-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _log_placement(model: torch.nn.Module, placement: dict[str, Any]) -> None:
    """Which device holds how many modules of a model spread by a device map, with a warning when
    some of it is in CPU memory or on disk (every forward pass then copies those weights)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    counts: dict[str, int] = {}
    for device in device_map.values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    logger.info(
        "device_map %s: modules per device %s",
        placement["device_map"] if isinstance(placement["device_map"], str) else "explicit",
        counts,
    )
    offloaded = [name for name, device in device_map.items() if device in ("cpu", "disk")]
    if offloaded and any(d not in ("cpu", "disk") for d in device_map.values()):
        logger.warning(
            "%d module(s) offloaded to CPU memory or disk (%s%s): their weights are copied to the "
            "GPU at every forward pass, which is slow; more GPUs (model.gpus) avoid it",
            len(offloaded),
            ", ".join(offloaded[:3]),
            "…" if len(offloaded) > 3 else "",
        )


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch's input ids go: the device that runs the input embedding. For a model on one
    device that is ``model.device``; for one spread by a device map, the execution device of
    accelerate's hook on the embedding (or on the whole model), as its weights may be offloaded
    (on the meta device) and ``model.device`` is only its first parameter's."""
    embeddings = model.get_input_embeddings()
    for module in (embeddings, model):
        hook = getattr(module, "_hf_hook", None)
        for part in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
            device = getattr(part, "execution_device", None)
            if device is not None:
                return (
                    torch.device("cuda", device)
                    if isinstance(device, int)
                    else torch.device(device)
                )
    return embeddings.weight.device


def cuda_devices(model: torch.nn.Module) -> list[torch.device]:
    """Every GPU that runs part of ``model``: those of its weights and buffers, and the GPUs of its
    device map (where weights offloaded to the CPU or disk run)."""
    devices = {tensor.device for tensor in (*model.parameters(), *model.buffers())}
    for device in (getattr(model, "hf_device_map", None) or {}).values():
        if isinstance(device, int):
            devices.add(torch.device("cuda", device))
        elif str(device).startswith("cuda"):
            devices.add(torch.device(device))
    devices = {torch.device("cuda", d.index or 0) for d in devices if d.type == "cuda"}
    return sorted(devices, key=lambda d: d.index)


def use_capture_attention(model: torch.nn.Module) -> None:
    """Switch an already loaded model to the capture attention function."""
    check_model_type(model.config)
    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)


def check_model_fits(model_config: Any, context_length: int, max_token_id: int) -> None:
    """Fail before the weights load if the shards do not fit the model."""
    check_model_type(model_config)
    model_config = text_config(model_config)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and context_length > limit:
        raise ValueError(
            f"sequences of {context_length} tokens exceed the model's maximum context "
            f"(max_position_embeddings={limit})"
        )
    if max_token_id >= model_config.vocab_size:
        raise ValueError(
            f"token id {max_token_id} is outside the model's vocabulary of "
            f"{model_config.vocab_size}: the shards were made with another tokenizer, or the "
            "model's config.json gives a vocab_size smaller than its own tokenizer's"
        )


def check_tokenizer(spec: ModelSpec, manifest_path: str) -> None:
    """Fail when the model's own tokenizer is not the one that made the shards (the manifest
    records its sha256): its ids would mean other tokens to this model. A model folder without a
    tokenizer cannot be compared, and is said so in the log."""
    made_with = read_manifest(manifest_path).get("tokenizer") or {}
    if not made_with.get("fingerprint"):
        return
    try:
        _, info = load_tokenizer(spec.name_or_path, spec.revision, spec.trust_remote_code)
    except (OSError, ValueError) as error:
        logger.warning(
            "%s has no tokenizer to compare with the one that made the shards (%s): %s",
            spec.name_or_path,
            made_with.get("name_or_path"),
            error,
        )
        return
    if info.fingerprint != made_with["fingerprint"]:
        raise ValueError(
            f"the shards of {manifest_path} were made with the tokenizer of "
            f"{made_with.get('name_or_path')!r} (sha256 {made_with['fingerprint'][:12]}…), but "
            f"{spec.name_or_path!r} has another one (sha256 {info.fingerprint[:12]}…): its ids "
            "would mean other tokens; make the shards with this model's tokenizer"
        )


def prepare(
    spec: ModelSpec, manifest_path: str, sample_start: int, sample_stop: int, check_config=None
):
    """Samples table, validated token rows and the loaded model for one job. Everything that can
    fail cheaply (sample range, shard validation, architecture, context length, vocabulary, the
    tokenizer, and ``check_config(model_config)`` if given) is checked before the weights load."""
    table = sample_table(manifest_path, sample_stop).iloc[sample_start:sample_stop]
    tokens = load_samples(manifest_path, table)
    model_config = spec.config()
    check_model_fits(model_config, tokens.shape[1], int(tokens.max()))
    check_tokenizer(spec, manifest_path)
    if check_config is not None:
        check_config(model_config)
    model = load_model(spec, model_config)
    logger.info(
        "samples %d-%d (%d × %d tokens), model %s on %s, %s",
        sample_start,
        sample_stop - 1,
        len(tokens),
        tokens.shape[1],
        spec.name_or_path,
        ", ".join(map(str, cuda_devices(model))) or input_device(model),
        spec.dtype,
    )
    return table, tokens, model
