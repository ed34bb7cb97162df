"""Checks that gate everything after the intervention: each returns a JSON-able report with
``passed``, the tolerance and the measured deviations, and each is proven (in the tests) to fail
on a deliberately broken intervention.

* baseline sanity: no intervention vs scale 1.0 — the head's metrics and the output logits agree;
* isolation: at the target layer only the target head's query changes, by exactly the factor s;
  other heads' queries and all keys and values are unchanged;
* temperature identity: the head's attention at scale s equals softmax(s·z) of its baseline
  logits z.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from spectra_attn.capture import (
    AttentionRecorder,
    CaptureSettings,
    ModelSpec,
    attention_module,
    head_dim,
    pre_rope_source,
)
from spectra_attn.gates import TOLERANCES, require
from spectra_attn.gates import CheckFailed as CheckFailed  # raised by require(); re-exported
from spectra_attn.intervention import TOKEN_METRICS, HeadSpec, QueryScaler, query_source


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
    input_ids = input_ids.to(model.device)
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
    """Queries (pre-RoPE), keys and values of the target layer with and without the
    intervention at ``scale``."""
    input_ids = input_ids.to(model.device)
    attention = attention_module(model, spec.layer)
    sources = {
        "query": query_source(model, spec.layer),
        "key": pre_rope_source(attention, "k"),
        "value": attention.v_proj,
    }
    width = head_dim(model.config)

    def record(factors):
        seen: dict[str, torch.Tensor] = {}
        with _scaled(scaler_class, model, spec, factors):
            handles = [  # registered after the scaler, so they see its output
                module.register_forward_hook(
                    lambda m, i, o, name=name: seen.__setitem__(
                        name, o.detach().float().cpu().reshape(*o.shape[:2], -1, width)
                    )
                )
                for name, module in sources.items()
            ]
            try:
                model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
            finally:
                for handle in handles:
                    handle.remove()
        return seen

    base = record(None)
    scaled = record(torch.full((len(input_ids),), float(scale)))
    others = [h for h in range(base["query"].shape[2]) if h != spec.head]
    deviations = {
        "target_query_vs_scale_times_baseline": _relative(
            scaled["query"][:, :, spec.head], scale * base["query"][:, :, spec.head]
        ),
        "other_queries": _relative(scaled["query"][:, :, others], base["query"][:, :, others]),
        "keys": _relative(scaled["key"], base["key"]),
        "values": _relative(scaled["value"], base["value"]),
    }
    return _report("isolation", spec, tolerance_for(model), deviations, scale=scale)


@torch.inference_mode()
def temperature_identity(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    spec: HeadSpec,
    scales: list[float],
    settings: CaptureSettings,
    scaler_class: type[QueryScaler] = QueryScaler,
) -> dict[str, Any]:
    """The head's attention probabilities at each scale s against softmax(s·z) of its baseline
    logits z (max absolute difference of probabilities)."""
    input_ids = input_ids.to(model.device)

    def logits_with(factors):
        recorder = AttentionRecorder(
            model, settings, layers={spec.layer}, heads=[spec.head], keep_logits=True
        )
        with _scaled(scaler_class, model, spec, factors), recorder:
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        return recorder.logits[spec.layer].double()  # [B, 1, T, T]

    base = logits_with(None)
    deviations = {}
    for scale in scales:
        intervened = logits_with(torch.full((len(input_ids),), float(scale)))
        expected = torch.softmax(scale * base, dim=-1)
        deviations[f"scale_{scale:g}"] = (
            (torch.softmax(intervened, dim=-1) - expected).abs().max().item()
        )
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

    from spectra_attn.capture import prepare
    from spectra_attn.intervention import check_heads
    from spectra_attn.io import write_json

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
