"""Checks that gate everything after the intervention: each returns a JSON-able report with
``passed``, the tolerance and the measured deviations, and each is proven (in the tests) to fail
on a deliberately broken intervention.

* baseline sanity: no intervention vs scale 1.0 — the head's metrics and the output logits agree;
* isolation: at the target layer only the target head's query changes, by exactly the factor s;
  other heads' queries and all keys and values are unchanged. They are read as the attention
  uses them (after the scaler; post-RoPE, whose ratios are the pre-RoPE ones, RoPE being a
  rotation), so a scale applied before a q norm (normalised away), on the wrong head, or on the
  token axis (a [B, heads, T, d] tensor read as [B, T, heads, d]) fails;
* temperature identity: the head's attention at scale s equals softmax(s·a) of its baseline
  scaled logits a, through the model's own soft-cap and ALiBi bias where it has them:
  softmax(c·tanh(s·a/c) + b).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from spectra_attn.gates import TOLERANCES, require
from spectra_attn.gates import CheckFailed as CheckFailed  # raised by require(); re-exported
from spectra_attn.io import write_json
from spectra_attn.model.architectures import architecture_for
from spectra_attn.model.attention import AttentionRecorder, CaptureSettings, attention_edit
from spectra_attn.model.intervention import TOKEN_METRICS, HeadSpec, QueryScaler, check_heads
from spectra_attn.model.loading import ModelSpec, input_device, prepare
from spectra_attn.model.metrics import MASKED_LOGIT


def tolerance_for(model: torch.nn.Module) -> float:
    name = str(next(model.parameters()).dtype).removeprefix("torch.")
    return TOLERANCES[name]


def _report(check: str, spec: HeadSpec, tolerance: float, deviations: dict[str, float], **extra):
    worst = max(deviations.values()) if deviations else 0.0
    return {
        "check": check,
        "layer": spec.layer,
        "head": spec.head,
        "role": spec.role,
        "passed": bool(worst <= tolerance),
        "tolerance": tolerance,
        "max_deviation": worst,
        "deviations": deviations,
        **extra,
    }


def _scaled(scaler_class, model, spec: HeadSpec, factors: torch.Tensor | None):
    """The intervention at ``factors``, or no hook at all when ``factors`` is None."""
    if factors is None:
        return contextlib.nullcontext()
    return scaler_class(model, spec.layer, spec.head, factors)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to max |b| (absolute when b is all zeros)."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


@torch.inference_mode()
def baseline_sanity(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    spec: HeadSpec,
    settings: CaptureSettings,
    scaler_class: type[QueryScaler] = QueryScaler,
) -> dict[str, Any]:
    """The model without a hook and with the hook at scale 1.0, on the same batch."""
    input_ids = input_ids.to(input_device(model))
    runs = []
    for factors in (None, torch.ones(len(input_ids))):
        recorder = AttentionRecorder(model, settings, layers={spec.layer}, heads=[spec.head])
        with _scaled(scaler_class, model, spec, factors), recorder:
            logits = model(input_ids=input_ids, use_cache=False).logits
        runs.append((logits.float().cpu(), recorder.layers[spec.layer]))
    (base_logits, base), (hooked_logits, hooked) = runs
    deviations = {"logits": _relative(hooked_logits, base_logits)}
    for name in TOKEN_METRICS:
        a, b = hooked[name].float(), base[name].float()
        finite = torch.isfinite(b)
        deviations[name] = _relative(a[finite], b[finite])
    return _report("baseline_sanity", spec, tolerance_for(model), deviations)


@torch.inference_mode()
def isolation(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    spec: HeadSpec,
    scale: float,
    scaler_class: type[QueryScaler] = QueryScaler,
) -> dict[str, Any]:
    """Queries, keys and values of the target layer, as its attention uses them, with and without
    the intervention at ``scale``. (The query read there is post-RoPE; RoPE rotates each vector,
    so the ratio of scaled to baseline is the pre-RoPE one.)"""
    input_ids = input_ids.to(input_device(model))

    def record(factors):
        seen: dict[str, torch.Tensor] = {}

        def probe(module, query, key, value):
            if module.layer_idx == spec.layer:
                for name, tensor in (("query", query), ("key", key), ("value", value)):
                    seen[name] = tensor.detach().float().cpu()  # [B, heads, T, d]
            return query, key, value

        # The probe is applied after the scaler, so it sees what the attention computes with.
        with _scaled(scaler_class, model, spec, factors), attention_edit(probe):
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        return seen

    base = record(None)
    scaled = record(torch.full((len(input_ids),), float(scale)))
    others = [h for h in range(base["query"].shape[1]) if h != spec.head]
    deviations = {
        "target_query_vs_scale_times_baseline": _relative(
            scaled["query"][:, spec.head], scale * base["query"][:, spec.head]
        ),
        "other_queries": _relative(scaled["query"][:, others], base["query"][:, others]),
        "keys": _relative(scaled["key"], base["key"]),
        "values": _relative(scaled["value"], base["value"]),
    }
    extra = {"scale": scale}
    note = architecture_for(model.config).intervention_note
    if note:
        extra["scaled_query"] = note
    return _report("isolation", spec, tolerance_for(model), deviations, **extra)


@torch.inference_mode()
def temperature_identity(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    spec: HeadSpec,
    scales: list[float],
    settings: CaptureSettings,
    scaler_class: type[QueryScaler] = QueryScaler,
) -> dict[str, Any]:
    """The head's attention probabilities at each scale s against softmax(transform(s·a)) of its
    baseline scaled logits a, transform being the model's soft-cap and ALiBi bias (the identity
    elsewhere: softmax(s·a)); max absolute difference of probabilities."""
    input_ids = input_ids.to(input_device(model))

    def logits_with(factors):
        recorder = AttentionRecorder(
            model, settings, layers={spec.layer}, heads=[spec.head], keep_logits=True
        )
        with _scaled(scaler_class, model, spec, factors), recorder:
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        transform = recorder.transforms[spec.layer]
        # [B, 1, T, T]; the model's logits of what was computed at this scale
        return recorder.logits[spec.layer].double(), transform

    base, transform = logits_with(None)
    masked = base == MASKED_LOGIT

    def probabilities(raw):
        z = transform.apply(raw.masked_fill(masked, MASKED_LOGIT))
        return torch.softmax(z, dim=-1)

    deviations = {}
    for scale in scales:
        intervened, _ = logits_with(torch.full((len(input_ids),), float(scale)))
        expected = probabilities(scale * base)
        deviations[f"scale_{scale:g}"] = (probabilities(intervened) - expected).abs().max().item()
    return _report(
        "temperature_identity", spec, tolerance_for(model), deviations, rope=settings.rope
    )


def run_check(
    check: str,
    model: ModelSpec,
    manifest_path: str,
    spec: HeadSpec,
    scales: list[float],
    n_samples: int,
    settings: CaptureSettings,
    out_path: str,
) -> dict[str, Any]:
    """Run one gate check on the first ``n_samples`` sequences, write its JSON report, and raise
    CheckFailed if it did not pass (after logging the whole report)."""
    import json
    import logging

    logger = logging.getLogger(__name__)
    _, tokens, loaded = prepare(
        model, manifest_path, 0, n_samples, lambda config: check_heads([spec], config)
    )
    input_ids = torch.from_numpy(tokens.astype("int64"))
    if check == "baseline_sanity":
        report = baseline_sanity(loaded, input_ids, spec, settings)
    elif check == "isolation":
        report = isolation(loaded, input_ids, spec, max(scales, key=lambda s: abs(s - 1.0)))
    elif check == "temperature_identity":
        report = temperature_identity(loaded, input_ids, spec, scales, settings)
    else:
        raise ValueError(f"unknown check {check!r}")
    report["n_samples"] = n_samples
    logger.info("%s report:\n%s", check, json.dumps(report, indent=2))
    require(report)
    write_json(out_path, report)
    return report
