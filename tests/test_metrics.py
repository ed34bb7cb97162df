"""Row metrics against hand-made distributions, scipy, float64 numpy and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from spectra_attn.model.metrics import (
    MASKED_LOGIT,
    METRIC_NAMES,
    LogitTransform,
    _row_metrics_cpu,
    _row_metrics_torch,
    blocked_metrics,
    causal_logits,
    keys_for_mass,
    row_metrics,
)

# Both implementations face every reference: the fused CPU kernel (what row_metrics runs on the
# CPU) and the torch composition (what it runs on a GPU).
IMPLEMENTATIONS = {"fused_cpu": _row_metrics_cpu, "torch": _row_metrics_torch}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def metrics_of(request):
    implementation = IMPLEMENTATIONS[request.param]

    def compute(logits, threshold=0.9):
        return implementation(logits, threshold)

    return compute


def logits_of(probabilities) -> torch.Tensor:
    p = torch.tensor(probabilities, dtype=torch.float64)
    return torch.where(p > 0, p.log(), torch.tensor(float("-inf"), dtype=torch.float64))


@pytest.mark.parametrize("n", [1, 2, 7, 10, 100, 512])
def test_uniform_rows(n, metrics_of):
    metrics = metrics_of(torch.zeros(1, n))
    assert metrics.entropy.item() == pytest.approx(math.log(n), abs=1e-5)
    assert metrics.max_attn.item() == pytest.approx(1 / n, rel=1e-5)
    assert metrics.k_eff.item() == math.ceil(round(0.9 * n, 9))  # n=10 → 9: a tie at 0.9
    assert metrics.gain_entropy.item() == pytest.approx(0.0, abs=1e-6)
    assert metrics.gain_max_attn.item() == pytest.approx(0.0, abs=1e-6)


def test_one_hot_rows(metrics_of):
    logits = logits_of([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    metrics = metrics_of(logits)
    assert metrics.entropy.tolist() == [0.0, 0.0]
    assert metrics.max_attn.tolist() == [1.0, 1.0]
    assert metrics.k_eff.tolist() == [1, 1]


@pytest.mark.parametrize(
    ("probabilities", "threshold", "expected"),
    [
        ([0.6, 0.3, 0.1], 0.9, 2),  # the top two sum to exactly 0.9
        ([0.5, 0.5], 0.5, 1),
        ([0.45, 0.45, 0.1], 0.9, 2),
        ([0.4, 0.3, 0.2, 0.1], 0.9, 3),
        ([0.4, 0.3, 0.2, 0.1], 0.95, 4),
        ([0.1, 0.2, 0.7], 0.7, 1),  # order of keys does not matter
        ([0.25] * 4, 1.0, 4),
    ],
)
def test_k_eff_ties_at_the_threshold(probabilities, threshold, expected, metrics_of):
    assert metrics_of(logits_of([probabilities]), threshold).k_eff.item() == expected
    p = torch.tensor([probabilities], dtype=torch.float32)
    assert keys_for_mass(p, threshold).item() == expected


def test_random_rows_equal_scipy_and_float64(metrics_of):
    generator = np.random.default_rng(0)
    logits = generator.normal(scale=3.0, size=(64, 200))
    logits[:, 150:] = -np.inf  # a masked tail, like a causal row
    metrics = metrics_of(torch.tensor(logits, dtype=torch.float32))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(metrics.entropy, scipy.stats.entropy(p, axis=1), rtol=2e-5)
    np.testing.assert_allclose(metrics.max_attn, p.max(axis=1), rtol=2e-5)
    cumulative = np.cumsum(-np.sort(-p, axis=1), axis=1)
    np.testing.assert_array_equal(metrics.k_eff, (cumulative < 0.9).sum(axis=1) + 1)
    z = np.where(np.isfinite(logits), logits, 0.0)
    mean = (p * z).sum(axis=1)
    np.testing.assert_allclose(
        metrics.gain_entropy, -(p * (z - mean[:, None]) ** 2).sum(axis=1), rtol=2e-4
    )


def test_gains_are_derivatives_with_respect_to_log_scale(metrics_of):
    """d metric / d ln s of softmax(s·z) at s = 1, by central finite differences in float64."""
    generator = np.random.default_rng(1)
    z = torch.tensor(generator.normal(scale=2.0, size=(16, 50)))
    step = 1e-4

    def at(log_scale):
        p = torch.softmax(z * math.exp(log_scale), dim=-1)
        return -(p * p.log()).sum(-1), p.max(-1).values

    entropy_up, max_up = at(step)
    entropy_down, max_down = at(-step)
    metrics = metrics_of(z.float())
    np.testing.assert_allclose(
        metrics.gain_entropy, (entropy_up - entropy_down) / (2 * step), rtol=1e-3, atol=1e-5
    )
    np.testing.assert_allclose(
        metrics.gain_max_attn, (max_up - max_down) / (2 * step), rtol=1e-3, atol=1e-5
    )


def test_causal_logits_mask_future_and_outside_window():
    q = torch.randn(1, 6, 4)
    k = torch.randn(1, 6, 4)
    logits = causal_logits(q[:, 2:5], k, 0.5, query_start=2, sliding_window=2)
    assert logits.shape == (1, 3, 5)
    finite = logits[0] > MASKED_LOGIT
    # row for query 2 sees keys 1, 2; query 3 sees 2, 3; query 4 sees 3, 4
    assert finite.tolist() == [
        [False, True, True, False, False],
        [False, False, True, True, False],
        [False, False, False, True, True],
    ]
    torch.testing.assert_close(logits[0, 0, 1], (q[0, 2] @ k[0, 1]) * 0.5)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_blocks_do_not_change_the_metrics(block_size):
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 50, 8), torch.randn(2, 3, 50, 8)
    whole = blocked_metrics(q, k, 0.35, block_size=50)
    blocked = blocked_metrics(q, k, 0.35, block_size=block_size)
    for name in ("entropy", "max_attn", "k_eff", "sink_attn", "gain_max_attn", "gain_entropy"):
        torch.testing.assert_close(getattr(blocked, name), getattr(whole, name))
    assert whole.entropy.shape == (2, 3, 50)


def test_results_do_not_keep_the_block_alive(metrics_of):
    """Each metric owns its storage: a view into the [rows, keys] probabilities would keep every
    block's matrix in memory until the layer is done (1 GB at T = 8192 on the bench model)."""
    metrics = metrics_of(torch.randn(4, 64, 512))
    for name in ("entropy", "max_attn", "k_eff", "sink_attn", "gain_max_attn", "gain_entropy"):
        tensor = getattr(metrics, name)
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 512])
@pytest.mark.parametrize("peak", [0.0, 0.05, 2.0, 8.0])
def test_k_eff_by_selection_equals_float64_sort(n, peak, metrics_of):
    """The CPU kernel finds k_eff by selection, on rows padded to a multiple of 32 keys: row
    lengths around those multiples, and rows from flat (every key tied) through near-uniform (the
    bench model's rows) to peaked, cover its paths."""
    generator = np.random.default_rng(n)
    logits = generator.normal(scale=peak, size=(256, n)) if peak else np.zeros((256, n))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.cumsum(-np.sort(-p, axis=1), axis=1)
    expected = np.minimum((top < 0.9 - 1e-6).sum(axis=1) + 1, n)
    k_eff = metrics_of(torch.tensor(logits, dtype=torch.float32)).k_eff.numpy()
    # Ties with the float64 sums within float32 rounding of the threshold may go either way.
    near = np.abs(top - 0.9).min(axis=1) < 1e-5
    np.testing.assert_array_equal(k_eff[~near], expected[~near])
    assert np.abs(k_eff[near] - expected[near]).max(initial=0) <= 1


