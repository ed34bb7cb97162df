"""Query-scaling intervention (seed: Phase-1 Experiment 1).

The query of one head (layer L, head h) is multiplied by s after the query projection and any
q norm, and before the rotary embedding, on every architecture of
:mod:`spectra_attn.model.architectures`: the capture attention function scales ``query[:, h]`` of
the post-RoPE query ``[B, heads, T, d]`` it receives, which is the same thing, RoPE being a rotation
(R(s·q) = s·R(q)). A scale applied to a projection's output instead would be normalised away by a
q norm (Qwen3, OLMo-2, StableLM's per-head LayerNorm), or hit token h of every head where the norm
runs on ``[B, heads, T, d]`` (Gemma-3). Nothing else in the model changes.

Scaling q by s multiplies the head's logits by s, so the head's own metrics follow from its
baseline logits alone (softmax(s·z): a temperature); the model's next-token loss and the
KL(baseline ‖ intervened) of its output distribution are what only a real forward pass can tell.
All scales of one head run in one batched forward pass, each batch element with its own scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from spectra_attn.io import write_csv, write_parquet
from spectra_attn.model.architectures import text_config
from spectra_attn.model.attention import (
    AttentionRecorder,
    CaptureSettings,
    attention_edit,
    attention_module,
    token_mean,
)
from spectra_attn.model.loading import ModelSpec, input_device, prepare

logger = logging.getLogger(__name__)

# The original project's expectations, printed before every sweep: metric → (direction, strength).
EXPECTED_DIRECTIONS = {
    "entropy": ("decreasing", "strongest"),
    "max_attn": ("increasing", "medium"),
    "k_eff": ("decreasing", "weakest"),
}
TOKEN_METRICS = ("query_norm", "entropy", "max_attn", "k_eff")


@dataclass(frozen=True)
class HeadSpec:
    layer: int
    head: int
    role: str = "target"

    @property
    def name(self) -> str:
        return f"L{self.layer}_H{self.head}"


def check_heads(heads: list[HeadSpec], model_config: Any) -> None:
    """Fail, naming the entry, when a layer or head does not exist in the model."""
    model_config = text_config(model_config)
    n_layers = model_config.num_hidden_layers
    n_heads = model_config.num_attention_heads
    for spec in heads:
        if not 0 <= spec.layer < n_layers:
            raise ValueError(
                f"intervention head {spec.name} ({spec.role}): layer {spec.layer} is out of range; "
                f"the model has layers 0-{n_layers - 1}"
            )
        if not 0 <= spec.head < n_heads:
            raise ValueError(
                f"intervention head {spec.name} ({spec.role}): head {spec.head} is out of range; "
                f"the model has heads 0-{n_heads - 1} per layer"
            )


class QueryScaler:
    """While active, multiplies head ``head`` of layer ``layer``'s query by ``scales[b]`` for
    batch element ``b``, in the capture attention function (the model must use it:
    :func:`~spectra_attn.model.loading.use_capture_attention`)."""

    def __init__(self, model: torch.nn.Module, layer: int, head: int, scales: torch.Tensor):
        self.model = model
        self.layer = layer
        self.head = head
        self.scales = scales
        self._context = None

    def scale_query(self, query: torch.Tensor) -> torch.Tensor:
        """``query`` ``[B, heads, T, d]`` with head ``self.head`` of element b scaled by
        ``scales[b]``."""
        scaled = query.clone()
        factor = self.scales.to(device=query.device, dtype=query.dtype)
        scaled[:, self.head] *= factor.view(-1, 1, 1)
        return scaled

    def edit(self, module, query, key, value):
        if module.layer_idx != self.layer:
            return query, key, value
        return self.scale_query(query), key, value

    def __enter__(self) -> QueryScaler:
        self._context = attention_edit(self.edit)
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None


def decoder_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The decoder layer whose self-attention module has ``layer_idx == layer``."""
    attention = attention_module(model, layer)
    return next(m for m in model.modules() if any(c is attention for c in m.children()))


