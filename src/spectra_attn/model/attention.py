"""The attention function Spectra registers with transformers (``AttentionInterface``), and the
recorder it feeds.

Every architecture of :mod:`spectra_attn.model.architectures` calls the registered function with
its post-RoPE query ``[B, heads, T, d]``, its un-repeated keys, its mask and the logit scale,
sliding window and soft-cap it really uses. (TransformerLens would call the two kinds
``hook_rot_q``/``hook_q``.) The function applies the active edits (the intervention's query
scaler, the isolation check's probe), hands the tensors to the active :class:`AttentionRecorder`,
and computes the layer's output:

* ``rope="post"``: the recorder measures softmax(transform(scaling·q kᵀ) + causal mask), the
  attention the model computes itself: ``transform`` is the model's soft-cap (Gemma-2) and the
  ALiBi bias it adds to its float mask (Falcon); see
  :class:`~spectra_attn.model.metrics.LogitTransform`.
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
import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from spectra_attn.model.architectures import (
    INTERLEAVED,
    NO_ROPE,
    UnsupportedModelError,
    architecture_for,
    logit_scale,
    rope_style,
    text_config,
)
from spectra_attn.model.metrics import METRIC_NAMES, LogitTransform, blocked_metrics, causal_logits

ATTN_IMPLEMENTATION = "spectra_capture"


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


@dataclass(frozen=True)
class CaptureSettings:
    rope: str = "pre"
    k_eff_threshold: float = 0.9
    entropy_skip_tokens: int = 2
    query_block_size: int = 128

    def __post_init__(self) -> None:
        if self.rope not in ("pre", "post"):
            raise ValueError(f"capture.rope must be 'pre' or 'post', not {self.rope!r}")


def register_attention() -> None:
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
