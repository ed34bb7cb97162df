"""The intervention and its gate checks, each check proven to fail on a broken intervention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.capture import capture_batch
from spectra_attn.model.checks import (
    CheckFailed,
    baseline_sanity,
    isolation,
    require,
    temperature_identity,
)
from spectra_attn.model.intervention import (
    HeadSpec,
    QueryScaler,
    check_heads,
    run_sweep,
    scale_summary_table,
    sweep_batch,
    trend_analysis,
)
from spectra_attn.model.loading import use_capture_attention

from .test_capture import input_ids, tiny_model

SCALES = [0.5, 0.75, 1.0, 1.25, 1.5]
TARGET = HeadSpec(layer=1, head=2, role="target")


class WrongHeadScaler(QueryScaler):
    """Broken: scales the neighbouring head instead of the target."""

    def scale_query(self, query):
        self.head = (self.head + 1) % query.shape[1]
        try:
            return super().scale_query(query)
        finally:
            self.head = (self.head - 1) % query.shape[1]


class TokenAxisScaler(QueryScaler):
    """Broken as a hook on Gemma-3's q_norm output ([B, heads, T, d]) read as [B, T, heads, d]
    would be: scales token h of every head."""

    def scale_query(self, query):
        scaled = query.clone()
        scaled[:, :, self.head] *= self.scales.to(query.dtype).view(-1, 1, 1)
        return scaled


class AlsoKeysScaler(QueryScaler):
    """Broken: scales the target head's query and also its keys."""

    def edit(self, module, query, key, value):
        query, key, value = super().edit(module, query, key, value)
        if module.layer_idx == self.layer:
            kv_head = self.head // (query.shape[1] // key.shape[1])
            key = key.clone()
            key[:, kv_head] *= self.scales.to(key.dtype).view(-1, 1, 1)
        return query, key, value


class NoisyScaler(QueryScaler):
    """Broken: the hook perturbs the query even at scale 1.0."""

    def scale_query(self, query):
        return super().scale_query(query) * 1.001


class BeforeNormScaler(QueryScaler):
    """Broken: scales the query projection's output, before a q norm (StableLM's per-head
    LayerNorm normalises the scale away)."""

    def __enter__(self):
        attention = self.model.model.layers[self.layer].self_attn
        width = attention.head_dim

        def scale_projection(module, inputs, output):
            scaled = output.clone().view(*output.shape[:2], -1, width)
            scaled[:, :, self.head] *= self.scales.to(output.dtype).view(-1, 1, 1)
            return scaled.view(output.shape)

        self._handle = attention.q_proj.register_forward_hook(scale_projection)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


@pytest.fixture(scope="module")
def model():
    model = tiny_model("llama")
    use_capture_attention(model)
    return model


@pytest.fixture(scope="module", params=["pre", "post"])
def settings(request):
    return CaptureSettings(rope=request.param)


def test_sweep_scale_one_equals_plain_capture(model, settings):
    ids = input_ids(batch=2)
    result = sweep_batch(model, ids, TARGET, SCALES, settings)
    plain = capture_batch(model, ids, settings)[TARGET.layer]
    one = SCALES.index(1.0)
    for name in ("entropy", "max_attn", "k_eff", "query_norm"):
        torch.testing.assert_close(
            result[name][:, one], plain[name][:, TARGET.head], equal_nan=True
        )
    torch.testing.assert_close(result["kl"][:, one], torch.zeros(2), atol=1e-6, rtol=0)
    # The query norm scales exactly with s; the head's attention sharpens as s grows.
    torch.testing.assert_close(
        result["query_norm"][:, 0] * 3, result["query_norm"][:, -1], rtol=1e-5, atol=1e-6
    )
    entropy = result["entropy"][..., 2:].mean(-1)  # [samples, scales]
    assert (entropy.diff(dim=1) < 0).all()


