"""Per-row attention metrics for the CPU, compiled with Numba.

:func:`attention_metrics` (capture's path) takes a layer's queries and keys: for a tile of
``TILE_ROWS`` query rows it computes their logits, ``LANES`` keys at a time, with a register-blocked
micro-kernel (:func:`_logits_tile`), then the metrics of each row while its logits are still in the
cache; no logit goes to memory, and the future keys are not computed beyond the tile's last vector.
:func:`row_metrics` takes logits already computed (the intervention's and the atlas' path).
A model's soft-cap (Gemma-2: z = c·tanh(a/c)) is applied inside :func:`attention_metrics` too, in
the pass that computes e (:func:`_row`), with the gains of the capped logits; only an ALiBi bias
still needs the logits in memory (:func:`spectra_attn.model.metrics.blocked_metrics`).

Per row (:func:`_row`): the visible keys are copied to a per-thread buffer padded to whole vectors,
the largest logit found on the way; one pass writes e = exp(z − z_max) with the sums Σe, Σe·d and
Σe·d² (d = z − z_max); k_eff is found by selection rather than by sorting (:func:`keys_for_mass`),
whose first pass also sums e again in float64.
The same metrics as composed torch operations take about ten passes over a ``[rows, keys]`` block
(softmax, centering, two einsums, a square, a copy for the sort, a cumulative sum, a binary search);
on a CPU those passes through memory, not the arithmetic, are what cost. On a GPU the torch
composition stays (``metrics.py``).

Formulas, with p = e / Σe, as in :mod:`spectra_attn.model.metrics`: entropy = −ln p_max − E_p[d];
gain_max_attn = p_max · (−E_p[d]); gain_entropy = −(E_p[d²] − E_p[d]²); k_eff = the smallest k
whose k largest probabilities sum to at least ``mass`` (the threshold minus the tolerance).
Precision: Σe (hence p_max, the sink's weight and k_eff's target) and every sum k_eff compares are
float64; the moments Σe·d and Σe·d² are float32 sums, as the GPU's torch composition computes them
(in float64 they cost 12 % of the kernel: every term widened, half the lanes). Against float64
references on rows of 512 to 32,768 keys the entropy stays within 6e-7 and the gains within 1e-5
relative (tests/test_metrics.py).

exp is Cephes' single-precision polynomial (within 1 ulp of float64 exp on [−87, 0], tested), so
LLVM can vectorize the loop: a call to the C library's expf would not be. It gives exactly 0 for
d < −87 (masked keys: ``metrics.MASKED_LOGIT`` or −inf), where the true value is below 2⁻¹²⁵.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core import codegen as _codegen
from numba.core import config as _config
from numba.extending import intrinsic


def _prefer_512_bit_vectors(host_features: str) -> str | None:
    """On a CPU with AVX-512, compile with 512-bit vectors (returns the features used, or None).

    LLVM tunes most Intel CPUs with AVX-512 (Skylake-X to Sapphire Rapids, Rocket Lake) to prefer
    256-bit vectors, so the loops of these kernels get half the lanes the CPU has; without that
    preference they run about 20 % faster on such a CPU (benchmarks/RESULTS.md, capture overhead).
    The features are Numba's own host features plus ``-prefer-256-bit``, so Numba's cache, keyed
    by them, keeps the two builds apart. A user's ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES``
    stands; it takes effect only if no Numba function was compiled before this module loads
    (Numba creates its code generator once, at the first compilation)."""
    if _config.CPU_NAME is not None or _config.CPU_FEATURES is not None:
        return None
    if "+avx512f" not in host_features.split(","):
        return None
    # Set in numba.config itself: its reload before each compilation keeps such a value.
    _config.CPU_FEATURES = f"{host_features},-prefer-256-bit"
    return _config.CPU_FEATURES


_HOST_FEATURES = _codegen.get_host_cpu_features()
WIDE_VECTOR_FEATURES = _prefer_512_bit_vectors(_HOST_FEATURES)
# Whether the kernels copy k_eff's candidates to a buffer of their own (keys_for_mass): with
# AVX-512 the copy is one compress instruction per vector; elsewhere LLVM expands it to scalar
# code, and a scalar copy measured 0.75 ns per key, more than the passes it saves
# (benchmarks/RESULTS.md). keys_for_mass is correct either way (tested with and without).
COMPACT_BAND = "+avx512f" in (_config.CPU_FEATURES or _HOST_FEATURES).split(",")

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
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_FOUR = np.float32(4.0)
# tanh's odd Taylor series, y + y³·(T3 + y²·(T5 + …)), for |y| < _TANH_NEAR, where the form from
# exp(−2|y|) would lose digits to the cancellation in 1 − exp(−2|y|); the first term left out,
# 929569/638512875·y¹⁵, is below 2e-8 of tanh y there.
_TANH_SERIES = tuple(
    np.float32(c) for c in (-1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 21844 / 6081075)
)
_TANH_NEAR = np.float32(0.5)
_NO_UPPER = np.int32(0x7F800001)  # above +inf's bits: an upper bound that excludes nothing
_PEELS = 8  # values peeled one at a time before sorting what is left
_MAX_ROUNDS = 48
# keys_for_mass copies the candidates its first pass leaves to a buffer of their own when they are
# at most this share of the row (1/_BAND_SHARE), so that the rounds after it read only them.
_BAND_SHARE = 4
_PAD = 32  # rows are padded to a multiple of this many keys (see _row)
# How far above and below its guess keys_for_mass's first pass puts two pivots, in units of the
# spread: on the bench model's rows the answer lies within ±0.1 σ of the guess 3 times in 4.
_SPREAD = 0.1
_FAST = {"reassoc", "contract"}  # lets LLVM vectorize the sums; no assumption about NaN or inf


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a no-op instruction, so loops stay vectorized)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_from_float32(typingctx, value):
    """Reinterpret a float32's bits as an int32: for values ≥ 0 the order of the bits as integers
    is the order of the values, and integer max reductions vectorize where float ones do not."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


