"""The decoder architectures Spectra reads: one table, one row per transformers ``model_type``.

Capture and the intervention work inside the attention function the model calls through
transformers' ``AttentionInterface`` (:mod:`spectra_attn.model.capture`). There every architecture
hands over the same things: the post-RoPE query ``[B, heads, T, d]``, the un-repeated keys and
values, the mask, and as keywords the logit scale it really uses (``scaling``), its sliding window
and its soft-cap. What differs between families, and what this table says, is

* where the attention modules are (their class, each with a ``layer_idx``);
* how queries and keys are projected (separate ``q_proj``/``k_proj`` or one fused projection);
* the rotary embedding: rotate-half (Llama), interleaved pairs (Cohere), partial (the first
  ``partial_rotary_factor · d`` dimensions only: GPT-NeoX, Phi-3, StableLM) or none (GPT-2,
  Falcon with ALiBi). Pre-RoPE capture undoes the rotation on the rotary dimensions only, with the
  (cos, sin) the module received: what is left is the query after any q/k norm (and OLMo's clamp),
  before the rotation. Without RoPE, pre = post;
* the logit scale, soft-capping (Gemma-2: z = c·tanh(a/c)), ALiBi (Falcon: a bias per head and key
  that the model adds to its float mask), sliding-window layers and q/k norms, for the docs and
  the run's metadata (the values themselves come from the module at run time);
* the oldest transformers version known to give the right answer (pyproject's floor unless a
  family needs more).

A ``model_type`` not in the table is refused before the weights load (issue 16, item 6: an
unknown attention cannot be trusted without its own tests); bloom and gpt_neo (they do not call the
AttentionInterface) and models with learned attention sinks (gpt-oss: a per-head logit outside the
softmax's keys, which the metrics would not see) are refused with the reason.

Free of torch: preflight reads a model's ``config.json`` with it, before any job starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import Any

from packaging.version import Version


class UnsupportedModelError(ValueError):
    """The model's architecture is not one whose attention Spectra knows how to read."""


ROTATE_HALF = "rotate_half"  # pairs (i, i + r/2), cos/sin as cat(freqs, freqs)
INTERLEAVED = "interleaved"  # pairs (2i, 2i + 1), cos/sin as repeat_interleave(freqs, 2)
NO_ROPE = "none"


@dataclass(frozen=True)
class Architecture:
    """What capture and the sweep need to know of one ``model_type``."""

    model_type: str
    attention_class: str  # the self-attention module's class; every one has a layer_idx
    qk_layout: str  # how queries and keys are projected
    rope: str  # ROTATE_HALF, INTERLEAVED or NO_ROPE (Falcon: per config, see rope_style)
    scale: str  # the logit scale the model really uses (module.scaling)
    qk_norm: str = "none"
    partial_rotary: bool = False  # may rotate only the first partial_rotary_factor · d dims
    softcap: bool = False  # z = c·tanh(a/c), c = attn_logit_softcapping
    alibi: bool = False  # may add ALiBi's per-head bias to the float mask (Falcon: config.alibi)
    sliding_window: str = "none"
    min_transformers: str = "5.0"
    # What "the query scaled after the norm and before RoPE" means where it is not plain.
    intervention_note: str = ""
    # config.json keys (layers, heads, max positions) where they are not the usual names.
    raw_keys: tuple[str, str, str] = (
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
    )


_SEPARATE = "separate q_proj, k_proj, v_proj"
_INV_SQRT_D = "1/sqrt(head_dim)"