def _sorted_walk(values: np.ndarray, target: float) -> int:
    """The reference: walk down the sorted values, summing in float64."""
    top = np.cumsum(np.sort(values.astype(np.float64))[::-1])
    return int(np.searchsorted(top, target, side="left")) + 1 if target <= top[-1] else len(top)


def _guess_putting_the_low_pivot_on(value: np.float32, spread: float) -> float:
    """A guess whose low pivot (the kernel's own ``_pivot(guess, −_SPREAD · spread)``) is exactly
    ``value``: values equal to a pivot must count on its side."""
    from spectra_attn.model.cpu_kernels import _SPREAD, _pivot

    x = -_SPREAD * spread
    target = int(np.float32(value).view(np.int32))
    guess = float(value) / max(1.0 + x + 0.5 * x * x, 0.0)  # where to start looking
    for _ in range(1000):
        pivot = int(_pivot(guess, x))
        if pivot == target:
            return guess
        guess = np.nextafter(guess, np.inf if pivot < target else -np.inf)
    raise AssertionError("no guess puts the pivot on the value")


ROWS_FOR_SELECTION = {
    "near_uniform": lambda g: np.exp(g.normal(scale=0.05, size=300)),
    "peaked": lambda g: np.exp(g.normal(scale=3.0, size=300)),
    "sink": lambda g: np.concatenate([[50.0], np.exp(g.normal(size=299))]),
    "ties": lambda g: np.repeat(g.uniform(size=6), 50),
    "all_equal": lambda g: np.full(300, 0.25),
    "zeros_padding": lambda g: np.concatenate([np.exp(g.normal(size=290)), np.zeros(10)]),
    "two_values": lambda g: np.where(g.uniform(size=300) < 0.5, 1.0, np.nextafter(1.0, 0.0)),
    # One value per 0.85 ratio: a bracket whose low pivot is on a value holds just two of them.
    "geometric": lambda g: g.permutation(0.85 ** np.arange(300)),
}