LANES = 16  # keys per logits tile: one 512-bit vector (LLVM splits it where vectors are narrower)
TILE_ROWS = 6  # query rows per logits tile, sharing each load of keys


@intrinsic
def _logits_tile(typingctx, z, query, key_t, head, row, kv, key0, dim):
    """``z[r, key0 : key0 + LANES] = Σ_c query[head, row + r, c] · key_t[kv, c, key0 : …]`` for
    r < ``TILE_ROWS``, in float32, the sum over c in order with one rounding per step (fused
    multiply-add), the accumulators held in vector registers: a register-blocked micro-kernel that
    Numba's loop vectorizer does not produce from loops. ``z``, ``query``, ``key_t``: 2-D, 3-D and
    3-D float32 arrays whose last axis is contiguous; the caller keeps every index in bounds."""
    sig = types.void(z, query, key_t, head, row, kv, key0, dim)

    def codegen(context, builder, signature, args):
        arrays = [
            context.make_array(kind)(context, builder, value)
            for kind, value in zip(signature.args[:3], args[:3], strict=True)
        ]
        head_, row_, kv_, key0_, dim_ = (
            context.cast(builder, value, kind, types.intp)
            for value, kind in zip(args[3:], signature.args[3:], strict=True)
        )
        z_strides, q_strides, k_strides = (cgutils.unpack_tuple(builder, a.strides) for a in arrays)
        intp = context.get_value_type(types.intp)
        f32 = ir.FloatType()
        vector = ir.VectorType(f32, LANES)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{LANES}f32"
        )
        byte_pointer = ir.IntType(8).as_pointer()

        def at(array, offset, kind):  # a pointer ``offset`` bytes into an array's data
            raw = builder.gep(builder.bitcast(array.data, byte_pointer), [offset])
            return builder.bitcast(raw, kind.as_pointer())

        def times(a, b):
            return builder.mul(a, b)

        zero = ir.Constant(vector, [0.0] * LANES)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(TILE_ROWS)]
        key_base = builder.add(times(kv_, k_strides[0]), times(key0_, k_strides[2]))
        query_bases = [
            builder.add(
                times(head_, q_strides[0]),
                times(builder.add(row_, ir.Constant(intp, r)), q_strides[1]),
            )
            for r in range(TILE_ROWS)
        ]
        with cgutils.for_range(builder, dim_) as loop:
            c = loop.index
            keys = builder.load(
                at(arrays[2], builder.add(key_base, times(c, k_strides[1])), vector), align=4
            )
            for r in range(TILE_ROWS):
                scalar = builder.load(
                    at(arrays[1], builder.add(query_bases[r], times(c, q_strides[2])), f32)
                )
                lane = builder.insert_element(
                    ir.Constant(vector, None), scalar, ir.Constant(ir.IntType(32), 0)
                )
                broadcast = builder.shuffle_vector(lane, ir.Constant(vector, None), splat)
                builder.store(builder.call(fma, [broadcast, keys, builder.load(sums[r])]), sums[r])
        for r in range(TILE_ROWS):
            offset = builder.add(
                times(ir.Constant(intp, r), z_strides[0]), times(key0_, z_strides[1])
            )
            builder.store(builder.load(sums[r]), at(arrays[0], offset, vector), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _compact_band(typingctx, src, lower, upper, dst):
    """``dst[:m] = [v for v in src[:len(src) // LANES * LANES] if lower <= v < upper]``, in order;
    returns m. One vectorized pass: per ``LANES`` values a compare, a compress of the lanes that
    pass (``llvm.experimental.vector.compress``: one instruction with AVX-512, generic code
    elsewhere) and an unaligned store of the whole vector at ``dst[m]``, so ``dst`` may be
    written up to its ``len(src) // LANES * LANES``-th element. ``src``, ``dst``: contiguous 1-D
    int32 arrays; ``lower``, ``upper``: int32."""
    for array in (src, dst):
        if not (isinstance(array, types.Array) and array.ndim == 1 and array.dtype == types.int32):
            return None  # a typing error: only 1-D int32 arrays
    sig = types.intp(src, lower, upper, dst)

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        target = context.make_array(signature.args[3])(context, builder, args[3])
        i32 = ir.IntType(32)
        vector = ir.VectorType(i32, LANES)
        mask_type = ir.VectorType(ir.IntType(1), LANES)
        lanes_int = ir.IntType(LANES)
        compress = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vector, [vector, mask_type, vector]),
            f"llvm.experimental.vector.compress.v{LANES}i32",
        )
        popcount = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(lanes_int, [lanes_int]), f"llvm.ctpop.i{LANES}"
        )
        splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)

        def broadcast(value, kind):
            scalar = context.cast(builder, value, kind, types.int32)
            lane = builder.insert_element(ir.Constant(vector, None), scalar, ir.Constant(i32, 0))
            return builder.shuffle_vector(lane, ir.Constant(vector, None), splat)

        low = broadcast(args[1], signature.args[1])
        high = broadcast(args[2], signature.args[2])
        intp = context.get_value_type(types.intp)
        length = cgutils.unpack_tuple(builder, source.shape)[0]
        vectors = builder.sdiv(length, ir.Constant(intp, LANES))
        count = cgutils.alloca_once_value(builder, ir.Constant(intp, 0))
        with cgutils.for_range(builder, vectors) as loop:
            first = builder.mul(loop.index, ir.Constant(intp, LANES))
            values = builder.load(
                builder.bitcast(builder.gep(source.data, [first]), vector.as_pointer()), align=4
            )
            inside = builder.and_(
                builder.icmp_signed(">=", values, low), builder.icmp_signed("<", values, high)
            )
            packed = builder.call(compress, [values, inside, ir.Constant(vector, None)])
            m = builder.load(count)
            builder.store(
                packed,
                builder.bitcast(builder.gep(target.data, [m]), vector.as_pointer()),
                align=4,
            )
            taken = builder.call(popcount, [builder.bitcast(inside, lanes_int)])
            builder.store(builder.add(m, builder.zext(taken, intp)), count)
        return builder.load(count)

    return sig, codegen


