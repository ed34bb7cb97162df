"""Capture: one forward pass per batch records, for every layer, head and token, the query norm and
the attention metrics of :mod:`spectra_attn.model.metrics`.

Everything happens in a registered attention function (transformers' ``AttentionInterface``),
which every architecture of :mod:`spectra_attn.model.architectures` calls with its post-RoPE query
``[B, heads, T, d]``, its un-repeated keys, its mask and the logit scale, sliding window and
soft-cap it really uses. (TransformerLens would call the two kinds ``hook_rot_q``/``hook_q``.)

* ``rope="post"``: the metrics of softmax(transform(scaling·q kᵀ) + causal mask), the attention
  the model computes itself: ``transform`` is the model's soft-cap (Gemma-2) and the ALiBi bias it
  adds to its float mask (Falcon); see :class:`~spectra_attn.model.metrics.LogitTransform`.
* ``rope="pre"``: the same, from the query and keys with the rotation undone on the rotary
  dimensions (with the (cos, sin) the attention module received): the vectors after any q/k norm,
  before RoPE, whatever the projection layout. A model without RoPE (GPT-2, ALiBi Falcon) has
  pre = post. The scale, cap, bias and window are the model's own.

The layer's output is computed with the SDPA implementation, except where SDPA cannot compute the
model's attention (soft-capping): there the model's own eager attention computes it.

With grouped-query attention, query head h reads KV head h // (heads / kv_heads). Metrics are
computed in float32 by blocks of queries whatever the model's dtype, so memory never holds the
[heads, T, T] matrices of all layers, nor of one layer at long context.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectra_attn.columns import ORIGINAL_CSV_COLUMNS
from spectra_attn.model.architectures import (
    INTERLEAVED,
    NO_ROPE,
    UnsupportedModelError,
    architecture_for,
    check_transformers_version,
    logit_scale,
    rope_style,
    summary,
    text_config,
)
from spectra_attn.model.metrics import METRIC_NAMES, LogitTransform, blocked_metrics, causal_logits

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "spectra_capture"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# accelerate's ways of spreading a model's layers over GPUs (ModelSpec.device_map).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

# capture_batch on a GPU queues each layer's copies of its metrics to the host without waiting for
# them, and waits once per batch (False: waits for every copy; benchmarks/gpu_capture.py compares).
NON_BLOCKING_COPIES = True

_ACTIVE_RECORDER: contextvars.ContextVar[AttentionRecorder | None] = contextvars.ContextVar(
    "spectra_active_recorder", default=None
)
# Functions (module, query, key, value) → (query, key, value) that the attention function applies,
# in order, before anything reads the tensors: the intervention's scaler, the isolation check's
# probe.
_ACTIVE_EDITS: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "spectra_active_edits", default=()
)


@contextlib.contextmanager
def attention_edit(edit):
    """While active, the capture attention function passes each layer's (query, key, value)
    through ``edit(module, query, key, value)`` before recording or computing anything."""
    token = _ACTIVE_EDITS.set((*_ACTIVE_EDITS.get(), edit))
    try:
        yield
    finally:
        _ACTIVE_EDITS.reset(token)


class RecordingComplete(Exception):
    """Raised by a recorder made with ``stop_when_done`` once it holds every layer it records: what
    the model would compute after that (the rest of the last recorded layer, the final norm and
    head) produces nothing the recorder keeps. :func:`forward_for_metrics` catches it."""


class UnsafeWeightsError(OSError):
    """The model has no safetensors weights: Spectra never unpickles a checkpoint."""


@dataclass(frozen=True)
class CaptureSettings:
    rope: str = "pre"
    k_eff_threshold: float = 0.9
    entropy_skip_tokens: int = 2
    query_block_size: int = 128

    def __post_init__(self) -> None:
        if self.rope not in ("pre", "post"):
            raise ValueError(f"capture.rope must be 'pre' or 'post', not {self.rope!r}")


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


def _register_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def spectra_attention(module, query, key, value, attention_mask, **kwargs):
        # The eager attention's own scale, also for the output (old GPT-2 passed none to SDPA).
        kwargs["scaling"] = logit_scale(module, kwargs.get("scaling"))
        for edit in _ACTIVE_EDITS.get():
            query, key, value = edit(module, query, key, value)
        recorder = _ACTIVE_RECORDER.get()
        if recorder is not None:
            recorder.observe(module, query, key, attention_mask, kwargs)
        if kwargs.get("softcap") is not None:  # SDPA has no soft-cap (it raises, or ignores it)
            return eager_output(module, query, key, value, attention_mask, **kwargs)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(ATTN_IMPLEMENTATION, spectra_attention)
    # Same name for the mask, so the model builds SDPA's causal (and sliding-window) mask.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def eager_output(module, query, key, value, attention_mask, **kwargs):
    """The layer's output as the model's own eager attention computes it (its module's
    ``eager_attention_forward``), with SDPA's boolean mask (True: visible) or none at all (causal,
    within ``sliding_window``) made into the additive float mask eager expects."""
    import sys

    eager = sys.modules[type(module).__module__].eager_attention_forward
    length, n_keys = query.shape[-2], key.shape[-2]
    if attention_mask is None or attention_mask.dtype == torch.bool:
        visible = attention_mask
        if visible is None:
            query_pos = torch.arange(n_keys - length, n_keys, device=query.device)[:, None]
            key_pos = torch.arange(n_keys, device=query.device)[None, :]
            visible = key_pos <= query_pos
            window = kwargs.get("sliding_window")
            if window is not None:
                visible &= key_pos > query_pos - window
        visible = visible.expand(1, 1, *visible.shape[-2:]) if visible.dim() == 2 else visible
        attention_mask = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
        attention_mask.masked_fill_(~visible, torch.finfo(query.dtype).min)
    return eager(module, query, key, value, attention_mask, **kwargs)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in layer order (of the language model:
    a multimodal checkpoint's vision tower is left out)."""
    name = architecture_for(model.config).attention_class
    modules = [
        m
        for m in model.modules()
        if hasattr(m, "layer_idx") and any(c.__name__ == name for c in type(m).__mro__)
    ]
    if not modules:
        raise UnsupportedModelError(f"{type(model).__name__}: no {name} modules")
    return sorted(modules, key=lambda m: m.layer_idx)