_GEMMA3_TEXT = Architecture(
    "gemma3_text",
    "Gemma3Attention",
    _SEPARATE,
    ROTATE_HALF,
    "query_pre_attn_scalar^-1/2",
    qk_norm="per-head RMSNorm q_norm/k_norm on [batch, heads, T, d]",
    sliding_window="layers marked sliding_attention (local RoPE base) in layer_types",
)

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture("llama", "LlamaAttention", _SEPARATE, ROTATE_HALF, _INV_SQRT_D),
        Architecture(
            "mistral",
            "MistralAttention",
            _SEPARATE,
            ROTATE_HALF,
            _INV_SQRT_D,
            sliding_window="every layer when config.sliding_window is set",
        ),
        Architecture(
            "qwen2",
            "Qwen2Attention",
            _SEPARATE + " (q/k/v biases)",
            ROTATE_HALF,
            _INV_SQRT_D,
            sliding_window="layers marked sliding_attention in config.layer_types",
        ),
        Architecture(
            "qwen3",
            "Qwen3Attention",
            _SEPARATE,
            ROTATE_HALF,
            _INV_SQRT_D,
            qk_norm="per-head RMSNorm q_norm/k_norm",
            sliding_window="layers marked sliding_attention in config.layer_types",
        ),
        Architecture(
            "olmo2",
            "Olmo2Attention",
            _SEPARATE,
            ROTATE_HALF,
            _INV_SQRT_D,
            qk_norm="RMSNorm q_norm/k_norm across all heads",
        ),
        Architecture(
            "olmo",
            "OlmoAttention",
            _SEPARATE,
            ROTATE_HALF,
            _INV_SQRT_D,
            qk_norm="the clip_qkv clamp (to ±clip_qkv, when set; no norm)",
            intervention_note=(
                "with clip_qkv the scaled query is the clamped one: s·clamp(W_q x), so a scale "
                "can take a coordinate beyond ±clip_qkv"
            ),
        ),
        Architecture(
            "gpt2",
            "GPT2Attention",
            "fused c_attn (Conv1D): [q | k | v] along the output, hidden_size each",
            NO_ROPE,
            "1/sqrt(head_dim) if scale_attn_weights, divided by layer_idx + 1 if "
            "scale_attn_by_inverse_layer_idx",
            raw_keys=("n_layer", "n_head", "n_positions"),
        ),
        Architecture(
            "gpt_neox",
            "GPTNeoXAttention",
            "fused query_key_value: per head [q | k | v] (head-major)",
            ROTATE_HALF,
            _INV_SQRT_D,
            partial_rotary=True,
        ),
        Architecture("gemma", "GemmaAttention", _SEPARATE, ROTATE_HALF, _INV_SQRT_D),
        Architecture(
            "gemma2",
            "Gemma2Attention",
            _SEPARATE,
            ROTATE_HALF,
            "query_pre_attn_scalar^-1/2",
            softcap=True,
            sliding_window="layers marked sliding_attention in config.layer_types",
        ),
        _GEMMA3_TEXT,
        # A multimodal checkpoint (Gemma3ForConditionalGeneration): its text model is read.
        replace(_GEMMA3_TEXT, model_type="gemma3"),
        Architecture(
            "phi3",
            "Phi3Attention",
            "fused qkv_proj: [q (heads·d) | k (kv_heads·d) | v (kv_heads·d)]",
            ROTATE_HALF,
            _INV_SQRT_D,
            partial_rotary=True,
            sliding_window="every layer when config.sliding_window is set",
        ),
        Architecture(
            "granite",
            "GraniteAttention",
            _SEPARATE,
            ROTATE_HALF,
            "config.attention_multiplier",
        ),
        Architecture(
            "stablelm",
            "StableLmAttention",
            _SEPARATE,
            ROTATE_HALF,
            _INV_SQRT_D,
            qk_norm="per-head LayerNorm q_layernorm/k_layernorm when qk_layernorm",
            partial_rotary=True,
            # Before 5.2 StableLM built its own SDPA mask, ignoring the registered mask function.
            min_transformers="5.2",
        ),
        Architecture(
            "cohere",
            "CohereAttention",
            _SEPARATE,
            INTERLEAVED,
            _INV_SQRT_D,
            qk_norm="LayerNorm q_norm/k_norm over [heads, d] when use_qk_norm",
        ),
        Architecture(
            "falcon",
            "FalconAttention",
            "fused query_key_value: [q heads | k | v] (multi_query), per KV group "
            "[q… | k | v] (new_decoder_architecture) or per head [q | k | v]",
            ROTATE_HALF,
            _INV_SQRT_D,
            alibi=True,
            # Falcon's attention called the AttentionInterface from 5.25 on (before: its own
            # SDPA/eager code, which capture cannot see).
            min_transformers="5.25",
            # The first Falcon checkpoints' config.json (falcon-7b) say n_layer, n_head.
            raw_keys=("n_layer", "n_head", "max_position_embeddings"),
        ),
    )
}

REFUSED: dict[str, str] = {
    "bloom": "BLOOM's attention does not call transformers' AttentionInterface",
    "gpt_neo": "GPT-Neo's attention does not call transformers' AttentionInterface",
    "gpt_oss": (
        "gpt-oss has learned attention sinks: a per-head logit outside the keys that takes part "
        "in the softmax, which the metrics (over the keys) would not account for"
    ),
}


def check_transformers_version(arch: Architecture, installed: str | None = None) -> None:
    """Raise :class:`UnsupportedModelError` when the installed transformers is older than the
    oldest version known to give this architecture's attention to capture."""
    installed = installed or version("transformers")
    if Version(installed) < Version(arch.min_transformers):
        raise UnsupportedModelError(
            f"model_type {arch.model_type!r} needs transformers >= {arch.min_transformers} "
            f"(installed: {installed}): older versions compute its attention without calling the "
            "AttentionInterface, so capture would not see it"
        )