@numba.njit(fastmath=_FAST, inline="always")
def _ordered(bits):
    """An int32 whose order is that of the float32 with these bits, for any sign (an
    involution: applied twice it gives the bits back)."""
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


@numba.njit(fastmath=_FAST, inline="always")
def exp_nonpositive(x):
    """exp(x) in float32 for x ≤ 0: Cody–Waite reduction x = n ln2 + r, |r| ≤ ln2 / 2, Cephes'
    degree-7 polynomial for exp(r), times 2ⁿ built from its exponent bits; 0 for x < −87."""
    clamped = max(x, _EXP_MIN)
    n = np.floor(clamped * _LOG2E + _HALF)  # float32: math.floor's int64 would widen r to float64
    r = clamped - n * _LN2_HI - n * _LN2_LO
    c4, c3, c2, c1, c0 = _EXP_POLY
    poly = ((((c4 * r + c3) * r + c2) * r + c1) * r + c0) * r + _HALF
    value = (poly * r * r + r + _ONE) * _float32_from_bits((np.int32(n) + np.int32(127)) << 23)
    return value if x >= _EXP_MIN else np.float32(0.0)


@numba.njit(fastmath=_FAST, inline="always")
def tanh_and_sech2(y):
    """(tanh y, sech² y = 1 − tanh² y) in float32, without a call to the C library (so the loops
    that use it stay vectorized): with e = exp(−2|y|), tanh |y| = (1 − e)/(1 + e) and
    sech² y = 4e/(1 + e)², which keeps its relative precision where tanh saturates (1 − tanh²
    would be 0 from |y| ≈ 9 on, and lose digits well before); for |y| < ``_TANH_NEAR``, tanh
    from its Taylor series and sech² as 1 − tanh². Within 2.5 ulp of float64 (tanh) and 3e-7
    relative (sech²), and non-decreasing, on a dense grid of [−20, 20] (tested)."""
    magnitude = abs(y)
    e = exp_nonpositive(-_TWO * magnitude)
    r = _ONE / (_ONE + e)
    t_far = (_ONE - e) * r
    s_far = _FOUR * e * r * r
    y2 = y * y
    c3, c5, c7, c9, c11, c13 = _TANH_SERIES
    t_near = y + y * y2 * (c3 + y2 * (c5 + y2 * (c7 + y2 * (c9 + y2 * (c11 + y2 * c13)))))
    if magnitude < _TANH_NEAR:
        return t_near, _ONE - t_near * t_near
    return (t_far if y >= _ZERO else -t_far), s_far


