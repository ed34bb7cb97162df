"""Fused per-row attention metrics for the CPU, compiled with Numba.

:func:`spectra_attn.metrics.row_metrics` takes each row's softmax with torch, then
:func:`sort_rows_in_place` sorts the probabilities with NumPy's SIMD sort on several threads, and
two kernels read each row once while it is in cache: :func:`moment_sums` before the sort (it needs
the probabilities aligned with their logits) and :func:`finish_rows` after it. The same metrics as
composed torch operations take about ten passes over the ``[rows, keys]`` block (centering, two
einsums, a square, a copy for the sort, a cumulative sum, a binary search); on a CPU those passes,
not the arithmetic, are what cost. On a GPU the torch composition stays (see ``metrics.py``).

Formulas (d = z − z_max, p = softmax(z)) as in :mod:`spectra_attn.metrics`: entropy
= −ln p_max − E_p[d]; gain_max_attn = p_max · (−E_p[d]); gain_entropy = −(E_p[d²] − E_p[d]²);
k_eff = the smallest k whose k largest probabilities sum to at least ``mass`` (the threshold minus
the tolerance), counted from the top of the sorted row, 16 keys at a time, then key by key.
Sums are accumulated in float64.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

# Masked logits (see metrics.MASKED_LOGIT) and −inf both clamp here, so p · d stays 0 · finite.
_DMIN = -1e15
_CHUNK = 16
_FAST = {"reassoc", "contract"}  # lets LLVM vectorize the sums; no assumption about NaN or inf


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def moment_sums(z, p, z_max, mean_d, mean_d2, sink):
    """E_p[d], E_p[d²] and p₀ of every row of the 2-D float32 arrays ``z`` (logits) and ``p``
    (their softmax); ``z_max``: each row's largest logit."""
    rows, keys = z.shape
    for r in numba.prange(rows):
        zm = np.float64(z_max[r])
        s1 = 0.0
        s2 = 0.0
        for j in range(keys):
            d = max(np.float64(z[r, j]) - zm, _DMIN)
            w = np.float64(p[r, j])
            s1 += w * d
            s2 += w * d * d
        mean_d[r] = s1
        mean_d2[r] = s2
        sink[r] = p[r, 0]


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def finish_rows(ascending, mean_d, mean_d2, mass, entropy, max_attn, k_eff, gain_max, gain_ent):
    """The metrics of every row from its ascending probabilities and its moment sums."""
    rows, keys = ascending.shape
    for r in numba.prange(rows):
        # k_eff: whole chunks from the top while they keep the mass below the target...
        top = 0.0
        end = keys
        while end >= _CHUNK:
            chunk = 0.0
            for t in range(end - _CHUNK, end):
                chunk += np.float64(ascending[r, t])
            if top + chunk >= mass:
                break
            top += chunk
            end -= _CHUNK
        # ...then key by key inside the chunk that reaches it (all keys if none does).
        count = keys
        for t in range(end - 1, -1, -1):
            top += np.float64(ascending[r, t])
            if top >= mass:
                count = keys - t
                break
        p_max = np.float64(ascending[r, keys - 1])
        s1 = mean_d[r]
        entropy[r] = -math.log(p_max) - s1
        max_attn[r] = p_max
        k_eff[r] = max(count, 1)
        gain_max[r] = p_max * -s1
        gain_ent[r] = -max(mean_d2[r] - s1 * s1, 0.0)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def sort_rows_in_place(rows: np.ndarray, threads: int) -> None:
    """Sort each row of a 2-D array ascending, in place, on ``threads`` threads (NumPy's sort
    releases the GIL but uses one core)."""
    if threads <= 1 or len(rows) < 2 * threads:
        rows.sort(axis=-1)
        return
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="spectra-sort")
    parts = np.array_split(np.arange(len(rows)), threads)
    list(pool.map(lambda part: rows[part[0] : part[-1] + 1].sort(axis=-1), parts))