@pytest.fixture(scope="module")
def sharp_model():
    """The tiny model with its output made to depend on the target head: its layer's query and
    output projections and the unembedding scaled up (random small weights give near-uniform
    next-token distributions, whose KL would be ~1e-6 at any scale)."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[TARGET.layer].self_attn.q_proj.weight.mul_(4)
        model.model.layers[TARGET.layer].self_attn.o_proj.weight.mul_(30)
        model.lm_head.weight.mul_(100)
    use_capture_attention(model)
    return model


def test_loss_kl_and_metrics_equal_separate_runs_with_torch_losses(sharp_model, settings):
    """The batched sweep (all scales in one pass, the prefix shared) against one plain run per
    scale, with the query scaled by a hook written here and the losses from torch.nn.functional:
    next-token cross-entropy and KL(baseline ‖ intervened), both in float64."""
    import torch.nn.functional as F

    model = sharp_model
    ids = input_ids(batch=2)
    result = sweep_batch(model, ids, TARGET, SCALES, settings)
    attention = model.model.layers[TARGET.layer].self_attn
    dim = model.config.hidden_size // model.config.num_attention_heads
    cut = slice(TARGET.head * dim, (TARGET.head + 1) * dim)
    with torch.inference_mode():
        base = model(input_ids=ids, use_cache=False).logits.double()
    for column, scale in enumerate(SCALES):

        def scale_query(module, inputs, output, scale=scale):
            output = output.clone()
            output[..., cut] *= scale
            return output

        handle = attention.q_proj.register_forward_hook(scale_query)
        try:
            with torch.inference_mode():
                logits = model(input_ids=ids, use_cache=False).logits.double()
                head = capture_batch(model, ids, settings)[TARGET.layer]
        finally:
            handle.remove()
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(
            -1
        )
        kl = F.kl_div(
            F.log_softmax(logits, -1), F.log_softmax(base, -1), log_target=True, reduction="none"
        )
        kl = kl.sum(-1).mean(-1)
        torch.testing.assert_close(result["loss"][:, column].double(), loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["kl"][:, column].double(), kl, rtol=1e-4, atol=1e-6)
        for name in ("entropy", "max_attn", "query_norm"):
            torch.testing.assert_close(
                result[name][:, column],
                head[name][:, TARGET.head],
                rtol=1e-5,
                atol=1e-6,
                equal_nan=True,
            )
        assert (result["k_eff"][:, column] - head["k_eff"][:, TARGET.head]).abs().max() <= 1
    assert (result["kl"][:, SCALES.index(1.0)] < 1e-6).all()
    assert (result["kl"][:, 0] > 1e-2).all()  # the comparison above was not between zeros


def test_scales_share_one_batched_pass(model, settings):
    """Two passes: the baseline, then one whose batch grows to samples × scales at the
    intervened layer (layers below it run once per sample)."""
    batches: dict[str, list[int]] = {"layer 0": [], "layer 1": [], "lm_head": []}
    handles = [
        model.model.layers[0].register_forward_hook(
            lambda m, i, o: batches["layer 0"].append(o.shape[0])
        ),
        model.model.layers[1].register_forward_hook(
            lambda m, i, o: batches["layer 1"].append(o.shape[0])
        ),
        model.lm_head.register_forward_hook(lambda m, i, o: batches["lm_head"].append(o.shape[0])),
    ]
    try:
        sweep_batch(model, input_ids(batch=2), TARGET, SCALES, settings)  # TARGET is in layer 1
    finally:
        for handle in handles:
            handle.remove()
    assert batches == {
        "layer 0": [2, 2],
        "layer 1": [2, 2 * len(SCALES)],
        "lm_head": [2, 2 * len(SCALES)],
    }


def test_run_sweep_tables_and_trends(model, caplog):
    tokens = input_ids(batch=3).numpy().astype(np.int32)
    with caplog.at_level("INFO"):
        token_table, sample_table = run_sweep(
            model, tokens, np.arange(10, 13), TARGET, SCALES, CaptureSettings(), batch_size=2
        )
    assert len(token_table) == 3 * len(SCALES) * tokens.shape[1]
    assert len(sample_table) == 3 * len(SCALES)
    assert set(sample_table.sample_id) == {10, 11, 12}
    assert {"loss", "kl", "entropy", "max_attn", "k_eff"} <= set(sample_table.columns)
    trends = trend_analysis(sample_table).set_index("metric")
    assert trends.loc["entropy", "observed"] == "decreasing"
    assert trends.loc["entropy", "spearman_rho"] == pytest.approx(-1.0)
    assert trends.loc["max_attn", "as_expected"]
    text = caplog.text
    assert text.index("expected as the query") < text.index("observed for L1_H2")
    seed = scale_summary_table(sample_table)
    assert list(seed.scale) == SCALES and (seed.n_samples == 3).all()
    assert {"entropy_mean", "entropy_std", "loss_mean", "kl_mean"} <= set(seed.columns)


def test_out_of_range_heads_are_named(model):
    with pytest.raises(ValueError, match="L2_H0 .*layer 2 is out of range.*layers 0-1"):
        check_heads([HeadSpec(2, 0)], model.config)
    with pytest.raises(ValueError, match="head 4 is out of range.*heads 0-3"):
        check_heads([HeadSpec(1, 4, "control")], model.config)


# ---- checks pass on the real intervention ----------------------------------------------------


def test_checks_pass(model, settings):
    ids = input_ids(batch=2)
    for report in (
        baseline_sanity(model, ids, TARGET, settings),
        isolation(model, ids, TARGET, 1.5),
        temperature_identity(model, ids, TARGET, SCALES, settings),
    ):
        assert report["passed"], report
        require(report)
        assert report["max_deviation"] <= report["tolerance"] == 1e-5


# ---- …and fail on broken ones ------------------------------------------------------------------


def test_isolation_catches_the_wrong_head(model):
    report = isolation(model, input_ids(batch=2), TARGET, 1.5, scaler_class=WrongHeadScaler)
    assert not report["passed"]
    assert report["deviations"]["target_query_vs_scale_times_baseline"] > 0.1
    assert report["deviations"]["other_queries"] > 0.1
    with pytest.raises(CheckFailed, match="isolation failed for L1_H2"):
        require(report)


def test_isolation_catches_scaled_keys(model):
    report = isolation(model, input_ids(batch=2), TARGET, 1.5, scaler_class=AlsoKeysScaler)
    assert not report["passed"] and report["deviations"]["keys"] > 0.1


@pytest.mark.parametrize("broken", [WrongHeadScaler, AlsoKeysScaler])
def test_temperature_identity_catches_broken_interventions(model, settings, broken):
    report = temperature_identity(
        model, input_ids(batch=2), TARGET, SCALES, settings, scaler_class=broken
    )
    assert not report["passed"]
    assert report["deviations"]["scale_1"] <= 1e-5  # at s = 1 nothing is scaled
    assert report["deviations"]["scale_1.5"] > 1e-3


def test_baseline_sanity_catches_a_hook_that_perturbs(model, settings):
    report = baseline_sanity(model, input_ids(batch=2), TARGET, settings, scaler_class=NoisyScaler)
    assert not report["passed"] and report["deviations"]["logits"] > 1e-5


@pytest.mark.parametrize("kind", ["qwen3", "olmo2"])
def test_scale_is_applied_after_q_norm(kind):
    """A scale applied before q_norm would be normalised away: isolation proves it survives."""
    model = tiny_model(kind)
    use_capture_attention(model)
    report = isolation(model, input_ids(batch=1), TARGET, 1.5)
    assert report["passed"], report
    result = sweep_batch(model, input_ids(batch=1), TARGET, [0.5, 1.5], CaptureSettings())
    torch.testing.assert_close(result["query_norm"][:, 0] * 3, result["query_norm"][:, 1])