@numba.njit(fastmath=_FAST, inline="always")
def _count_if(count, condition):
    """``count + condition`` kept in int32: Numba widens int32 + int32 to int64, and an int64
    counter has half the vector lanes, so the counting passes would cost twice as much."""
    return np.int32(count + condition)


@numba.njit(fastmath=_FAST, inline="always")
def _pivot(guess, x):
    """guess · exp(x) to second order (any increasing function of x would do), as float32 bits."""
    return _bits_from_float32(np.float32(guess * max(1.0 + x + 0.5 * x * x, 0.0)))


@numba.njit(fastmath=_FAST)
def _bracket(e, bits, mass, guess, spread):
    """One pass summing the values and counting those at or above two pivots just above and below
    ``guess``, and what follows for :func:`keys_for_mass`: (total, lower, upper, top, count, n_in,
    sum_in), the candidates being the values in [lower, upper)."""
    high = _pivot(guess, _SPREAD * spread)
    low = _pivot(guess, -_SPREAD * spread)
    total = 0.0
    mass_high = 0.0
    mass_low = 0.0
    count_high = np.int32(0)  # int32 counters (see _count_if)
    count_low = np.int32(0)
    for j in range(e.shape[0]):
        b = bits[j]
        x = np.float64(e[j])
        total += x
        mass_high += x if b >= high else 0.0
        mass_low += x if b >= low else 0.0
        count_high = _count_if(count_high, b >= high)
        count_low = _count_if(count_low, b >= low)
    target = mass * total
    if mass_high >= target:  # the answer is at or above the high pivot
        return total, high, _NO_UPPER, 0.0, 0, count_high, mass_high
    if mass_low >= target:  # between the pivots
        return total, low, high, mass_high, count_high, count_low - count_high, mass_low - mass_high
    return total, np.int32(0), low, mass_low, count_low, e.shape[0] - count_low, total - mass_low


