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

from spectra_attn.columns import GAIN_METRICS
from spectra_attn.io import write_parquet
from spectra_attn.model.attention import (
    AttentionRecorder,
    CaptureSettings,
    head_metrics,
    token_mean,
)
from spectra_attn.model.capture import forward_for_metrics
from spectra_attn.model.loading import ModelSpec, prepare

logger = logging.getLogger(__name__)


class TemperatureRecorder(AttentionRecorder):
    """Per layer: token means of the gain metrics of every head at every temperature scale."""

    def __init__(self, model: torch.nn.Module, settings: CaptureSettings, scales: list[float]):
        super().__init__(model, settings, stop_when_done=True)
        self.scales = scales

    def record(self, layer, query, key, scaling, sliding_window, transform=None) -> None:
        # The model's soft-cap and ALiBi bias apply after the scale: z = c·tanh(s·a/c) + b.
        per_scale = [
            head_metrics(
                query, key, scaling * scale, self.settings, sliding_window, transform=transform
            )
            for scale in self.scales
        ]
        self.layers[layer] = {
            metric: torch.stack([token_mean(m[metric], self.settings) for m in per_scale], -1)
            for metric in GAIN_METRICS
        }  # each [B, heads, scales]


@torch.inference_mode()
def atlas_batch(model, input_ids: torch.Tensor, settings: CaptureSettings, scales: list[float]):
    with TemperatureRecorder(model, settings, scales) as recorder:
        forward_for_metrics(model, input_ids)
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
    table, tokens, loaded = prepare(model, manifest_path, sample_start, sample_stop)
    logger.info("atlas scales %s, %s", scales, settings)
    rows = atlas_table(loaded, tokens, table["sample_id"].to_numpy(), settings, scales, batch_size)
    write_parquet(rows, out_path)
