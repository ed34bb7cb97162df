"""Per-row attention metrics from attention logits, computed in float32 by blocks of queries.

For one query row with logits zⱼ over its visible keys (−inf where masked) and probabilities
pⱼ = softmax(z)ⱼ:

* ``entropy``   H = −Σⱼ pⱼ ln pⱼ = logsumexp(z) − E_p[z]                       (nats)
* ``max_attn``  maxⱼ pⱼ = exp(max z − logsumexp(z))
* ``k_eff``     the smallest k such that the k largest pⱼ sum to at least τ (``k_eff_threshold``);
                sums within ``K_EFF_TOLERANCE`` of τ count as reaching it, so that ties exactly at
                the threshold (a uniform row of 10 keys and τ = 0.9 gives 9) survive float rounding
* ``sink_attn``  p₀, the weight on key position 0 (the attention sink, BOS in Spectra's shards)
* ``gain_max_attn``  d max_attn / d ln s = p_max · (z_max − E_p[z])
* ``gain_entropy``   d H / d ln s = −Var_p(z)

The last two are the derivatives, at s = 1, of the metrics of softmax(s·z): scaling a head's query
by s multiplies its logits by s, so they give the head's own response to the query-scaling
intervention without running it.

Where the model transforms the scaled logits a = scaling·q·k (:class:`LogitTransform`: Gemma-2's
soft-cap z = c·tanh(a/c), Falcon's ALiBi bias z = a + b), scaling the query by s gives
z(s) = c·tanh(s·a/c) + b, whose derivative at s = 1 is g = dz/d ln s = a·sech²(a/c) (a without a
cap), not z. The gains are then the general forms

* ``gain_max_attn``  p_max · (g_max − E_p[g])          (g_max: g at the most attended key)
* ``gain_entropy``   −Cov_p(z, g) = −(E_p[z·g] − E_p[z]·E_p[g])

which are the two above when g = z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

K_EFF_TOLERANCE = 1e-6
METRIC_NAMES = ("entropy", "max_attn", "k_eff", "sink_attn", "gain_max_attn", "gain_entropy")
# Masked logits get this finite value rather than −inf: softmax gives them exactly 0, and
# 0 · MASKED_LOGIT stays 0 where 0 · (−inf) would be NaN, so E_p[z] and E_p[z²] need no where().
MASKED_LOGIT = -1e15
# On the CPU, the metrics come from the Numba kernel (spectra_attn.model.cpu_kernels); False runs
# the torch composition there too (what a GPU runs), for comparisons in benchmarks.
CPU_KERNEL = True


@dataclass
class RowMetrics:
    """Metrics of a batch of rows; every tensor has the rows' leading shape."""

    entropy: torch.Tensor
    max_attn: torch.Tensor
    k_eff: torch.Tensor
    sink_attn: torch.Tensor
    gain_max_attn: torch.Tensor
    gain_entropy: torch.Tensor


def row_metrics(logits: torch.Tensor, k_eff_threshold: float = 0.9) -> RowMetrics:
    """Metrics of each row of ``logits`` (``[..., keys]``, key 0 first), in float32.

    Masked keys hold −inf or :data:`MASKED_LOGIT`; every row needs at least one visible key.
    On the CPU they run as one Numba kernel (:mod:`spectra_attn.model.cpu_kernels`); elsewhere as
    torch operations. Both give the same metrics (tested against each other and against
    independent references).
    """
    if logits.device.type == "cpu" and CPU_KERNEL:
        return _row_metrics_cpu(logits, k_eff_threshold)
    return _row_metrics_torch(logits, k_eff_threshold)


def _row_metrics_torch(logits: torch.Tensor, k_eff_threshold: float) -> RowMetrics:
    z = logits.float()
    z = (z - z.amax(dim=-1, keepdim=True)).clamp_(min=MASKED_LOGIT)  # z − z_max ≤ 0
    p = torch.softmax(z, dim=-1)
    max_attn = p.amax(dim=-1)  # = exp(0 − logsumexp(z)) = 1 / Σⱼ exp(zⱼ)
    mean_z = torch.einsum("...k,...k->...", p, z)  # E_p[z − z_max]
    mean_z2 = torch.einsum("...k,...k->...", p, z * z)
    return RowMetrics(
        entropy=-max_attn.log() - mean_z,  # logsumexp(z) − E_p[z]
        max_attn=max_attn,
        k_eff=keys_for_mass(p, k_eff_threshold),
        sink_attn=p[..., 0].clone(),  # a copy: a view would keep the whole block alive
        gain_max_attn=max_attn * -mean_z,  # p_max · (z_max − E_p[z])
        gain_entropy=-(mean_z2 - mean_z.square()).clamp(min=0.0),  # −Var_p(z)
    )


