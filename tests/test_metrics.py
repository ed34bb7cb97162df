"""Row metrics against hand-made distributions, scipy, float64 numpy and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from spectra_attn.metrics import (
    MASKED_LOGIT,
    blocked_metrics,
    causal_logits,
    keys_for_mass,
    row_metrics,
)


def logits_of(probabilities) -> torch.Tensor:
    p = torch.tensor(probabilities, dtype=torch.float64)
    return torch.where(p > 0, p.log(), torch.tensor(float("-inf"), dtype=torch.float64))


@pytest.mark.parametrize("n", [1, 2, 7, 10, 100, 512])
def test_uniform_rows(n):
    metrics = row_metrics(torch.zeros(1, n))
    assert metrics.entropy.item() == pytest.approx(math.log(n), abs=1e-5)
    assert metrics.max_attn.item() == pytest.approx(1 / n, rel=1e-5)
    assert metrics.k_eff.item() == math.ceil(round(0.9 * n, 9))  # n=10 → 9: a tie at 0.9
    assert metrics.gain_entropy.item() == pytest.approx(0.0, abs=1e-6)
    assert metrics.gain_max_attn.item() == pytest.approx(0.0, abs=1e-6)


def test_one_hot_rows():
    logits = logits_of([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    metrics = row_metrics(logits)
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
def test_k_eff_ties_at_the_threshold(probabilities, threshold, expected):
    assert row_metrics(logits_of([probabilities]), threshold).k_eff.item() == expected
    p = torch.tensor([probabilities], dtype=torch.float32)
    assert keys_for_mass(p, threshold).item() == expected


def test_random_rows_equal_scipy_and_float64():
    generator = np.random.default_rng(0)
    logits = generator.normal(scale=3.0, size=(64, 200))
    logits[:, 150:] = -np.inf  # a masked tail, like a causal row
    metrics = row_metrics(torch.tensor(logits, dtype=torch.float32))
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


def test_gains_are_derivatives_with_respect_to_log_scale():
    """d metric / d ln s of softmax(s·z) at s = 1, by central finite differences in float64."""
    generator = np.random.default_rng(1)
    z = torch.tensor(generator.normal(scale=2.0, size=(16, 50)))
    step = 1e-4

    def at(log_scale):
        p = torch.softmax(z * math.exp(log_scale), dim=-1)
        return -(p * p.log()).sum(-1), p.max(-1).values

    entropy_up, max_up = at(step)
    entropy_down, max_down = at(-step)
    metrics = row_metrics(z.float())
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


def test_results_do_not_keep_the_block_alive():
    """Each metric owns its storage: a view into the [rows, keys] probabilities would keep every
    block's matrix in memory until the layer is done (1 GB at T = 8192 on the bench model)."""
    metrics = row_metrics(torch.randn(4, 64, 512))
    for name in ("entropy", "max_attn", "k_eff", "sink_attn", "gain_max_attn", "gain_entropy"):
        tensor = getattr(metrics, name)
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