@pytest.mark.parametrize("row", sorted(ROWS_FOR_SELECTION))
@pytest.mark.parametrize(
    ("guess", "spread"),
    [
        (0.0, 0.0),
        (None, None),
        (1e3, 0.1),
        (1e-30, 0.1),
        (None, 0.0),
        (None, 50.0),
        ("answer", 0.0),
        ("answer", 1.0),
    ],
    ids=[
        "no_guess",
        "moments",
        "too_high",
        "too_low",
        "no_spread",
        "huge_spread",
        "both_pivots_on_the_answer",
        "low_pivot_on_the_answer",
    ],
)
@pytest.mark.parametrize("max_rounds", [0, 1, 48])
@pytest.mark.parametrize("mass", [0.5, 0.9, 0.999])
@pytest.mark.parametrize("band", [True, False], ids=["band", "in_place"])
def test_keys_for_mass_is_exact_whatever_the_guess(row, guess, spread, max_rounds, mass, band):
    """Every path of the selection (guess bracket, the candidates copied to a band of their own
    or left in place, rounds, the peel of tied values, the final sort when the rounds run out)
    gives what a walk down the sorted row gives; a guess only changes how fast."""
    from spectra_attn.model.cpu_kernels import LANES, keys_for_mass

    values = ROWS_FOR_SELECTION[row](np.random.default_rng(len(row))).astype(np.float32)
    values /= values.max()
    total = float(values.astype(np.float64).sum())
    target = mass * total
    answer = np.sort(values)[::-1][_sorted_walk(values, target) - 1]
    if guess == "answer":  # the low pivot exactly on the answer's value (both, for spread 0)
        guess = _guess_putting_the_low_pivot_on(answer, spread)
    elif guess is None:  # the kernel's own guess: the normal quantile from the moments
        d = np.log(values[values > 0].astype(np.float64))
        w = values[values > 0] / total
        mean = float((w * d).sum())
        sigma = float(np.sqrt(max((w * d * d).sum() - mean**2, 0.0))) if spread is None else spread
        guess, spread = math.exp(mean + sigma * scipy.stats.norm.ppf(1 - mass)), sigma
    scratch = np.empty_like(values)
    # Filled with the answer's value, so that anything read beyond what the copy wrote would
    # count as a candidate.
    band_buffer = np.full(len(values) + LANES if band else 0, answer)
    got, summed = keys_for_mass(values, mass, scratch, max_rounds, guess, spread, band_buffer)
    assert got == _sorted_walk(values, target)
    assert summed == pytest.approx(total, rel=1e-15)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 47, 64, 300])
