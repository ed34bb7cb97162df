"""Gain atlas: the OLS gain of every head of the model, not only the intervened ones.

Scaling a head's query by s multiplies its logits by s, so the metrics of the intervened head at
scale s are those of softmax(s·z) of its own baseline logits z (the temperature identity that the
checks verify). While each layer's logits are in memory, the atlas computes them at every scale
for every head and keeps, per (sample, layer, head, scale), the mean over positions of max_attn,
entropy and k_eff — the same per-sample means as the hook-based sweep — without a forward pass per
scale or per head.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from spectra_attn.capture import AttentionRecorder, CaptureSettings, ModelSpec, head_metrics
from spectra_attn.gain import GAIN_METRICS, ols

logger = logging.getLogger(__name__)


class TemperatureRecorder(AttentionRecorder):
    """Per layer: token means of the gain metrics of every head at every temperature scale."""

    def __init__(self, model: torch.nn.Module, settings: CaptureSettings, scales: list[float]):
        super().__init__(model, settings)
        self.scales = scales

    def record(self, layer, query, key, scaling, sliding_window) -> None:
        valid = slice(self.settings.entropy_skip_tokens, None)
        per_scale = [
            head_metrics(query, key, scaling * scale, self.settings, sliding_window)
            for scale in self.scales
        ]
        self.layers[layer] = {
            metric: torch.stack([m[metric][..., valid].float().mean(-1) for m in per_scale], -1)
            for metric in GAIN_METRICS
        }  # each [B, heads, scales]


@torch.inference_mode()
def atlas_batch(model, input_ids: torch.Tensor, settings: CaptureSettings, scales: list[float]):
    with TemperatureRecorder(model, settings, scales) as recorder:
        model(input_ids=input_ids.to(model.device), use_cache=False, logits_to_keep=1)
    return recorder.layers


def atlas_table(
    model, tokens: np.ndarray, sample_ids: np.ndarray, settings, scales, batch_size: int = 8
) -> pd.DataFrame:
    """Rows (sample_id, layer, head, scale, max_attn, entropy, k_eff) of per-sample token means."""
    frames = []
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
        layers = atlas_batch(model, ids, settings, scales)
        for layer, metrics in sorted(layers.items()):
            batch, heads, n_scales = metrics["max_attn"].shape
            shape = (batch, heads, n_scales)
            frames.append(
                pd.DataFrame(
                    {
                        "sample_id": np.broadcast_to(
                            sample_ids[start : start + batch, None, None], shape
                        )
                        .ravel()
                        .astype(np.int32),
                        "layer": np.int16(layer),
                        "head": np.broadcast_to(np.arange(heads)[None, :, None], shape)
                        .ravel()
                        .astype(np.int16),
                        "scale": np.broadcast_to(np.asarray(scales, np.float32), shape).ravel(),
                        **{m: metrics[m].numpy().ravel() for m in GAIN_METRICS},
                    }
                )
            )
        logger.info("atlas: samples %d-%d done", start, start + len(ids) - 1)
    return pd.concat(frames, ignore_index=True)


def run_atlas(
    model: ModelSpec,
    manifest_path: str,
    out_path: str,
    *,
    sample_start: int,
    sample_stop: int,
    settings: CaptureSettings,
    scales: list[float],
    batch_size: int = 8,
) -> None:
    """The atlas job of one range of samples: one Parquet part, written atomically."""
    from spectra_attn.capture import prepare
    from spectra_attn.io import write_parquet

    table, tokens, loaded = prepare(model, manifest_path, sample_start, sample_stop)
    logger.info("atlas scales %s, %s", scales, settings)
    rows = atlas_table(loaded, tokens, table["sample_id"].to_numpy(), settings, scales, batch_size)
    write_parquet(rows, out_path)


def atlas_gains(parts: list[str], highlight: list[dict] | None = None) -> pd.DataFrame:
    """OLS gain of each metric against ln(scale) for every (layer, head), over per-scale means
    across all samples, and each head's percentile of max_attn gain among all heads."""
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    means = rows.groupby(["layer", "head", "scale"])[list(GAIN_METRICS)].mean().reset_index()
    records = []
    for (layer, head), group in means.groupby(["layer", "head"], sort=True):
        group = group.sort_values("scale")
        log_scale = np.log(group["scale"].to_numpy(np.float64))
        record = {"layer": int(layer), "head": int(head)}
        for metric in GAIN_METRICS:
            fit = ols(log_scale, group[metric].to_numpy(np.float64))
            record[f"gain_{metric}"] = fit.slope
            record[f"gain_{metric}_stderr"] = fit.stderr
        records.append(record)
    gains = pd.DataFrame(records)
    # Percentile: share of heads whose gain is at most this head's.
    values = gains["gain_max_attn"].to_numpy()
    gains["percentile_max_attn"] = (values[None, :] <= values[:, None]).mean(axis=1) * 100
    return gains


def compare_with_sweep(atlas_parts: list[str], sweep: pd.DataFrame, tolerance: float) -> dict:
    """The atlas's per-sample means against the hook-based sweep's, on the samples and scales both
    hold, for every intervened head. Returns a check report."""
    atlas = pd.concat([pd.read_parquet(p) for p in atlas_parts], ignore_index=True)
    keys = ["layer", "head", "scale", "sample_id"]
    atlas = atlas.astype({"layer": "int64", "head": "int64", "sample_id": "int64"})
    sweep = sweep.astype({"layer": "int64", "head": "int64", "sample_id": "int64"})
    atlas["scale"] = atlas["scale"].round(6)
    sweep = sweep.assign(scale=sweep["scale"].round(6))
    joined = sweep.merge(atlas, on=keys, suffixes=("_sweep", "_atlas"))
    deviations = {}
    for metric in GAIN_METRICS:
        a, b = joined[f"{metric}_atlas"], joined[f"{metric}_sweep"]
        deviations[metric] = float(((a - b).abs() / b.abs().clip(lower=1e-6)).max())
    worst = max(deviations.values()) if len(joined) else float("inf")
    return {
        "check": "atlas_vs_sweep",
        "passed": bool(len(joined) > 0 and worst <= tolerance),
        "tolerance": tolerance,
        "max_deviation": worst,
        "deviations": deviations,
        "compared_rows": int(len(joined)),
        "heads": sorted({f"L{r.layer}_H{r.head}" for r in joined[["layer", "head"]].itertuples()}),
    }