def token_mean(values: torch.Tensor, settings: CaptureSettings) -> torch.Tensor:
    """Mean over the last (token) axis of the positions with a defined entropy (from
    ``settings.entropy_skip_tokens`` on), in float32: the per-sample value of the sweep and the
    atlas tables, which the atlas-vs-sweep check compares."""
    return values[..., settings.entropy_skip_tokens :].float().mean(-1)


def attention_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The self-attention module of decoder layer ``layer``."""
    for module in attention_modules(model):
        if module.layer_idx == layer:
            return module
    raise ValueError(f"{type(model).__name__} has no decoder layer {layer}")


def pre_rope_source(attention: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The module whose output is a Llama-layout attention module's pre-RoPE query (``kind="q"``)
    or key (``"k"``): ``q_norm``/``k_norm`` where the model has them (Qwen3, OLMo-2), else the
    projection. Capture itself no longer hooks modules (it undoes the rotation, which works for
    every layout); the GPU benchmark compares with this way."""
    return getattr(attention, f"{kind}_norm", None) or getattr(attention, f"{kind}_proj")


def head_dim(model_config: Any) -> int:
    """Per-head width: the (text) config's ``head_dim`` where set, else hidden size / heads."""
    config = text_config(model_config)
    return getattr(config, "head_dim", None) or (config.hidden_size // config.num_attention_heads)


def undo_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """The vectors ``x`` ``[B, heads, T, d]`` before the rotation that RoPE applied with ``cos``,
    ``sin`` ``[B, T, r]``, in float32.

    RoPE rotates each pair (u, v) of the first r dimensions — (i, i + r/2), or (2i, 2i + 1)
    ``interleaved`` — to (u·cos − v·sin, v·cos + u·sin) (x' = x·cos + (x·J)·sin), so its inverse
    is u = u'·cos + v'·sin, v = v'·cos − u'·sin; the other d − r dimensions are as they were.
    Written straight into one float32 buffer (four fused passes over the rotary half-pairs: a
    rotate-and-concatenate would cost several times more on the Llama path)."""
    rotary = cos.shape[-1]
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if style == INTERLEAVED:
        first, second = slice(0, rotary, 2), slice(1, rotary, 2)
    else:
        first, second = slice(0, rotary // 2), slice(rotary // 2, rotary)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, r]: broadcast over heads
    u, v = x[..., first], x[..., second]
    out_u, out_v = out[..., first], out[..., second]
    torch.mul(u, cos[..., first], out=out_u)
    out_u.addcmul_(v, sin[..., first])
    torch.mul(v, cos[..., second], out=out_v)
    out_v.addcmul_(u, sin[..., second], value=-1.0)
    if rotary < x.shape[-1]:
        out[..., rotary:] = x[..., rotary:]
    return out


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
        from transformers import AutoConfig

        from spectra_attn.data.corpus import is_hub_id

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
    from transformers import AutoModelForCausalLM

    check_model_type(model_config if model_config is not None else spec.config())
    _register_attention()
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
            from accelerate.utils import get_max_memory

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
    import atexit
    import shutil
    import tempfile

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
    _register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)


class AttentionRecorder:
    """Collects per-layer metrics during forward passes while it is active (``with recorder:``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        settings: CaptureSettings,
        layers: set[int] | None = None,
        heads: list[int] | None = None,
        keep_logits: bool = False,
        non_blocking_copies: bool = False,
        stop_when_done: bool = False,
    ):
        """``layers``/``heads``: record only these (default: all). ``keep_logits``: also keep the
        recorded heads' causal logits ``[B, heads, T, T]`` in ``self.logits`` (for checks).
        ``non_blocking_copies``: see :func:`head_metrics`; the owner must synchronize the device
        before reading ``self.layers``. ``stop_when_done``: end the forward pass (raise
        :class:`RecordingComplete`, run it with :func:`forward_for_metrics`) as soon as the last
        recorded layer is recorded, for callers that use nothing of the model's output."""
        self.model = model
        self.settings = settings
        self.modules = [
            m for m in attention_modules(model) if layers is None or m.layer_idx in layers
        ]
        self.num_heads = text_config(model.config).num_attention_heads
        self.head_dim = head_dim(model.config)
        self.rope_style = rope_style(model.config)
        self.heads = heads
        self.keep_logits = keep_logits
        self.non_blocking_copies = non_blocking_copies
        self.stop_when_done = stop_when_done
        self.layers: dict[int, dict[str, torch.Tensor]] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.transforms: dict[int, LogitTransform] = {}
        self._recorded = {m.layer_idx for m in self.modules}
        self._last_recorded = max(self._recorded, default=None)
        self._rotary: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[Any] = []
        self._token: contextvars.Token | None = None

    # -- pre-RoPE: the (cos, sin) each attention module receives ---------------------------------
    def _keep_rotary(self, module, args, kwargs) -> None:
        embeddings = kwargs.get("position_embeddings")
        if embeddings is None:  # passed by position (after hidden_states) in some families
            embeddings = next(
                (a for a in args if isinstance(a, tuple) and len(a) == 2),
                None,
            )
        if embeddings is not None:
            self._rotary[module.layer_idx] = embeddings

    def __enter__(self) -> AttentionRecorder:
        if self.settings.rope == "pre" and self.rope_style != NO_ROPE:
            for module in self.modules:
                self._handles.append(
                    module.register_forward_pre_hook(self._keep_rotary, with_kwargs=True)
                )
        self._token = _ACTIVE_RECORDER.set(self)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._rotary.clear()
        if self._token is not None:
            _ACTIVE_RECORDER.reset(self._token)
            self._token = None

    # -- called by the attention function ---------------------------------------------------------
    def observe(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> None:
        """One layer's post-RoPE ``query`` ``[B, heads, T, d]`` and un-repeated ``key``, its mask
        and the attention keywords (``scaling``, ``sliding_window``, ``softcap``)."""
        layer = module.layer_idx
        if layer not in self._recorded:
            return
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = 1.0 / math.sqrt(self.head_dim)
        # ALiBi: the model adds its bias to a float mask (a boolean mask or none: causal only).
        bias = None
        if attention_mask is not None and attention_mask.is_floating_point():
            bias = attention_mask
        if self.heads is not None:
            # Only these query heads, each with its own KV head (h // groups), so groups = 1.
            groups = query.shape[1] // key.shape[1]
            query = query[:, self.heads]
            key = key[:, [head // groups for head in self.heads]]
            if bias is not None and bias.shape[1] > 1:
                bias = bias[:, self.heads]
        if self.settings.rope == "pre" and self.rope_style != NO_ROPE:
            cos, sin = self._rotary.pop(layer)
            query = undo_rope(query, cos, sin, self.rope_style)
            key = undo_rope(key, cos, sin, self.rope_style)
        transform = LogitTransform(kwargs.get("softcap"), bias)
        self.record(layer, query, key, scaling, kwargs.get("sliding_window"), transform)
        if self.stop_when_done and layer == self._last_recorded:
            raise RecordingComplete

    def record(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        scaling: float,
        sliding_window: int | None,
        transform: LogitTransform | None = None,
    ) -> None:
        """Store what this recorder measures of one layer's (selected) heads."""
        self.layers[layer] = head_metrics(
            query,
            key,
            scaling,
            self.settings,
            sliding_window=sliding_window,
            non_blocking=self.non_blocking_copies,
            transform=transform,
        )
        if self.keep_logits:
            # The scaled logits a = scaling·q kᵀ (masked) before the model's cap or bias, and
            # that transform: the temperature identity is a statement about a.
            self.logits[layer] = causal_logits(
                query,
                key.repeat_interleave(query.shape[1] // key.shape[1], dim=1),
                scaling,
                0,
                sliding_window,
            ).cpu()
            transform = transform or LogitTransform()
            bias = None if transform.bias is None else transform.bias.cpu()
            self.transforms[layer] = LogitTransform(transform.softcap, bias)


def head_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    settings: CaptureSettings,
    sliding_window: int | None = None,
    non_blocking: bool = False,
    transform: LogitTransform | None = None,
) -> dict[str, torch.Tensor]:
    """Metrics of every (sample, head, token) of one layer.

    ``query``: ``[B, heads, T, d]``; ``key``: ``[B, kv_heads, T, d]`` (un-repeated);
    ``transform``: the model's soft-cap and ALiBi bias (``[B, heads or 1, T, T]``). Returns
    ``[B, heads, T]`` tensors on the CPU. ``non_blocking``: from a GPU, queue the copies to the
    host (pinned memory) without waiting for them; the values are there only once the device has
    synchronized. Waiting for each layer's copies would stall the host, which then could not queue
    the next layer's kernels while the GPU runs.
    """
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    # Query head h = g_kv * groups + i reads KV head g_kv = h // groups: broadcast, don't copy.
    grouped_query = query.reshape(batch, kv_heads, groups, length, dim)
    grouped_key = key.unsqueeze(2)
    if transform is not None and transform.bias is not None:
        bias = transform.bias
        bias = bias.unflatten(1, (kv_heads, groups)) if bias.shape[1] == heads else bias[:, None]
        transform = LogitTransform(transform.softcap, bias)
    metrics = blocked_metrics(
        grouped_query,
        grouped_key,
        scaling,
        settings.k_eff_threshold,
        settings.query_block_size,
        sliding_window,
        transform,
    )
    out = {"query_norm": torch.linalg.vector_norm(query.float(), dim=-1)}
    for name in METRIC_NAMES:
        out[name] = getattr(metrics, name).reshape(batch, heads, length)
    out["entropy"][..., : settings.entropy_skip_tokens] = float("nan")
    return {name: value.to("cpu", non_blocking=non_blocking) for name, value in out.items()}


COLUMNS = (
    *ORIGINAL_CSV_COLUMNS,
    "sink_attn",
    "gain_max_attn",
    "gain_entropy",
)
VALUE_DTYPES = {
    "query_norm": np.float32,
    "entropy": np.float32,
    "max_attn": np.float32,
    "k_eff": np.int32,
    "sink_attn": np.float32,
    "gain_max_attn": np.float32,
    "gain_entropy": np.float32,
}


def to_columns(
    layers: dict[int, dict[str, torch.Tensor]], sample_ids: np.ndarray
) -> dict[str, np.ndarray]:
    """Long-format columns ordered by (sample_id, layer, head, token_pos)."""
    order = sorted(layers)
    first = layers[order[0]]["entropy"]
    batch, heads, length = first.shape
    n_layers = len(order)
    shape = (batch, n_layers, heads, length)
    columns = {
        "sample_id": np.broadcast_to(
            np.asarray(sample_ids, dtype=np.int32)[:, None, None, None], shape
        ).ravel(),
        "layer": np.broadcast_to(np.asarray(order, dtype=np.int16)[None, :, None, None], shape)
        .ravel()
        .copy(),
        "head": np.broadcast_to(np.arange(heads, dtype=np.int16)[None, None, :, None], shape)
        .ravel()
        .copy(),
        "token_pos": np.broadcast_to(np.arange(length, dtype=np.int32), shape).ravel().copy(),
    }
    for name, dtype in VALUE_DTYPES.items():
        stacked = torch.stack([layers[layer][name] for layer in order], dim=1)  # [B, L, H, T]
        columns[name] = stacked.numpy().astype(dtype, copy=False).ravel()
    return columns


def forward_for_metrics(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """Run ``input_ids`` through ``model`` for what an active recorder records, nothing else: with
    ``stop_when_done`` the pass ends after the last recorded layer's queries and keys (on a
    Llama-3-8B capture the last layer's attention and MLP, 1/32 of the pass, are not computed)."""
    with contextlib.suppress(RecordingComplete):
        model(input_ids=input_ids.to(input_device(model)), use_cache=False, logits_to_keep=1)


@torch.inference_mode()
def capture_batch(
    model: torch.nn.Module, input_ids: torch.Tensor, settings: CaptureSettings
) -> dict[int, dict[str, torch.Tensor]]:
    """One forward pass of ``input_ids`` ``[B, T]``; returns per-layer ``[B, heads, T]`` metrics."""
    gpus = cuda_devices(model)
    with AttentionRecorder(
        model, settings, non_blocking_copies=bool(gpus) and NON_BLOCKING_COPIES, stop_when_done=True
    ) as recorder:
        forward_for_metrics(model, input_ids)
        layers = recorder.layers
    # Every layer's copies to the host have landed: each was queued on its own layer's GPU.
    for device in gpus:
        torch.cuda.synchronize(device)
    expected = len(recorder.modules)
    if len(layers) != expected:
        raise RuntimeError(
            f"captured {len(layers)} of {expected} layers: the model did not call the capture "
            "attention function (is its attn_implementation overridden?)"
        )
    return layers


# How capture's Parquet files are encoded. Dictionary-encode only the id columns: on the metric
# floats it costs time and saves nothing.
PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": ["sample_id", "layer", "head"]}

# A row group holds whole samples, at least this many rows (unless its batch has fewer): one
# sample of a Llama-3-8B-shaped capture at 512 tokens is 524,288 rows, of the bench model 32,768.
ROW_GROUP_ROWS = 1 << 17


def row_group_tables(layers: dict[int, dict[str, torch.Tensor]], sample_ids: np.ndarray, schema):
    """Functions that each build the Arrow table of the next row group of one batch's metrics
    (per-layer ``[B, heads, T]`` tensors), so that several can be built at once."""
    from functools import partial

    batch, heads, length = next(iter(layers.values()))["entropy"].shape
    step = max(1, -(-ROW_GROUP_ROWS // (len(layers) * heads * length)))
    return [
        partial(
            arrow_table,
            {layer: {k: v[lo : lo + step] for k, v in m.items()} for layer, m in layers.items()},
            sample_ids[lo : lo + step],
            schema,
        )
        for lo in range(0, batch, step)
    ]


def arrow_table(layers: dict[int, dict[str, torch.Tensor]], sample_ids: np.ndarray, schema):
    import pyarrow as pa

    columns = to_columns(layers, sample_ids)
    # from_pandas: an undefined entropy (NaN) is stored as a Parquet null.
    arrays = [pa.array(columns[f.name], f.type, from_pandas=True) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def writer_threads_for(device: torch.device) -> int:
    """Threads that build and encode capture's row groups: the job's CPU threads (torch's), on a
    GPU but the one that drives it. On the CPU they share the cores with the metrics; the last
    batch's rows, written after its forward pass with nothing beside them, go faster on all of
    them (benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    return max(1, threads - 1) if device.type == "cuda" else threads


def parquet_schema(metadata: dict[str, str] | None = None):
    import pyarrow as pa

    fields = [
        ("sample_id", pa.int32()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("token_pos", pa.int32()),
        *((name, pa.from_numpy_dtype(dtype)) for name, dtype in VALUE_DTYPES.items()),
    ]
    return pa.schema(fields, metadata=metadata)


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


class _LogStream:
    """A file-like object that sends tqdm's progress lines to the log."""

    def write(self, text: str) -> None:
        if text.strip():
            logger.info(text.strip())

    def flush(self) -> None:
        pass


def capture_to_parquet(
    model: torch.nn.Module,
    tokens: np.ndarray,
    sample_ids: np.ndarray,
    out_path: str,
    settings: CaptureSettings,
    batch_size: int = 8,
    metadata: dict[str, str] | None = None,
    writer_threads: int = 1,
) -> int:
    """Capture ``tokens`` ``[n, T]`` batch by batch into one zstd Parquet file, written
    atomically. Returns the number of rows.

    Each batch's rows are written on a second thread while the next batch runs through the model,
    so on a GPU the CPU-bound columns and compression overlap the forward passes (at most one
    batch waits to be written). A batch's row groups (whole samples, at least
    :data:`ROW_GROUP_ROWS` rows each unless the batch has fewer) are built and encoded on
    ``writer_threads`` threads at once (:mod:`spectra_attn.model.parquet_parts`); the file's bytes
    do not depend on how many."""
    from tqdm import tqdm

    from spectra_attn.io import atomic_path
    from spectra_attn.model.parquet_parts import PartsWriter

    schema = parquet_schema(metadata)

    def write(writer, layers, ids) -> int:
        makers = row_group_tables(layers, ids, schema)
        writer.write_parts(makers)
        return sum(layer["entropy"].numel() for layer in layers.values())

    rows = 0
    with (
        atomic_path(out_path) as tmp,
        PartsWriter(tmp, schema, writer_threads, **PARQUET_OPTIONS) as writer,
        tqdm(
            total=len(tokens), unit="sample", file=_LogStream(), mininterval=10, ascii=True
        ) as progress,
        ThreadPoolExecutor(1, thread_name_prefix="spectra-parquet") as background,
    ):
        pending = None
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
            layers = capture_batch(model, batch, settings)
            if pending is not None:
                rows += pending.result()  # re-raises a failed write here
            pending = background.submit(
                write, writer, layers, sample_ids[start : start + batch_size]
            )
            progress.update(len(batch))
        if pending is not None:
            rows += pending.result()
    return rows


def check_tokenizer(spec: ModelSpec, manifest_path: str) -> None:
    """Fail when the model's own tokenizer is not the one that made the shards (the manifest
    records its sha256): its ids would mean other tokens to this model. A model folder without a
    tokenizer cannot be compared, and is said so in the log."""
    from spectra_attn.data.shards import load_tokenizer, read_manifest

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
    from spectra_attn.data.samples import load_samples, sample_table

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


def run_capture(
    spec: ModelSpec,
    manifest_path: str,
    out_path: str,
    *,
    sample_start: int,
    sample_stop: int,
    settings: CaptureSettings,
    batch_size: int = 8,
    metadata: dict[str, str] | None = None,
) -> int:
    """Capture samples ``[sample_start, sample_stop)`` of the shards into one Parquet file
    (``metadata`` added to its key-value metadata: provenance). Returns the number of rows."""
    from spectra_attn import __version__

    table, tokens, model = prepare(spec, manifest_path, sample_start, sample_stop)
    logger.info("capture settings: %s", settings)
    # The architecture, and what pre-RoPE means for it (pre = post without RoPE).
    architecture = {f"architecture.{k}": v for k, v in summary(model.config).items()}
    metadata = {
        "spectra_version": __version__,
        "model": str(spec.name_or_path),
        "dtype": spec.dtype,
        "rope": settings.rope,
        "k_eff_threshold": str(settings.k_eff_threshold),
        "entropy_skip_tokens": str(settings.entropy_skip_tokens),
        **(metadata or {}),
        **architecture,
    }
    threads = writer_threads_for(input_device(model))
    logger.info("Parquet row groups built and encoded on %d thread(s)", threads)
    rows = capture_to_parquet(
        model,
        tokens,
        table["sample_id"].to_numpy(),
        out_path,
        settings,
        batch_size,
        metadata,
        writer_threads=threads,
    )
    logger.info("wrote %d rows to %s", rows, out_path)
    return rows