@pytest.mark.parametrize(("lower", "upper"), [(-5, 5), (0, 1), (3, 3), (-(2**31), 2**31 - 1)])
def test_compact_band_copies_the_band_in_order(length, lower, upper):
    """The vectorized copy of k_eff's candidates: exactly the values in [lower, upper), in order
    (bounds included or not as they should be, whole vectors and what is left beyond them),
    then LANES values −1, and nothing written beyond len + LANES."""
    from spectra_attn.model.cpu_kernels import LANES, compact_band

    bits = np.random.default_rng(length).integers(-8, 8, size=length).astype(np.int32)
    out = np.full(length + 2 * LANES, 12345, np.int32)
    m = compact_band(bits, np.int32(lower), np.int32(upper), out[: length + LANES])
    expected = bits[(bits >= lower) & (bits < upper)]
    assert m == len(expected)
    np.testing.assert_array_equal(out[:m], expected)
    np.testing.assert_array_equal(out[m : m + LANES], -1)
    assert (out[length + LANES :] == 12345).all()


KERNEL_FEATURES = """
import json
import spectra_attn.model.cpu_kernels as kernels
from numba.core.codegen import get_host_cpu_features
from numba.core.registry import cpu_target
print(json.dumps({
    "host": get_host_cpu_features(),
    "compiled_with": cpu_target.target_context.codegen().magic_tuple()[2],
    "wide": kernels.WIDE_VECTOR_FEATURES,
    "band": kernels.COMPACT_BAND,
}))
"""


def test_kernels_use_512_bit_vectors_where_the_cpu_has_them_unless_numba_is_told_otherwise():
    """LLVM tunes most AVX-512 CPUs to prefer 256-bit vectors; the kernels' code generator is
    told not to (benchmarks/RESULTS.md), and a user's NUMBA_CPU_FEATURES stands."""
    import json

    from tests.helpers import run_python

    def features(**env):
        output = run_python(KERNEL_FEATURES, drop=("NUMBA_CPU",), **env)
        return json.loads(output.strip().splitlines()[-1])

    default = features()
    avx512 = "+avx512f" in default["host"].split(",")
    assert default["band"] == avx512
    if avx512:
        assert default["wide"] == default["compiled_with"] == default["host"] + ",-prefer-256-bit"
    else:
        assert default["wide"] is None
        assert default["compiled_with"] == default["host"]
    own = features(NUMBA_CPU_FEATURES=default["host"])
    assert own["wide"] is None
    assert own["compiled_with"] == default["host"]