def logit_scale(module: Any, scaling: float | None) -> float | None:
    """The scale the model's own eager attention applies to q·kᵀ: the ``scaling`` keyword where
    the model passes one, else ``module.scaling``, else GPT-2's rule (transformers before ~5.12
    passed no scaling, and its SDPA path then used 1/√d even with
    ``scale_attn_by_inverse_layer_idx``): 1/√d if ``scale_attn_weights``, ÷ (layer_idx + 1)."""
    if scaling is not None:
        return scaling
    own = getattr(module, "scaling", None)
    if own is not None:
        return own
    if hasattr(module, "scale_attn_by_inverse_layer_idx"):
        scale = module.head_dim**-0.5 if module.scale_attn_weights else 1.0
        if module.scale_attn_by_inverse_layer_idx:
            scale /= module.layer_idx + 1
        return scale
    return None


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(ARCHITECTURES))


def _describe(config: Any) -> tuple[str | None, str]:
    if isinstance(config, Mapping):
        model_type, architectures = config.get("model_type"), config.get("architectures")
    else:
        model_type = getattr(config, "model_type", None)
        architectures = getattr(config, "architectures", None)
    return model_type, ", ".join(map(str, architectures or [model_type]))


def architecture_for(config: Any) -> Architecture:
    """The table's row for a transformers config (or a ``config.json`` dict); raises
    :class:`UnsupportedModelError`, saying why and what is supported, for any other."""
    model_type, names = _describe(config)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    why = REFUSED.get(model_type, "its attention has not been tested against its eager attention")
    raise UnsupportedModelError(
        f"unsupported model architecture {names} (model_type {model_type!r}): {why}. "
        f"Spectra reads the attention of: {', '.join(supported_model_types())}"
    )


def text_config(config: Any) -> Any:
    """The config of the language model: the nested text config of a multimodal checkpoint
    (Gemma-3), else the config itself (a transformers config or a ``config.json`` dict)."""
    if isinstance(config, Mapping):
        return raw_text_config(config)
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def _value(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def raw_text_config(shape: Mapping[str, Any]) -> Mapping[str, Any]:
    """:func:`text_config` of a ``config.json`` dict."""
    nested = shape.get("text_config")
    return nested if isinstance(nested, Mapping) else shape


def raw_shape(shape: Mapping[str, Any]) -> dict[str, int | None]:
    """Layers, heads and the longest context of a supported model from its ``config.json``."""
    arch = architecture_for(shape)
    text = raw_text_config(shape)
    layers, heads, positions = arch.raw_keys
    return {
        "layers": text.get(layers, text.get("num_hidden_layers")),
        "heads": text.get(heads, text.get("num_attention_heads")),
        "max_positions": text.get(positions, text.get("max_position_embeddings")),
    }


def rope_style(config: Any) -> str:
    """How this model rotates its queries and keys: :data:`ROTATE_HALF`, :data:`INTERLEAVED` or
    :data:`NO_ROPE` (GPT-2; Falcon with ALiBi)."""
    arch = architecture_for(config)
    if arch.alibi and _value(text_config(config), "alibi", False):
        return NO_ROPE
    return arch.rope


def pre_rope_meaning(config: Any) -> str:
    """What ``capture.rope: pre`` measures for this model, for the Parquet metadata and
    ``spectra config show``."""
    if rope_style(config) == NO_ROPE:
        model_type, _ = _describe(config)
        return f"same as post-RoPE: {model_type} has no rotary embedding"
    arch = architecture_for(config)
    after = "after " + arch.qk_norm if arch.qk_norm != "none" else "after the projections"
    partial = ", unrotated dimensions as they are" if arch.partial_rotary else ""
    return f"queries and keys {after}, before the rotation{partial}"


def summary(config: Any) -> dict[str, str]:
    """The table's row for a model as strings (Parquet metadata)."""
    arch = architecture_for(config)
    text = text_config(config)
    out = {
        "model_type": arch.model_type,
        "rope_style": rope_style(config),
        "pre_rope": pre_rope_meaning(config),
        "logit_scale": arch.scale,
    }
    softcap = _value(text, "attn_logit_softcapping") if arch.softcap else None
    if softcap is not None:
        out["softcap"] = str(softcap)
    if arch.alibi and _value(text, "alibi", False):
        out["alibi"] = "true"
    if arch.intervention_note:
        out["intervention_note"] = arch.intervention_note
    return out