class SharedPrefix:
    """While active, the layers before ``layer`` run once per sample and every sample is
    repeated ``copies`` times from ``layer`` on: the scales of a sweep differ only from the
    intervened layer, so recomputing the layers below it once per scale would be wasted work."""

    def __init__(self, model: torch.nn.Module, layer: int, copies: int):
        self.module = decoder_layer(model, layer)
        self.copies = copies
        self._handle = None

    def expand(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        batch = hidden.shape[0]

        def repeat(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch > 1:
                return value.repeat_interleave(self.copies, dim=0)
            if isinstance(value, tuple):  # position_embeddings = (cos, sin)
                return tuple(repeat(v) for v in value)
            return value

        kwargs = {name: repeat(value) for name, value in kwargs.items()}
        if args:
            args = (hidden.repeat_interleave(self.copies, dim=0), *map(repeat, args[1:]))
        else:
            kwargs["hidden_states"] = hidden.repeat_interleave(self.copies, dim=0)
        return args, kwargs

    def __enter__(self) -> SharedPrefix:
        self._handle = self.module.register_forward_pre_hook(self.expand, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def output_effects(base_logits: torch.Tensor, logits: torch.Tensor, input_ids: torch.Tensor):
    """Per intervened sequence: mean next-token loss and mean KL(baseline ‖ intervened) over
    positions, in float32.

    ``base_logits`` and ``input_ids`` hold the n samples ([n, T, V], [n, T]); ``logits`` holds
    each sample's S intervened copies in a row ([n·S, T, V]). The baseline's log-softmax is taken
    once per sample and broadcast over its copies. Returns [n·S] tensors.
    """
    n_samples = base_logits.shape[0]
    log_p = torch.log_softmax(logits.float(), dim=-1).unflatten(0, (n_samples, -1))
    log_base = torch.log_softmax(base_logits.float(), dim=-1).unsqueeze(1)  # [n, 1, T, V]
    targets = input_ids[:, None, 1:, None].to(log_p.device).expand(*log_p.shape[:2], -1, 1)
    loss = -log_p[:, :, :-1].gather(-1, targets).squeeze(-1).mean(-1)
    kl = (log_base.exp() * (log_base - log_p)).sum(-1).mean(-1)
    return loss.flatten().cpu(), kl.flatten().clamp(min=0.0).cpu()


@torch.inference_mode()
def sweep_batch(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    spec: HeadSpec,
    scales: list[float],
    settings: CaptureSettings,
    scaler_class: type[QueryScaler] = QueryScaler,
) -> dict[str, torch.Tensor]:
    """All scales of ``spec`` for the samples ``input_ids`` [n, T], in two passes: the unmodified
    model, then one pass whose batch grows to n × len(scales) elements at the intervened layer
    (:class:`SharedPrefix`), each element with its own scale.

    Returns tensors indexed [sample, scale, ...]: token metrics [n, S, T] and loss, kl [n, S].
    """
    input_ids = input_ids.to(input_device(model))
    n_samples, n_scales = input_ids.shape[0], len(scales)
    base_logits = model(input_ids=input_ids, use_cache=False).logits
    factors = torch.tensor(scales, dtype=torch.float32).repeat(n_samples)
    recorder = AttentionRecorder(model, settings, layers={spec.layer}, heads=[spec.head])
    with (
        SharedPrefix(model, spec.layer, n_scales),
        scaler_class(model, spec.layer, spec.head, factors),
        recorder,
    ):
        logits = model(input_ids=input_ids, use_cache=False).logits
    loss, kl = output_effects(base_logits, logits, input_ids)
    metrics = recorder.layers[spec.layer]
    out = {name: metrics[name][:, 0].reshape(n_samples, n_scales, -1) for name in TOKEN_METRICS}
    out["loss"] = loss.reshape(n_samples, n_scales)
    out["kl"] = kl.reshape(n_samples, n_scales)
    return out


def run_sweep(
    model: torch.nn.Module,
    tokens: np.ndarray,
    sample_ids: np.ndarray,
    spec: HeadSpec,
    scales: list[float],
    settings: CaptureSettings,
    batch_size: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep of one head over ``tokens`` [n, T]. Returns the per-token table
    (layer, head, role, scale, sample_id, token_pos, query_norm, entropy, max_attn, k_eff) and the
    per-sample table (the same keys without token_pos; token means over positions with a defined
    entropy; loss; kl)."""
    log_expectations(spec)
    token_frames, sample_frames = [], []
    length = tokens.shape[1]
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
        result = sweep_batch(model, ids, spec, scales, settings)
        n = len(ids)
        shape = (n, len(scales), length)
        token_frames.append(
            pd.DataFrame(
                {
                    "layer": np.int16(spec.layer),
                    "head": np.int16(spec.head),
                    "role": spec.role,
                    "scale": np.broadcast_to(
                        np.asarray(scales, np.float32)[None, :, None], shape
                    ).ravel(),
                    "sample_id": np.broadcast_to(sample_ids[start : start + n, None, None], shape)
                    .ravel()
                    .astype(np.int32),
                    "token_pos": np.broadcast_to(np.arange(length, dtype=np.int32), shape).ravel(),
                    **{name: result[name].numpy().ravel() for name in TOKEN_METRICS},
                }
            )
        )
        per_sample = {
            name: token_mean(result[name], settings).numpy().ravel() for name in TOKEN_METRICS
        }
        sample_frames.append(
            pd.DataFrame(
                {
                    "layer": np.int16(spec.layer),
                    "head": np.int16(spec.head),
                    "role": spec.role,
                    "scale": np.tile(np.asarray(scales, np.float32), n),
                    "sample_id": np.repeat(sample_ids[start : start + n], len(scales)).astype(
                        np.int32
                    ),
                    **per_sample,
                    "loss": result["loss"].numpy().ravel(),
                    "kl": result["kl"].numpy().ravel(),
                }
            )
        )
        logger.info("swept samples %d-%d of %d", start, start + n - 1, len(tokens))
    tokens_table = pd.concat(token_frames, ignore_index=True)
    samples_table = pd.concat(sample_frames, ignore_index=True)
    log_observations(spec, trend_analysis(samples_table))
    return tokens_table, samples_table


def log_expectations(spec: HeadSpec) -> None:
    logger.info("expected as the query of %s (%s) is scaled up:", spec.name, spec.role)
    for metric, (direction, strength) in EXPECTED_DIRECTIONS.items():
        logger.info("  %-9s %s (%s effect)", metric, direction, strength)


def trend_analysis(samples_table: pd.DataFrame) -> pd.DataFrame:
    """Per head and metric: the mean over samples at each scale, Spearman ρ of those means
    against the scale, whether they are strictly monotonic, and whether the direction is the
    expected one."""
    from scipy.stats import spearmanr

    rows = []
    for (layer, head, role), group in samples_table.groupby(["layer", "head", "role"], sort=True):
        means = group.groupby("scale").mean(numeric_only=True).sort_index()
        for metric, (expected, strength) in EXPECTED_DIRECTIONS.items():
            values = means[metric].to_numpy()
            steps = np.diff(values)
            increasing, decreasing = bool((steps > 0).all()), bool((steps < 0).all())
            rho = spearmanr(means.index.to_numpy(), values).statistic if len(values) > 2 else np.nan
            observed = (
                "increasing" if increasing else "decreasing" if decreasing else "not monotonic"
            )
            rows.append(
                {
                    "layer": int(layer),
                    "head": int(head),
                    "role": role,
                    "metric": metric,
                    "expected": expected,
                    "expected_strength": strength,
                    "observed": observed,
                    "spearman_rho": float(rho),
                    "monotonic": increasing or decreasing,
                    "as_expected": observed == expected,
                    "first_scale_mean": float(values[0]),
                    "last_scale_mean": float(values[-1]),
                }
            )
    return pd.DataFrame(rows)


def log_observations(spec: HeadSpec, trends: pd.DataFrame) -> None:
    logger.info("observed for %s (%s):", spec.name, spec.role)
    for row in trends.itertuples():
        logger.info(
            "  %-9s %s (expected %s), Spearman rho %+.3f, %.4g → %.4g",
            row.metric,
            row.observed,
            row.expected,
            row.spearman_rho,
            row.first_scale_mean,
            row.last_scale_mean,
        )


def scale_summary_table(samples_table: pd.DataFrame) -> pd.DataFrame:
    """The original project's q_scale_intervention_results.csv: one row per scale, mean and standard
    deviation over samples of each metric, with the loss and KL."""
    grouped = samples_table.groupby(["layer", "head", "role", "scale"], sort=True)
    table = grouped[["entropy", "max_attn", "k_eff", "query_norm", "loss", "kl"]].agg(
        ["mean", "std"]
    )
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["n_samples"] = grouped.size()
    return table.reset_index()


def run_head_sweep(
    model: ModelSpec,
    manifest_path: str,
    spec: HeadSpec,
    scales: list[float],
    n_samples: int,
    settings: CaptureSettings,
    outputs: dict[str, str],
    batch_size: int = 1,
    metadata: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The sweep job of one head: writes ``outputs`` (tokens, sweep Parquet with ``metadata`` in
    their key-value metadata; scale_summary, trends CSV), each atomically. Returns the trend
    analysis."""
    table, tokens, loaded = prepare(
        model, manifest_path, 0, n_samples, lambda config: check_heads([spec], config)
    )
    logger.info("sweep of %s (%s): scales %s, %s", spec.name, spec.role, scales, settings)
    token_table, sample_table = run_sweep(
        loaded, tokens, table["sample_id"].to_numpy(), spec, scales, settings, batch_size
    )
    trends = trend_analysis(sample_table)
    write_parquet(token_table, outputs["tokens"], metadata)
    write_parquet(sample_table, outputs["sweep"], metadata)
    write_csv(scale_summary_table(sample_table), outputs["scale_summary"])
    write_csv(trends, outputs["trends"])
    return trends