@numba.njit(cache=True, fastmath=_FAST)
def compact_band(bits, lower, upper, band_bits):
    """Copy the values of ``bits`` (int32) in [``lower``, ``upper``) to ``band_bits``, in order,
    followed by ``LANES`` values −1 (padding that no pass counts); returns how many were copied.
    ``band_bits`` needs ``len(bits) + LANES`` values; nothing beyond them is written."""
    n = bits.shape[0]
    m = _compact_band(bits, lower, upper, band_bits)
    for j in range(n - n % LANES, n):  # what is left beyond whole vectors
        b = bits[j]
        band_bits[m] = b
        m += (b >= lower) & (b < upper)
    for j in range(LANES):  # a fixed count vectorizes
        band_bits[m + j] = np.int32(-1)
    return m


@numba.njit(fastmath=_FAST)
def _select(e, target, scratch, max_rounds, upper, top, count, n_in, sum_in):
    """:func:`keys_for_mass` from where its first pass left it: the ``count`` values at or above
    ``upper`` sum to ``top``; the ``n_in`` candidates below ``upper``, summing to ``sum_in``, hold
    the answer. Returns (k, found); found is False when the values ran out before the target
    (only when it exceeds what ``e`` holds). Values with negative bits (padding) never count."""
    n = e.shape[0]
    bits = e.view(np.int32)
    rounds = 0
    while n_in > 1 and rounds < max_rounds:
        rounds += 1
        pivot = _bits_from_float32(np.float32(sum_in / n_in))
        above = 0.0
        m = np.int32(0)
        for j in range(n):
            b = bits[j]
            inside = (b >= pivot) & (b < upper)
            above += np.float64(e[j]) if inside else 0.0
            m = _count_if(m, inside)
        if m == 0 or m == n_in:  # all candidates equal (or the mean rounded onto an end)
            break
        if top + above >= target:
            n_in = m
            sum_in = above
        else:
            top += above
            count += m
            upper = pivot
            n_in -= m
            sum_in -= above
    if n_in == 1:
        return count + 1, True  # the one candidate left reaches the target
    for _ in range(_PEELS):
        largest = np.int32(-1)
        for j in range(n):
            b = bits[j]
            largest = max(largest, b if b < upper else np.int32(-1))
        if largest < 0:
            return count, False  # no value left
        ties = np.int32(0)
        for j in range(n):
            ties = _count_if(ties, bits[j] == largest)
        value = np.float64(_float32_from_bits(largest))
        for _ in range(ties):
            top += value
            count += 1
            if top >= target:
                return count, True
        upper = largest
    m = 0
    for j in range(n):
        b = bits[j]
        scratch[m] = e[j]
        m += (b < upper) & (b >= 0)
    ascending = np.sort(scratch[:m])
    for t in range(m - 1, -1, -1):
        top += np.float64(ascending[t])
        count += 1
        if top >= target:
            return count, True
    return count, False