@pytest.mark.parametrize("keys", [512, 8192, 32768])
@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_cpu_kernel_is_float32_accurate_on_long_rows(keys, scale):
    """The kernel's moments are float32 sums: on long rows, from near-uniform (where the variance
    is a small difference of large terms) to peaked, the entropy and the gains stay within a few
    float32 roundings of a float64 recomputation, and k_eff (float64 sums) is exact."""
    z = np.random.default_rng(keys).normal(scale=scale, size=(16, keys)).astype(np.float32)
    got = _row_metrics_cpu(torch.from_numpy(z), 0.9)
    zd = z.astype(np.float64)
    p = np.exp(zd - zd.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    mean = (p * zd).sum(axis=1)
    np.testing.assert_allclose(got.entropy, -(p * np.log(p)).sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(got.max_attn, p.max(axis=1), rtol=1e-6)
    # Tiny weights carry the float32 rounding of z − z_max (2e-6 of a logit 18 below the max).
    np.testing.assert_allclose(got.sink_attn, p[:, 0], rtol=1e-6, atol=1e-12)
    gain_max = p.max(axis=1) * (zd.max(axis=1) - mean)
    np.testing.assert_allclose(got.gain_max_attn, gain_max, rtol=2e-6)
    variance = (p * (zd - mean[:, None]) ** 2).sum(axis=1)
    np.testing.assert_allclose(-got.gain_entropy, variance, rtol=2e-5)
    top = np.cumsum(-np.sort(-p, axis=1), axis=1)
    expected = (top < 0.9 - 1e-6).sum(axis=1) + 1
    near = np.abs(top - 0.9).min(axis=1) < 1e-6  # float32 e may fall on either side there
    np.testing.assert_array_equal(got.k_eff.numpy()[~near], expected[~near])


def test_fused_cpu_kernel_equals_torch_on_causal_blocks():
    """Both implementations on masked causal and sliding-window blocks of a grouped-query layer."""
    torch.manual_seed(3)
    q, k = torch.randn(2, 2, 4, 96, 16) * 2, torch.randn(2, 2, 1, 96, 16)
    for start, window in ((0, None), (40, None), (64, 24)):
        logits = causal_logits(q[..., start : start + 32, :], k, 0.25, start, window)
        fused, reference = _row_metrics_cpu(logits, 0.9), _row_metrics_torch(logits, 0.9)
        for name in METRIC_NAMES:
            tolerance = {"rtol": 1e-4, "atol": 1e-5} if name.startswith("gain") else {}
            torch.testing.assert_close(
                getattr(fused, name), getattr(reference, name), **tolerance, msg=name
            )


@pytest.mark.parametrize(
    ("length", "block_size", "window", "dim"),
    [
        (100, 32, None, 16),
        (77, 128, None, 16),
        (130, 48, 20, 16),
        (64, 64, 1, 16),
        (5, 64, None, 20),
        (35, 8, 17, 3),
    ],
)
@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_blocked_cpu_kernel_equals_the_masked_torch_path(
    length, block_size, window, dim, scale, monkeypatch
):
    """On the CPU, blocked_metrics computes the logits inside the kernel, four rows × sixteen keys
    at a time, and reads only each row's visible keys: it gives what torch's masked logits and the
    torch composition give, on grouped-query heads, lengths that are not multiples of the tile
    (rows or keys), rows of every length (so every padding to 32 keys), sliding windows, and head
    sizes of any width."""
    from spectra_attn.model import metrics

    torch.manual_seed(length)
    q = torch.randn(2, 2, 3, length, dim) * scale
    k = torch.randn(2, 2, 1, length, dim) * scale
    fused = blocked_metrics(q, k, 0.25, 0.9, block_size, window)
    monkeypatch.setattr(metrics, "CPU_KERNEL", False)  # masked blocks, torch composition
    reference = blocked_metrics(q, k, 0.25, 0.9, block_size, window)
    assert fused.entropy.shape == (2, 2, 3, length)
    for name in METRIC_NAMES:
        tolerance = {"rtol": 1e-4, "atol": 1e-5} if name.startswith("gain") else {}
        torch.testing.assert_close(
            getattr(fused, name), getattr(reference, name), **tolerance, msg=name
        )


@pytest.mark.parametrize("window", [None, 3, 100])
def test_causal_logits_equal_a_float64_masked_product(window):
    torch.manual_seed(4)
    q, k = torch.randn(2, 20, 8), torch.randn(2, 20, 8)
    logits = causal_logits(q[:, 5:12], k, 0.3, query_start=5, sliding_window=window)
    full = (q.double() @ k.double().transpose(-1, -2) * 0.3)[:, 5:12, :12]
    query_pos, key_pos = np.arange(5, 12)[:, None], np.arange(12)[None, :]
    visible = key_pos <= query_pos
    if window is not None:
        visible &= key_pos > query_pos - window
    np.testing.assert_allclose(logits.numpy()[:, visible], full.numpy()[:, visible], rtol=1e-5)
    assert (logits.numpy()[:, ~visible] == MASKED_LOGIT).all()


def test_row_metrics_on_the_cpu_runs_the_fused_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(
        "spectra_attn.model.metrics._row_metrics_cpu",
        lambda logits, threshold: calls.append(threshold) or _row_metrics_torch(logits, threshold),
    )
    row_metrics(torch.zeros(2, 8), 0.8)
    assert calls == [0.8]


def test_the_cpu_kernels_exp_is_within_an_ulp_of_float64():
    from spectra_attn.model.cpu_kernels import exp_nonpositive

    x = np.concatenate([np.linspace(-87.0, 0.0, 20001), -np.logspace(-8, 0, 200), [0.0]])
    x = x.astype(np.float32)
    got = np.array([exp_nonpositive(value) for value in x])
    expected = np.exp(x.astype(np.float64))
    np.testing.assert_allclose(got, expected, rtol=1.2e-7, atol=0)
    assert exp_nonpositive(np.float32(0.0)) == 1.0  # so p_max = 1 / Σe exactly
    for masked in (-87.01, MASKED_LOGIT, -np.inf):
        assert exp_nonpositive(np.float32(masked)) == 0.0


def test_grouped_query_logits_equal_those_of_repeated_keys():
    """The one-GEMM path for grouped-query heads gives what broadcasting the key would."""
    torch.manual_seed(5)
    q, k = torch.randn(2, 3, 4, 30, 8), torch.randn(2, 3, 1, 30, 8)
    grouped = causal_logits(q[..., 10:20, :], k, 0.4, 10)
    repeated = causal_logits(q[..., 10:20, :], k.expand(2, 3, 4, 30, 8).contiguous(), 0.4, 10)
    assert grouped.shape == (2, 3, 4, 10, 20)
    torch.testing.assert_close(grouped, repeated)


def test_cpu_kernel_computes_in_float32_from_bfloat16_inputs(monkeypatch):
    """A bfloat16 model's queries and keys: the CPU kernel widens them to float32 before scaling
    and multiplying, as the torch path does (scaling in bfloat16 would cost ~3 significant
    digits)."""
    from spectra_attn.model import metrics

    torch.manual_seed(0)
    q = torch.randn(1, 2, 4, 50, 16).bfloat16()
    k = torch.randn(1, 2, 1, 50, 16).bfloat16()
    fused = blocked_metrics(q, k, 0.3)
    reference = blocked_metrics(q.float(), k.float(), 0.3)
    for name in METRIC_NAMES:
        torch.testing.assert_close(getattr(fused, name), getattr(reference, name), msg=name)
    monkeypatch.setattr(metrics, "CPU_KERNEL", False)
    composed = blocked_metrics(q, k, 0.3)
    for name in METRIC_NAMES:
        tolerance = {"rtol": 1e-4, "atol": 1e-5} if name.startswith("gain") else {}
        torch.testing.assert_close(
            getattr(fused, name), getattr(composed, name), **tolerance, msg=name
        )


def test_the_cpu_kernels_tanh_and_sech2_are_float32_accurate():
    """tanh and sech² = 1 − tanh² of the soft-cap kernel against float64, on a dense grid through
    both of its forms (the series below 0.5, exp(−2|y|) above) and into saturation, where sech²
    keeps its relative precision (1 − tanh² in float32 would be 0)."""
    from spectra_attn.model.cpu_kernels import tanh_and_sech2

    grid = np.linspace(-30.0, 30.0, 600001)
    tiny = np.logspace(-8, 1.5, 2001)
    y = np.unique(np.concatenate([grid, tiny, -tiny, [0.0]]).astype(np.float32))
    got = np.array([tanh_and_sech2(value) for value in y], dtype=np.float32)
    tanh, sech2 = got[:, 0], got[:, 1]
    yd = y.astype(np.float64)
    expected = np.tanh(yd)
    ulp = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
    assert (np.abs(tanh - expected) / ulp).max() < 2.5
    assert (np.diff(tanh) >= 0).all()  # non-decreasing: the largest a gives the largest z
    expected_sech2 = 1.0 / np.cosh(yd) ** 2
    normal = expected_sech2 > np.finfo(np.float32).tiny
    np.testing.assert_allclose(sech2[normal], expected_sech2[normal], rtol=3e-7, atol=0)
    assert tanh_and_sech2(np.float32(0.0)) == (0.0, 1.0)
    assert tanh_and_sech2(np.float32(MASKED_LOGIT)) == (-1.0, 0.0)


def _capped_reference(q, k, scaling, softcap, window, threshold):
    """Float64 metrics of softmax(c·tanh(scaling·q·kᵀ/c) + causal (window) mask), with the gains
    through the cap (g = a·sech²(a/c)), computed independently of the package: one full
    [rows, T] matrix per head, numpy's tanh, a sort for k_eff."""
    a = scaling * np.einsum("...qd,...kd->...qk", q.astype(np.float64), k.astype(np.float64))
    length = a.shape[-1]
    query_pos, key_pos = np.arange(length)[:, None], np.arange(length)[None, :]
    visible = key_pos <= query_pos
    if window is not None:
        visible &= key_pos > query_pos - window
    z = softcap * np.tanh(a / softcap)
    g = a / np.cosh(a / softcap) ** 2
    p = np.where(visible, np.exp(np.where(visible, z, -np.inf) - z.max(-1, keepdims=True)), 0.0)
    p /= p.sum(-1, keepdims=True)
    top = np.argmax(np.where(visible, z, -np.inf), axis=-1)[..., None]
    mean_z, mean_g = (p * z).sum(-1), (p * g).sum(-1)
    logp = np.log(np.where(p > 0, p, 1.0))
    cumulative = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
    return {
        "entropy": -(p * logp).sum(-1),
        "max_attn": p.max(-1),
        "sink_attn": p[..., 0],
        "gain_max_attn": p.max(-1) * (np.take_along_axis(g, top, -1)[..., 0] - mean_g),
        "gain_entropy": -((p * z * g).sum(-1) - mean_z * mean_g),
        "k_eff": (cumulative < threshold - 1e-6).sum(-1) + 1,
        "near_threshold": np.abs(cumulative - threshold).min(-1) < 1e-6,
    }


@pytest.mark.parametrize("window", [None, 7, 40])
def test_fused_cpu_kernel_applies_the_soft_cap_as_float64_does(window, monkeypatch):
    """Soft-capped logits (Gemma-2: z = c·tanh(a/c), then the mask) inside the fused CPU kernel,
    on grouped-query heads with and without a sliding window, against a float64 reference; the
    heads' scales go from a cap that hardly bends the logits to one that saturates most of them
    (|a/c| up to ~85, where 1 − tanh² in float32 would be 0). The blocked torch path is never
    taken on the CPU (it raises here)."""
    from spectra_attn.model import metrics

    def blocked(*args):
        raise AssertionError("soft-capped logits took the blocked torch path")

    monkeypatch.setattr(metrics, "_transformed_metrics", blocked)
    length, dim, softcap = 70, 16, 2.0
    generator = np.random.default_rng(7)
    head_scale = np.array([0.3, 1.0, 4.0, 20.0])[None, None, :, None, None]  # [1, kv, groups, ...]
    q = (generator.normal(size=(2, 2, 4, length, dim)) * head_scale).astype(np.float32)
    k = (generator.normal(size=(2, 2, 1, length, dim)) * 2.0).astype(np.float32)
    got = blocked_metrics(
        torch.from_numpy(q), torch.from_numpy(k), 0.25, 0.9, 32, window, LogitTransform(softcap)
    )
    expected = _capped_reference(q, k, 0.25, softcap, window, 0.9)
    saturated = np.abs(0.25 * np.einsum("...qd,...kd->...qk", q, k)) > 9 * softcap
    assert saturated[..., 3, :, :].mean() > 0.5  # the last head's rows are mostly saturated
    for name in ("entropy", "max_attn", "sink_attn"):
        np.testing.assert_allclose(
            getattr(got, name).numpy(), expected[name], rtol=1e-5, atol=2e-6, err_msg=name
        )
    if window is not None:  # rows past the window do not see key 0: no sink
        assert (got.sink_attn.numpy()[..., window:] == 0.0).all()
    for name in ("gain_max_attn", "gain_entropy"):
        np.testing.assert_allclose(
            getattr(got, name).numpy(), expected[name], rtol=1e-4, atol=2e-6, err_msg=name
        )
    near = expected["near_threshold"]
    assert near.mean() < 0.1
    np.testing.assert_array_equal(got.k_eff.numpy()[~near], expected["k_eff"][~near])
