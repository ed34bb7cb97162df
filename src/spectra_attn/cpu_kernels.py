"""Fused per-row attention metrics for the CPU, compiled with Numba.

:func:`spectra_attn.metrics.row_metrics` on the CPU runs three steps per block of rows, each
reading the block once: :func:`exp_moments` writes e = exp(z − z_max) and, in the same pass, the
row sums Σe, Σe·d and Σe·d² (d = z − z_max); :func:`sort_rows_in_place` sorts e with NumPy's SIMD
sort on several threads; :func:`finish_rows` counts k_eff from the top of each sorted row and writes
every metric. The same metrics as composed torch operations take about ten passes over the
``[rows, keys]`` block (softmax, centering, two einsums, a square, a copy for the sort, a cumulative
sum, a binary search); on a CPU those passes, not the arithmetic, are what cost. On a GPU the torch
composition stays (see ``metrics.py``).

Formulas, with p = e / Σe, as in :mod:`spectra_attn.metrics`: entropy = −ln p_max − E_p[d];
gain_max_attn = p_max · (−E_p[d]); gain_entropy = −(E_p[d²] − E_p[d]²); k_eff = the smallest k
whose k largest probabilities sum to at least ``mass`` (the threshold minus the tolerance), counted
16 keys at a time from the top, then key by key. Row sums are accumulated in float64.

exp is Cephes' single-precision polynomial (within 1 ulp of float64 exp on [−87, 0], tested), so
LLVM can vectorize the loop: a call to the C library's expf would not be. It gives exactly 0 for
d < −87 (masked keys: ``metrics.MASKED_LOGIT`` or −inf), where the true value is below 2⁻¹²⁵.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_DMIN = np.float32(-1e15)  # d is clamped here first, so e · d stays 0 · finite for masked keys
_EXP_MIN = np.float32(-87.0)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split in two so that n · _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_POLY = tuple(
    np.float32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1)
)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_CHUNK = 16
_FAST = {"reassoc", "contract"}  # lets LLVM vectorize the sums; no assumption about NaN or inf


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a no-op instruction, so loops stay vectorized)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(fastmath=_FAST, inline="always")
def exp_nonpositive(x):
    """exp(x) in float32 for x ≤ 0: Cody–Waite reduction x = n ln2 + r, |r| ≤ ln2 / 2, Cephes'
    degree-7 polynomial for exp(r), times 2ⁿ built from its exponent bits; 0 for x < −87."""
    clamped = max(x, _EXP_MIN)
    n = math.floor(clamped * _LOG2E + _HALF)
    r = clamped - n * _LN2_HI - n * _LN2_LO
    c4, c3, c2, c1, c0 = _EXP_POLY
    poly = ((((c4 * r + c3) * r + c2) * r + c1) * r + c0) * r + _HALF
    value = (poly * r * r + r + _ONE) * _float32_from_bits((np.int32(n) + np.int32(127)) << 23)
    return value if x >= _EXP_MIN else np.float32(0.0)


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def exp_moments(z, z_max, e, norm, mean_d, mean_d2, sink):
    """For every row of the 2-D float32 logits ``z`` (``z_max``: each row's largest logit): write
    e = exp(z − z_max) into ``e`` and Σe, E_p[d], E_p[d²] and p₀ into the 1-D outputs."""
    rows, keys = z.shape
    for r in numba.prange(rows):
        zm = z_max[r]
        total = 0.0
        s1 = 0.0
        s2 = 0.0
        for j in range(keys):
            d = max(z[r, j] - zm, _DMIN)
            value = exp_nonpositive(d)
            e[r, j] = value
            w = np.float64(value)
            d64 = np.float64(d)
            total += w
            s1 += w * d64
            s2 += w * d64 * d64
        norm[r] = total
        mean_d[r] = s1 / total
        mean_d2[r] = s2 / total
        sink[r] = e[r, 0] / total


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def finish_rows(
    ascending, norm, mean_d, mean_d2, mass, entropy, max_attn, k_eff, gain_max, gain_ent
):
    """The metrics of every row from its ascending e = exp(z − z_max), Σe and the moments."""
    rows, keys = ascending.shape
    for r in numba.prange(rows):
        target = mass * norm[r]  # the probabilities are e / Σe
        # k_eff: whole chunks from the top while they keep the mass below the target...
        top = 0.0
        end = keys
        while end >= _CHUNK:
            chunk = 0.0
            for t in range(end - _CHUNK, end):
                chunk += np.float64(ascending[r, t])
            if top + chunk >= target:
                break
            top += chunk
            end -= _CHUNK
        # ...then key by key inside the chunk that reaches it (all keys if none does).
        count = keys
        for t in range(end - 1, -1, -1):
            top += np.float64(ascending[r, t])
            if top >= target:
                count = keys - t
                break
        p_max = np.float64(ascending[r, keys - 1]) / norm[r]
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