@numba.njit(cache=True, fastmath=_FAST)
def keys_for_mass(e, mass, scratch, max_rounds, guess, spread, band):
    """(k, total): the smallest k whose k largest values of ``e`` (float32, ≥ 0) sum to at least
    ``mass`` (≤ 1) times their total, and that total (float64), without sorting ``e``.

    The ``count`` values at or above ``upper`` are taken, and their sum ``top`` stays below the
    target; the candidates are the values below ``upper`` and at or above the last pivot that
    reached the target (0 at first), so top plus their sum reaches it. Each round
    counts, in one vectorized pass, the candidates at or above their mean and keeps the side that
    holds the answer (the mean splits off at least one value unless all candidates are equal),
    until one candidate is left: the answer. If the candidates are all equal, or after
    ``max_rounds`` rounds, the walk down the sorted row goes on from ``upper``, one value at a
    time, ties together: up to ``_PEELS`` values by a masked max pass each, then by sorting the
    values below ``upper`` in ``scratch``.
    Values are compared by their bits as integers (same order for values ≥ 0, and vectorized);
    sums are float64.

    ``guess`` > 0 (with ``spread`` ≥ 0): where the answer's value is expected, and its spread in
    log-value; the first pass counts at two pivots ``_SPREAD`` spreads above and below it. A good
    guess leaves a few candidates after that one pass; a bad one only costs rounds, never
    correctness. ``band``: a buffer of at least ``len(e) + LANES`` values, or an empty array: when
    that pass leaves at most 1/``_BAND_SHARE`` of the values as candidates, they are copied there
    (:func:`_compact_band`, one pass) and the rounds read only them. Should they not reach the
    target after all (float64 rounding of the first pass's sums), the rounds run on ``e``.
    """
    n = e.shape[0]
    bits = e.view(np.int32)
    lower = np.int32(0)
    upper = _NO_UPPER
    top = 0.0
    count = 0
    n_in = n
    if guess > 0.0 and n > 1:
        total, lower, upper, top, count, n_in, sum_in = _bracket(e, bits, mass, guess, spread)
    else:
        total = 0.0
        for j in range(n):
            total += np.float64(e[j])
        sum_in = total
    target = mass * total
    if n_in > 1 and n_in * _BAND_SHARE <= n and band.shape[0] >= n + LANES:
        m = compact_band(bits, lower, upper, band.view(np.int32))
        padded = (m + LANES - 1) // LANES * LANES
        k, found = _select(
            band[:padded], target, scratch, max_rounds, upper, top, count, n_in, sum_in
        )
        if found:
            return k, total
    return _select(e, target, scratch, max_rounds, upper, top, count, n_in, sum_in)[0], total