def _row_metrics_cpu(logits: torch.Tensor, k_eff_threshold: float) -> RowMetrics:
    from spectra_attn.model import cpu_kernels  # lazy: Numba compiles it; a GPU job never needs it

    z = logits.detach().float().contiguous()
    shape, keys = z.shape[:-1], z.shape[-1]
    out = _run_cpu_kernel(
        cpu_kernels.row_metrics,
        (z.numpy().reshape(-1, keys),),
        1,
        z.numel() // keys,
        k_eff_threshold,
    )
    return RowMetrics(**{name: torch.from_numpy(out[name]).reshape(shape) for name in METRIC_NAMES})


def _run_cpu_kernel(
    kernel, inputs: tuple, heads: int, length: int, k_eff_threshold: float
) -> dict[str, np.ndarray]:
    """Run one of :mod:`spectra_attn.model.cpu_kernels`' kernels (``kernel(*inputs, mass, quantile,
    *outputs, tasks)``) on torch's threads; returns its ``[heads, length]`` outputs by name."""
    out = {
        name: np.empty((heads, length), np.int32 if name == "k_eff" else np.float32)
        for name in METRIC_NAMES
    }
    threads = _match_torch_threads()
    kernel(
        *inputs,
        k_eff_threshold - K_EFF_TOLERANCE,
        _normal_quantile(1.0 - k_eff_threshold),
        *(out[name] for name in METRIC_NAMES),
        8 * threads,  # a few interleaved sets of rows per thread balance the threads' load
    )
    return out


