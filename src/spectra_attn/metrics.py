"""Per-row attention metrics from attention logits, computed in float32 by blocks of queries.

For one query row with logits zⱼ over its visible keys (−inf where masked) and probabilities
pⱼ = softmax(z)ⱼ:

* ``entropy``   H = −Σⱼ pⱼ ln pⱼ = logsumexp(z) − E_p[z]                       (nats)
* ``max_attn``  maxⱼ pⱼ = exp(max z − logsumexp(z))
* ``k_eff``     the smallest k such that the k largest pⱼ sum to at least τ (``k_eff_threshold``);
                sums within ``K_EFF_TOLERANCE`` of τ count as reaching it, so that ties exactly at
                the threshold (a uniform row of 10 keys and τ = 0.9 gives 9) survive float rounding
* ``gain_max_attn``  d max_attn / d ln s = p_max · (z_max − E_p[z])
* ``gain_entropy``   d H / d ln s = −Var_p(z)

The last two are the derivatives, at s = 1, of the metrics of softmax(s·z): scaling a head's query
by s multiplies its logits by s, so they give the head's own response to the query-scaling
intervention without running it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

K_EFF_TOLERANCE = 1e-6
METRIC_NAMES = ("entropy", "max_attn", "k_eff", "gain_max_attn", "gain_entropy")


@dataclass
class RowMetrics:
    """Metrics of a batch of rows; every tensor has the rows' leading shape."""

    entropy: torch.Tensor
    max_attn: torch.Tensor
    k_eff: torch.Tensor
    gain_max_attn: torch.Tensor
    gain_entropy: torch.Tensor


def row_metrics(logits: torch.Tensor, k_eff_threshold: float = 0.9) -> RowMetrics:
    """Metrics of each row of ``logits`` (``[..., keys]``, −inf where masked), in float32.

    Every row must have at least one finite logit.
    """
    z = logits.float()
    z_max = z.amax(dim=-1, keepdim=True)
    shifted = z - z_max  # ≤ 0, −inf where masked
    weights = shifted.exp()
    total = weights.sum(dim=-1, keepdim=True)
    p = weights / total
    log_total = total.log()
    # E_p[z − z_max]: masked entries have p = 0 and shifted = −inf; zero them before the product.
    finite_shifted = torch.where(p > 0, shifted, torch.zeros_like(shifted))
    mean_shifted = (p * finite_shifted).sum(dim=-1, keepdim=True)
    entropy = log_total - mean_shifted  # logsumexp(z) − E_p[z], both relative to z_max
    max_attn = 1.0 / total  # exp(z_max − logsumexp(z))
    centered = torch.where(p > 0, finite_shifted - mean_shifted, torch.zeros_like(shifted))
    variance = (p * centered.square()).sum(dim=-1, keepdim=True)
    gain_max_attn = max_attn * (-mean_shifted)  # p_max · (z_max − E_p[z])
    k_eff = keys_for_mass(p, k_eff_threshold)
    return RowMetrics(
        entropy=entropy.squeeze(-1),
        max_attn=max_attn.squeeze(-1),
        k_eff=k_eff,
        gain_max_attn=gain_max_attn.squeeze(-1),
        gain_entropy=-variance.squeeze(-1),
    )


def keys_for_mass(p: torch.Tensor, threshold: float) -> torch.Tensor:
    """The smallest number of keys whose largest probabilities sum to at least ``threshold``."""
    descending = p.sort(dim=-1, descending=True).values
    cumulative = descending.cumsum(dim=-1)
    below = (cumulative < threshold - K_EFF_TOLERANCE).sum(dim=-1)
    return (below + 1).clamp(max=p.shape[-1]).to(torch.int32)


def causal_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    query_start: int,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Logits of query rows ``query_start …`` against keys ``0 … query_start + rows − 1``.

    ``query``: ``[..., rows, d]``; ``key``: ``[..., keys, d]`` with at least ``query_start + rows``
    keys (later keys are ignored). Masked positions (future keys, or keys beyond the sliding window)
    are −inf. Computed in float32.
    """
    rows = query.shape[-2]
    n_keys = query_start + rows
    logits = torch.matmul(query.float(), key[..., :n_keys, :].float().transpose(-1, -2))
    logits.mul_(scaling)
    query_pos = torch.arange(query_start, n_keys, device=query.device)[:, None]
    key_pos = torch.arange(n_keys, device=query.device)[None, :]
    masked = key_pos > query_pos
    if sliding_window is not None:
        masked |= key_pos <= query_pos - sliding_window
    return logits.masked_fill_(masked, float("-inf"))


def blocked_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    k_eff_threshold: float = 0.9,
    block_size: int = 256,
    sliding_window: int | None = None,
) -> RowMetrics:
    """Row metrics of causal attention softmax(scaling · q kᵀ), by blocks of ``block_size``
    queries, so memory is ``[..., block_size, T]`` rather than ``[..., T, T]``.

    ``query``: ``[..., T, d]``; ``key``: ``[..., T, d]``, already repeated for grouped-query heads
    or broadcastable to the query's leading shape.
    """
    length = query.shape[-2]
    parts: list[RowMetrics] = []
    for start in range(0, length, block_size):
        block = query[..., start : start + block_size, :]
        logits = causal_logits(block, key, scaling, start, sliding_window)
        parts.append(row_metrics(logits, k_eff_threshold))
    return RowMetrics(
        *(torch.cat([getattr(p, name) for p in parts], dim=-1) for name in METRIC_NAMES)
    )