@numba.njit(fastmath=_FAST, inline="always")
def _row(row, buffer, scratch, band, mass, quantile, softcap):
    """The metrics of one row of logits (its visible keys only), using ``buffer`` and ``scratch``
    (each at least ``_PAD`` longer than the row): (entropy, max_attn, p of the row's
    first key, gain_max_attn, gain_entropy, k_eff).

    The row is copied to ``buffer`` padded with masked keys to a multiple of ``_PAD``, so that
    every later pass runs whole vectors only (a scalar remainder of up to ``_PAD`` − 1 keys per
    pass cost more than the padding). The largest logit is found during the copy; one pass then
    turns ``buffer`` into e = exp(z − z_max) (0 for the padding) with the float32 sums Σe, Σe·d
    and Σe·d² (d = z − z_max), for the moments; k_eff and the float64 Σe from ``buffer`` by
    :func:`keys_for_mass`, its first guess
    from the moments: were d normal under p, the mass τ would lie above
    d* = E_p[d] + σ_p · Φ⁻¹(1 − τ) (``quantile`` is Φ⁻¹(1 − τ), NaN for no guess). Near-uniform
    rows, whose k_eff costs most to find, come close to that; peaked ones need a few more rounds.

    ``softcap`` c > 0 (float32): ``row`` holds the scaled logits a, and the model's logits are
    z = c·tanh(a/c) (Gemma-2's soft-cap, before the mask). tanh is increasing, so the largest a
    gives z_max; the same pass computes z, and g = dz/d ln s = a·sech²(a/c) (the derivative at
    s = 1 of c·tanh(s·a/c)) with the float32 sums Σe·g and Σe·d·g, for the gains' general forms
    p_max·(g_max − E_p[g]) and −Cov_p(z, g) (:mod:`spectra_attn.model.metrics`). d is clamped
    to ≤ 0, so that a rounding of tanh cannot lift a key above the largest one.
    """
    n = row.shape[0]
    padded = (n + _PAD - 1) // _PAD * _PAD
    work = buffer[:padded]
    row_bits = row.view(np.int32)
    work_bits = work.view(np.int32)
    largest = _ordered(row_bits[0])
    for j in range(n):
        bits = row_bits[j]
        work_bits[j] = bits
        largest = max(largest, _ordered(bits))  # vectorized; a float max is not
    for j in range(_PAD):  # a fixed count vectorizes; what lies beyond ``padded`` is not read
        work[n + j] = _DMIN
    z_max = _float32_from_bits(_ordered(largest))
    sum_e = _ZERO
    s1 = _ZERO
    s2 = _ZERO
    sg = _ZERO
    sdg = _ZERO
    g_max = _ZERO
    if softcap > _ZERO:
        a_max = z_max
        t_max, sech2_max = tanh_and_sech2(a_max / softcap)
        z_max = softcap * t_max
        g_max = a_max * sech2_max
        for j in range(padded):
            a = work[j]
            t, sech2 = tanh_and_sech2(a / softcap)
            visible = a > _DMIN  # the padding
            d = min(softcap * t - z_max, _ZERO) if visible else _DMIN
            g = a * sech2 if visible else _ZERO
            value = exp_nonpositive(d)
            work[j] = value
            weighted = value * d
            sum_e += value
            s1 += weighted
            s2 += weighted * d
            sg += value * g
            sdg += weighted * g
    else:
        for j in range(padded):
            d = max(work[j] - z_max, _DMIN)
            value = exp_nonpositive(d)
            work[j] = value
            weighted = value * d
            sum_e += value
            s1 += weighted
            s2 += weighted * d
    mean_d = np.float64(s1) / np.float64(sum_e)
    variance = max(np.float64(s2) / np.float64(sum_e) - mean_d * mean_d, 0.0)
    spread = math.sqrt(variance)
    guess = math.exp(mean_d + spread * quantile) if math.isfinite(quantile) else 0.0
    count, total = keys_for_mass(work, mass, scratch, _MAX_ROUNDS, guess, spread, band)
    p_max = 1.0 / total  # the largest e is exp(0) = 1 exactly
    if softcap > _ZERO:
        mean_g = np.float64(sg) / np.float64(sum_e)
        gain_max = p_max * (np.float64(g_max) - mean_g)
        gain_entropy = -(np.float64(sdg) / np.float64(sum_e) - mean_d * mean_g)
    else:  # g = z: p_max·(z_max − E_p[z]) and −Var_p(z)
        gain_max = p_max * -mean_d
        gain_entropy = -variance
    return (
        -math.log(p_max) - mean_d,
        p_max,
        work[0] / total,
        gain_max,
        gain_entropy,
        max(count, 1),
    )