def _normal_quantile(probability: float) -> float:
    """Φ⁻¹(probability), NaN outside (0, 1): the CPU kernel's first guess at each row's k_eff."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(probability) if 0.0 < probability < 1.0 else math.nan


def _match_torch_threads() -> int:
    """Numba's threads follow torch's (which follow the job's allocation), not the node's cores."""
    import numba

    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    return wanted


def keys_for_mass(p: torch.Tensor, threshold: float) -> torch.Tensor:
    """The smallest number of keys whose largest probabilities sum to at least ``threshold``.

    Sorted ascending, a₁ ≤ … ≤ aₙ, the top-k mass is total − (a₁ + … + aₙ₋ₖ), so k_eff is n minus
    the number of prefix sums that stay ≤ total − threshold. The sort dominates the cost of all
    metrics; on the CPU NumPy's SIMD sort is an order of magnitude faster than torch's.
    """
    if p.device.type == "cpu":
        ascending = torch.from_numpy(np.sort(p.detach().float().contiguous().numpy(), axis=-1))
    else:
        ascending = p.float().sort(dim=-1).values
    prefix = ascending.cumsum(dim=-1)  # non-decreasing, so a binary search counts
    limit = prefix[..., -1:] - threshold + K_EFF_TOLERANCE
    dropped = torch.searchsorted(prefix, limit, right=True).squeeze(-1)
    return (p.shape[-1] - dropped).clamp(min=1).to(torch.int32)


@dataclass(frozen=True)
class LogitTransform:
    """What the model does to its scaled logits a = scaling·q·kᵀ before the softmax:
    z = c·tanh(a/c) with ``softcap`` c (Gemma-2), then + ``bias`` (ALiBi: the per-head bias the
    model adds to its float mask, ``[..., T, T]`` broadcastable to the logits; masked entries hold
    a very negative value). Masked keys stay masked."""

    softcap: float | None = None
    bias: torch.Tensor | None = None

    @property
    def is_identity(self) -> bool:
        return self.softcap is None and self.bias is None

    def apply(self, raw: torch.Tensor, query_start: int = 0) -> torch.Tensor:
        """z from the masked raw logits of :func:`causal_logits` (rows ``query_start …``)."""
        return self.logits_and_slope(raw, query_start)[0]

    def logits_and_slope(
        self, raw: torch.Tensor, query_start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, g): the model's logits z from the masked raw logits a, and g = dz/d ln s of
        z(s) = transform(s·a) at s = 1: a·sech²(a/c) = a·(1 − tanh²(a/c)), or a; 0 where masked.
        One tanh for both."""
        masked = raw == MASKED_LOGIT
        if self.softcap is not None:
            t = torch.tanh(raw / self.softcap)
            g = raw * (1.0 - t * t)
            z = t.mul_(self.softcap)
        else:
            g, z = raw, raw.clone()
        if self.bias is not None:
            rows, keys = raw.shape[-2:]
            z += self.bias[..., query_start : query_start + rows, :keys].to(z.device, z.dtype)
        z.masked_fill_(masked, MASKED_LOGIT).clamp_(min=MASKED_LOGIT)
        return z, g.masked_fill(masked, 0.0)


def transformed_gains(
    z: torch.Tensor, g: torch.Tensor, max_attn: torch.Tensor, entropy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain_max_attn, gain_entropy) of rows of logits ``z`` whose derivative in ln s is ``g``,
    given the rows' ``max_attn`` and ``entropy`` (from :func:`row_metrics`):
    p_max·(g_max − E_p[g]) and −Cov_p(z, g) = −(E_p[(z − z_max)·g] − E_p[z − z_max]·E_p[g]),
    with p = p_max·exp(z − z_max) and E_p[z − z_max] = −ln p_max − H. In float32."""
    z_max, top = z.float().max(dim=-1, keepdim=True)
    shifted = z - z_max  # ≤ 0; Cov_p(z, g) does not depend on the shift
    log_max = max_attn.log().unsqueeze(-1)
    p = torch.exp(shifted + log_max)
    mean_g = torch.einsum("...k,...k->...", p, g)
    mean_shifted_g = torch.einsum("...k,...k->...", p, shifted.mul_(g))
    mean_shifted = -log_max.squeeze(-1) - entropy
    gain_max = max_attn * (g.gather(-1, top).squeeze(-1) - mean_g)
    return gain_max, -(mean_shifted_g - mean_shifted * mean_g)


def _shares_keys(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether ``query`` holds grouped-query heads ``[..., groups, rows, d]`` that share one key
    ``[..., 1, keys, d]``."""
    return query.dim() >= 3 and key.dim() == query.dim() and key.shape[-3] == 1 < query.shape[-3]


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
    hold :data:`MASKED_LOGIT`. Computed in float32.
    """
    rows, dim = query.shape[-2:]
    n_keys = query_start + rows
    # Scaling the [rows, d] queries is cheaper than scaling the [rows, keys] logits.
    query = query.float() * scaling
    key = key[..., :n_keys, :].float()
    if _shares_keys(query, key):
        # Grouped-query heads [..., groups, rows, d] sharing one key [..., 1, keys, d]: one GEMM of
        # [groups · rows, d] × [d, keys] rather than a broadcast that copies the key per group.
        groups = query.shape[-3]
        folded = query.reshape(*query.shape[:-3], groups * rows, dim)
        logits = torch.matmul(folded, key.squeeze(-3).transpose(-1, -2))
        logits = logits.view(*query.shape[:-3], groups, rows, n_keys)
    else:
        logits = torch.matmul(query, key.transpose(-1, -2))
    if sliding_window is None:
        # Keys before query_start are visible to every row: only the last [rows, rows] square
        # holds future keys, so only it is written again (a full-width mask costs a whole pass).
        future = torch.ones(rows, rows, dtype=torch.bool, device=query.device).triu_(1)
        logits[..., query_start:].masked_fill_(future, MASKED_LOGIT)
        return logits
    query_pos = torch.arange(query_start, n_keys, device=query.device)[:, None]
    key_pos = torch.arange(n_keys, device=query.device)[None, :]
    masked = (key_pos > query_pos) | (key_pos <= query_pos - sliding_window)
    return logits.masked_fill_(masked, MASKED_LOGIT)


def blocked_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    k_eff_threshold: float = 0.9,
    block_size: int = 256,
    sliding_window: int | None = None,
    transform: LogitTransform | None = None,
) -> RowMetrics:
    """Row metrics of causal attention softmax(scaling · q kᵀ), by blocks of ``block_size``
    queries, so memory is ``[..., block_size, T]`` rather than ``[..., T, T]``. With a
    ``transform`` (soft-cap, ALiBi), of softmax(transform(scaling · q kᵀ)), with the gains of the
    transformed logits.

    ``query``: ``[..., T, d]``; ``key``: ``[..., T, d]``, already repeated for grouped-query heads
    or broadcastable to the query's leading shape. On the CPU there are no blocks: one kernel
    computes the logits of a few rows at a time (their visible keys only), soft-capped if the
    model caps them, and their metrics while the logits are in the cache, so nothing of size
    [rows, T] is held beyond the inputs. An ALiBi bias takes the blocked path on the CPU too:
    the model hands it over as a float mask ``[B, heads, T, T]`` of any values, which the kernel
    would have to read in full (a pass through memory per row, what the kernel exists to avoid)
    or rebuild from slopes that the model does not pass.
    """
    length = query.shape[-2]
    transform = transform or LogitTransform()
    if query.device.type == "cpu" and CPU_KERNEL and transform.bias is None:
        return _attention_metrics_cpu(
            query, key, scaling, k_eff_threshold, sliding_window, transform.softcap
        )
    if not transform.is_identity:
        return _transformed_metrics(
            query, key, scaling, k_eff_threshold, block_size, sliding_window, transform
        )
    # Last block first: the buffers only shrink from one block to the next, so the allocator
    # reuses the first (largest) ones instead of fragmenting the heap with ever larger requests.
    parts: list[RowMetrics] = []
    for start in reversed(range(0, length, block_size)):
        block = query[..., start : start + block_size, :]
        logits = causal_logits(block, key, scaling, start, sliding_window)
        parts.append(row_metrics(logits, k_eff_threshold))
    parts.reverse()
    return RowMetrics(
        *(torch.cat([getattr(p, name) for p in parts], dim=-1) for name in METRIC_NAMES)
    )


def _transformed_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    k_eff_threshold: float,
    block_size: int,
    sliding_window: int | None,
    transform: LogitTransform,
) -> RowMetrics:
    """:func:`blocked_metrics` of transformed logits: the metrics of z = transform(a) by
    :func:`row_metrics`, the gains from z and g = dz/d ln s (:func:`transformed_gains`)."""
    parts: list[RowMetrics] = []
    for start in reversed(range(0, query.shape[-2], block_size)):
        block = query[..., start : start + block_size, :]
        raw = causal_logits(block, key, scaling, start, sliding_window)
        z, g = transform.logits_and_slope(raw, start)
        metrics = row_metrics(z, k_eff_threshold)
        metrics.gain_max_attn, metrics.gain_entropy = transformed_gains(
            z, g, metrics.max_attn, metrics.entropy
        )
        parts.append(metrics)
    parts.reverse()
    return RowMetrics(
        *(torch.cat([getattr(p, name) for p in parts], dim=-1) for name in METRIC_NAMES)
    )


def _attention_metrics_cpu(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    k_eff_threshold: float,
    sliding_window: int | None,
    softcap: float | None = None,
) -> RowMetrics:
    """The CPU kernel that computes the logits itself (:func:`cpu_kernels.attention_metrics`),
    soft-capped with ``softcap`` where given."""
    from spectra_attn.model import cpu_kernels  # lazy: Numba compiles it; a GPU job never needs it

    lead, (length, dim) = query.shape[:-2], query.shape[-2:]
    if _shares_keys(query, key):
        groups = query.shape[-3]
        key = key.squeeze(-3).expand(*lead[:-1], length, dim)
    else:
        groups = 1
        key = key.expand(*lead, length, dim)
    rows = -(-length // cpu_kernels.TILE_ROWS) * cpu_kernels.TILE_ROWS
    # The queries scaled first, as causal_logits does (in float32), and the keys transposed, each
    # written straight from the (strided) projections into a buffer whose zero padding keeps every
    # tile in bounds: one pass each, no intermediate contiguous copy.
    queries = torch.empty(*lead, rows, dim)
    queries[..., length:, :] = 0.0
    torch.mul(query.detach().float(), scaling, out=queries[..., :length, :])
    keys_t = torch.empty(*key.shape[:-2], dim, length + cpu_kernels.LANES)
    keys_t[..., length:] = 0.0
    keys_t[..., :length].copy_(key.detach().transpose(-1, -2))
    queries = queries.view(-1, rows, dim)
    out = _run_cpu_kernel(
        cpu_kernels.attention_metrics,
        (
            queries.numpy(),
            keys_t.view(-1, dim, length + cpu_kernels.LANES).numpy(),
            length,
            groups,
            sliding_window or 0,
            softcap or 0.0,
        ),
        queries.shape[0],
        length,
        k_eff_threshold,
    )
    return RowMetrics(
        **{name: torch.from_numpy(out[name]).reshape(*lead, length) for name in METRIC_NAMES}
    )