@numba.njit(fastmath=_FAST, inline="always")
def _store(entropy, max_attn, k_eff, sink, gain_max, gain_ent, a, i, metrics, sees_first_key):
    """Write what :func:`_row` returned to ``[a, i]`` of the 2-D outputs (p of the row's first
    key is the attention sink's weight only if the row sees key 0)."""
    entropy[a, i] = metrics[0]
    max_attn[a, i] = metrics[1]
    sink[a, i] = metrics[2] if sees_first_key else 0.0
    gain_max[a, i] = metrics[3]
    gain_ent[a, i] = metrics[4]
    k_eff[a, i] = metrics[5]


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def row_metrics(z, mass, quantile, entropy, max_attn, k_eff, sink, gain_max, gain_ent, tasks):
    """Every metric of every row of the 2-D float32 logits ``z`` (masked keys hold
    ``metrics.MASKED_LOGIT`` or −inf), into row 0 of the ``[1, rows]`` outputs. ``mass``: the
    k_eff threshold minus its tolerance; ``quantile``: see :func:`_row`; ``tasks``: how many
    interleaved sets of rows the threads share (a few per thread balances their load)."""
    rows, keys = z.shape
    tasks = max(1, min(rows, tasks))
    for task in numba.prange(tasks):
        e = np.empty(keys + _PAD, np.float32)
        scratch = np.empty(keys + _PAD, np.float32)
        band = np.empty(keys + _PAD + LANES if COMPACT_BAND else 0, np.float32)
        for r in range(task, rows, tasks):
            metrics = _row(z[r], e, scratch, band, mass, quantile, _ZERO)
            _store(entropy, max_attn, k_eff, sink, gain_max, gain_ent, 0, r, metrics, True)


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def attention_metrics(
    query,
    key_t,
    length,
    groups,
    window,
    softcap,
    mass,
    quantile,
    entropy,
    max_attn,
    k_eff,
    sink,
    gain_max,
    gain_ent,
    tasks,
):
    """Every metric of causal attention softmax(q kᵀ) for every query row, the logits computed
    inside the kernel, ``TILE_ROWS`` rows × ``LANES`` keys at a time (:func:`_logits_tile`), so no
    logits ever leave the cache and no future key is computed beyond the last tile of a row.

    ``query``: ``[A, ≥ T rounded up to TILE_ROWS, d]``, already scaled; ``key_t``: the keys
    transposed, ``[A / groups, d, ≥ T + LANES]`` (query head a reads key head a div ``groups``);
    padding rows and columns must be finite (zeros). Row i sees keys ``lo … i`` (lo = 0, or the
    first key inside a ``window`` > 0). ``softcap`` c > 0: the metrics of softmax(c·tanh(q kᵀ/c))
    (Gemma-2's cap of the scaled logits, then the mask) with the gains of the capped logits
    (:func:`_row`); 0: no cap. Outputs ``[A, T]``. ``mass``, ``quantile``, ``tasks`` as in
    :func:`row_metrics`.
    """
    cap = np.float32(softcap)  # float32, so that no pass over a row widens to float64
    heads, _, dim = query.shape
    tiles_per_head = (length + TILE_ROWS - 1) // TILE_ROWS
    tiles = heads * tiles_per_head
    tasks = max(1, min(tiles, tasks))
    for task in numba.prange(tasks):
        z = np.empty((TILE_ROWS, length + LANES), np.float32)
        e = np.empty(length + _PAD, np.float32)
        scratch = np.empty(length + _PAD, np.float32)
        band = np.empty(length + _PAD + LANES if COMPACT_BAND else 0, np.float32)
        for tile in range(task, tiles, tasks):  # interleaved: every task gets short and long rows
            a = tile // tiles_per_head
            first = (tile - a * tiles_per_head) * TILE_ROWS
            kv = a // groups
            last = min(first + TILE_ROWS, length)  # one past the tile's last row
            start = 0
            if window > 0:
                start = max(0, first + 1 - window) // LANES * LANES
            for key0 in range(start, last, LANES):
                _logits_tile(z, query, key_t, a, first, kv, key0, dim)
            for i in range(first, last):
                hi = i + 1
                lo = max(0, hi - window) if window > 0 else 0
                metrics = _row(z[i - first, lo:hi], e, scratch, band, mass, quantile, cap)
                _store(entropy, max_attn, k_eff, sink, gain_max, gain_ent, a, i, metrics, lo == 0)
