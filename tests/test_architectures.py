"""Every architecture of the table, each against its own eager attention: tiny random models of
each family with the flags that matter switched on (partial rotary, q/k norms, clip_qkv,
attention_multiplier, query_pre_attn_scalar ≠ head_dim, soft-cap, sliding windows shorter than
the sequence on alternating layers, Falcon's layouts with and without ALiBi, GPT-2's inverse-layer
scaling), projection weights scaled up so heads are peaky.

References: the eager attention's ``output_attentions`` (post-RoPE); the same eager attention
module, run again in float64 on the layer's own inputs with its modeling file's
``apply_rotary_pos_emb`` made the identity (pre-RoPE: after the norms, before the rotation); for
the intervention, the query-norm ratio (s for head h, 1 for every other head) and the gate checks,
which must fail when the scale hits the wrong head or axis.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import transformers

from spectra_attn.model.architectures import (
    ARCHITECTURES,
    NO_ROPE,
    UnsupportedModelError,
    architecture_for,
    check_transformers_version,
    pre_rope_meaning,
    raw_shape,
    rope_style,
)
from spectra_attn.model.attention import AttentionRecorder, CaptureSettings, attention_modules
from spectra_attn.model.capture import capture_batch
from spectra_attn.model.checks import isolation, temperature_identity
from spectra_attn.model.intervention import HeadSpec, QueryScaler, sweep_batch
from spectra_attn.model.loading import use_capture_attention

from .test_capture import assert_matches
from .test_intervention import BeforeNormScaler, TokenAxisScaler, WrongHeadScaler

VOCAB = 97
LENGTH = 32
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
ALTERNATING = dict(sliding_window=9, layer_types=["sliding_attention", "full_attention"])
GEMMA3_TEXT = dict(
    **COMMON, head_dim=16, query_pre_attn_scalar=24, **ALTERNATING, rope_local_base_freq=100.0
)
FALCON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


def _gemma3_multimodal(**kwargs):
    vision = transformers.SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    return transformers.Gemma3Config(
        text_config=transformers.Gemma3TextConfig(**GEMMA3_TEXT),
        vision_config=vision,
        mm_tokens_per_image=4,
        **kwargs,
    )


# name → (config maker, model class); every model_type of the table at least once.
MODELS = {
    "llama": (lambda **k: transformers.LlamaConfig(**COMMON, **k), "LlamaForCausalLM"),
    "mistral": (
        lambda **k: transformers.MistralConfig(**COMMON, sliding_window=9, **k),
        "MistralForCausalLM",
    ),
    "qwen2": (lambda **k: transformers.Qwen2Config(**COMMON, **k), "Qwen2ForCausalLM"),
    "qwen3": (lambda **k: transformers.Qwen3Config(**COMMON, head_dim=8, **k), "Qwen3ForCausalLM"),
    "olmo2": (lambda **k: transformers.Olmo2Config(**COMMON, **k), "Olmo2ForCausalLM"),
    "olmo": (lambda **k: transformers.OlmoConfig(**COMMON, clip_qkv=3.0, **k), "OlmoForCausalLM"),
    "gpt2": (
        lambda **k: transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            scale_attn_by_inverse_layer_idx=True,
            **k,
        ),
        "GPT2LMHeadModel",
    ),
    "gpt_neox": (
        lambda **k: transformers.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            rotary_pct=0.25,
            max_position_embeddings=128,
            **k,
        ),
        "GPTNeoXForCausalLM",
    ),
    "gemma": (lambda **k: transformers.GemmaConfig(**COMMON, head_dim=16, **k), "GemmaForCausalLM"),
    "gemma2": (
        lambda **k: transformers.Gemma2Config(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=4.0,
            **ALTERNATING,
            **k,
        ),
        "Gemma2ForCausalLM",
    ),
    "gemma3_text": (
        lambda **k: transformers.Gemma3TextConfig(**GEMMA3_TEXT, **k),
        "Gemma3ForCausalLM",
    ),
    "gemma3": (_gemma3_multimodal, "Gemma3ForConditionalGeneration"),
    "phi3": (
        lambda **k: transformers.Phi3Config(
            **COMMON, partial_rotary_factor=0.5, sliding_window=9, pad_token_id=0, **k
        ),
        "Phi3ForCausalLM",
    ),
    "granite": (
        lambda **k: transformers.GraniteConfig(**COMMON, attention_multiplier=0.35, **k),
        "GraniteForCausalLM",
    ),
    "stablelm": (
        lambda **k: transformers.StableLmConfig(
            **COMMON, qk_layernorm=True, partial_rotary_factor=0.25, pad_token_id=0, **k
        ),
        "StableLmForCausalLM",
    ),
    "cohere": (
        lambda **k: transformers.CohereConfig(**COMMON, use_qk_norm=True, **k),
        "CohereForCausalLM",
    ),
    "falcon_multi_query": (
        lambda **k: transformers.FalconConfig(**FALCON, multi_query=True, **k),
        "FalconForCausalLM",
    ),
    "falcon_new_decoder": (
        lambda **k: transformers.FalconConfig(
            **FALCON, new_decoder_architecture=True, num_kv_heads=2, **k
        ),
        "FalconForCausalLM",
    ),
    "falcon_alibi": (
        lambda **k: transformers.FalconConfig(**FALCON, multi_query=False, alibi=True, **k),
        "FalconForCausalLM",
    ),
}
NAMES = sorted(MODELS)


def tiny(name: str, attn_implementation: str = "sdpa", dtype=torch.float32, seed: int = 0):
    make, model_class = MODELS[name]
    torch.manual_seed(seed)
    try:
        config = make(attn_implementation=attn_implementation)
        model = getattr(transformers, model_class)(config).eval()
    except ValueError:  # Gemma-2 refuses SDPA (soft-cap); capture replaces it anyway
        torch.manual_seed(seed)
        config = make(attn_implementation="eager")
        model = getattr(transformers, model_class)(config).eval()
    try:  # on the oldest transformers allowed, Falcon's attention is not readable
        check_transformers_version(architecture_for(config))
    except UnsupportedModelError as error:
        pytest.skip(str(error))
    with torch.no_grad():  # peaky heads: attention far from uniform
        for module in attention_modules(model):
            for parameter_name, parameter in module.named_parameters():
                if parameter.dim() == 2:
                    parameter.mul_(4.0)
                elif parameter_name.endswith("bias"):
                    parameter.normal_(0.0, 0.5)
    return model.to(dtype)


def ids(batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, LENGTH), generator=generator)


def test_the_table_covers_every_model_of_these_tests():
    covered = {architecture_for(MODELS[name][0]()).model_type for name in NAMES}
    assert covered == set(ARCHITECTURES)


def _eager_inputs(model, input_ids):
    """Each attention module's (args, kwargs) in a run of ``model``."""
    seen = {}

    def keep(module, args, kwargs):
        seen[module.layer_idx] = (args, dict(kwargs))

    handles = [
        m.register_forward_pre_hook(keep, with_kwargs=True) for m in attention_modules(model)
    ]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _double(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    if isinstance(value, tuple):
        return tuple(_double(v) for v in value)
    return value


def reference_attention(name: str, input_ids, rope: str) -> list[np.ndarray]:
    """Per layer, the probabilities ``[B, heads, T, T]`` of the eager model's own attention
    module: post-RoPE as it is; pre-RoPE called again in float64 on its own inputs with its
    modeling file's apply_rotary_pos_emb the identity."""
    model = tiny(name, "eager")
    if rope == "post":
        with torch.no_grad():
            attentions = model(input_ids=input_ids, output_attentions=True).attentions
        return [a.double().numpy() for a in attentions]
    inputs = _eager_inputs(model, input_ids)
    out = []
    for module in attention_modules(model):
        modeling = sys.modules[type(module).__module__]
        original = getattr(modeling, "apply_rotary_pos_emb", None)
        if original is not None:
            modeling.apply_rotary_pos_emb = lambda q, k, *args, **kwargs: (q, k)
        try:
            args, kwargs = inputs[module.layer_idx]
            with torch.no_grad():
                weights = module.double()(
                    *map(_double, args), **{k: _double(v) for k, v in kwargs.items()}
                )[1]
        finally:
            if original is not None:
                modeling.apply_rotary_pos_emb = original
        out.append(weights.numpy())
    return out


@pytest.mark.parametrize("rope", ["post", "pre"])
@pytest.mark.parametrize("name", NAMES)
def test_capture_equals_the_models_own_attention(name, rope):
    input_ids = ids()
    model = tiny(name)
    use_capture_attention(model)
    layers = capture_batch(model, input_ids, CaptureSettings(rope=rope))
    reference = reference_attention(name, input_ids, rope)
    assert_matches(layers, reference)
    if rope == "pre" and rope_style(model.config) != NO_ROPE:  # the rotation was undone
        post = reference_attention(name, input_ids, "post")
        assert max(np.abs(a - b).max() for a, b in zip(reference, post, strict=True)) > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_outputs_with_capture_equal_the_eager_models(name):
    """With capture on (and the soft-capped output computed as eager does), the model's logits
    are its eager logits."""
    input_ids = ids()
    eager = tiny(name, "eager")
    with torch.no_grad():
        expected = eager(input_ids=input_ids, use_cache=False).logits
    model = tiny(name)
    use_capture_attention(model)
    with AttentionRecorder(model, CaptureSettings(rope="pre")), torch.no_grad():
        got = model(input_ids=input_ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


TARGET = HeadSpec(layer=1, head=2)
SCALES = [0.5, 1.0, 1.5]


@pytest.fixture(scope="module")
def captured():
    models = {}

    def get(name):
        if name not in models:
            models[name] = tiny(name)
            use_capture_attention(models[name])
        return models[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_query_norm_ratio_is_s_for_the_head_and_1_for_the_others(name, captured):
    model = captured(name)
    input_ids = ids(batch=1)
    settings = CaptureSettings(rope="pre")
    norms = {}
    for scale in (1.0, 1.5):
        recorder = AttentionRecorder(model, settings, layers={TARGET.layer})
        scaler = QueryScaler(model, TARGET.layer, TARGET.head, torch.tensor([scale]))
        with scaler, recorder, torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
        norms[scale] = recorder.layers[TARGET.layer]["query_norm"].double()
    ratio = norms[1.5] / norms[1.0]  # [1, heads, T]
    expected = torch.ones_like(ratio)
    expected[:, TARGET.head] = 1.5
    torch.testing.assert_close(ratio, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gates_pass_on_each_architecture(name, captured):
    model = captured(name)
    input_ids = ids()
    report = isolation(model, input_ids, TARGET, 1.5)
    assert report["passed"], report
    for rope in ("pre", "post"):
        report = temperature_identity(model, input_ids, TARGET, SCALES, CaptureSettings(rope=rope))
        assert report["passed"], report
    if name == "olmo":  # what the scaled query is under clip_qkv, said in the report
        assert "clip_qkv" in isolation(model, input_ids, TARGET, 1.5)["scaled_query"]


@pytest.mark.parametrize("broken", [WrongHeadScaler, TokenAxisScaler])
@pytest.mark.parametrize("name", NAMES)
def test_gates_fail_when_the_scale_hits_the_wrong_head_or_axis(name, broken, captured):
    model = captured(name)
    input_ids = ids()
    report = isolation(model, input_ids, TARGET, 1.5, scaler_class=broken)
    assert not report["passed"]
    assert report["deviations"]["target_query_vs_scale_times_baseline"] > 1e-2
    report = temperature_identity(
        model, input_ids, TARGET, SCALES, CaptureSettings(rope="post"), scaler_class=broken
    )
    assert not report["passed"] and report["deviations"]["scale_1.5"] > 1e-3


@pytest.mark.parametrize("name", ["stablelm", "qwen3"])
def test_a_scale_before_the_q_norm_is_caught(name, captured):
    """A scale on the projection's output is normalised away by the per-head q norm."""
    report = isolation(captured(name), ids(), TARGET, 1.5, scaler_class=BeforeNormScaler)
    assert not report["passed"]
    assert report["deviations"]["target_query_vs_scale_times_baseline"] > 0.1


def test_gemma2_soft_cap_is_in_the_metrics_and_the_output():
    """Without the cap the metrics and outputs would differ: the reference is not trivial."""
    input_ids = ids()
    capped = reference_attention("gemma2", input_ids, "post")
    model = tiny("gemma2", "eager")
    model.config.attn_logit_softcapping = None
    for module in attention_modules(model):
        module.attn_logit_softcapping = None
    with torch.no_grad():
        uncapped = model(input_ids=input_ids, output_attentions=True).attentions
    assert np.abs(capped[1] - uncapped[1].double().numpy()).max() > 1e-2


def test_falcon_alibi_has_no_rope_and_the_bias_matters():
    model = tiny("falcon_alibi")
    assert rope_style(model.config) == NO_ROPE
    assert "same as post-RoPE" in pre_rope_meaning(model.config)
    use_capture_attention(model)
    input_ids = ids()
    pre = capture_batch(model, input_ids, CaptureSettings(rope="pre"))
    post = capture_batch(model, input_ids, CaptureSettings(rope="post"))
    for layer in pre:
        torch.testing.assert_close(pre[layer]["entropy"], post[layer]["entropy"], equal_nan=True)
    # The bias comes from the model's float mask: a model without it attends differently.
    plain = tiny("falcon_alibi")
    plain.config.alibi = False
    plain.transformer.use_alibi = False
    use_capture_attention(plain)
    no_bias = capture_batch(plain, input_ids, CaptureSettings(rope="post"))
    assert (no_bias[0]["max_attn"] - post[0]["max_attn"]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "name, pre_rope, extra",
    [
        ("gpt2", "same as post-RoPE: gpt2 has no rotary embedding", {}),
        ("falcon_alibi", "same as post-RoPE: falcon has no rotary embedding", {"alibi": "true"}),
        ("gemma2", "after the projections, before the rotation", {"softcap": "4.0"}),
        ("stablelm", "per-head LayerNorm q_layernorm/k_layernorm when qk_layernorm", {}),
        ("gpt_neox", "unrotated dimensions as they are", {}),
        ("olmo", "clip_qkv", {}),
    ],
)
def test_the_metadata_says_what_pre_rope_means(name, pre_rope, extra):
    """What capture writes into each Parquet part's metadata (``architecture.*``)."""
    from spectra_attn.model.architectures import summary

    config = MODELS[name][0]()
    found = summary(config)
    assert pre_rope in found["pre_rope"]
    assert extra.items() <= found.items()
    if name == "olmo":
        assert "clip_qkv" in found["intervention_note"]


def test_raw_configs_give_layers_heads_and_context():
    gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_positions": 1024}
    assert raw_shape(gpt2) == {"layers": 12, "heads": 12, "max_positions": 1024}
    gemma3 = {
        "model_type": "gemma3",
        "text_config": {
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "max_position_embeddings": 131072,
        },
    }
    assert raw_shape(gemma3) == {"layers": 34, "heads": 8, "max_positions": 131072}
    with pytest.raises(UnsupportedModelError, match="gpt_oss.*learned attention sinks"):
        raw_shape({"model_type": "gpt_oss"})


@pytest.mark.parametrize("name", NAMES)
def test_the_batched_sweep_equals_one_run_per_scale(name, captured):
    """The sweep (scales batched from the intervened layer on, SharedPrefix) against a plain run
    of each scale, on every architecture's decoder-layer signature."""
    model = captured(name)
    input_ids = ids()
    settings = CaptureSettings(rope="pre")
    result = sweep_batch(model, input_ids, TARGET, SCALES, settings)
    for column, scale in enumerate(SCALES):
        recorder = AttentionRecorder(model, settings, layers={TARGET.layer}, heads=[TARGET.head])
        factors = torch.full((len(input_ids),), scale)
        with QueryScaler(model, TARGET.layer, TARGET.head, factors), recorder, torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
        single = recorder.layers[TARGET.layer]
        for metric in ("entropy", "max_attn", "query_norm"):
            torch.testing.assert_close(
                result[metric][:, column],
                single[metric][:, 0],
                rtol=1e-4,
                atol=1e-5,
                equal_nan=True,
            )
    assert (result["kl"][:, SCALES.index(1.0)] < 1e-6).all()


@pytest.mark.parametrize("name", ["gemma2", "falcon_alibi", "llama"])
def test_gains_equal_finite_differences_of_real_sweeps(name, captured, monkeypatch):
    """The gain columns (d metric / d ln s at s = 1, through the soft-cap's or ALiBi's own
    derivative) against central differences of the swept metrics at s = e^{±δ}; with a cap or a
    bias, the gains of plain logits (g = z) would not pass. On the CPU, Gemma-2's gains come from
    the fused kernel (cap inside it), Falcon-ALiBi's from the blocked torch path."""
    from spectra_attn.model import metrics

    model = captured(name)
    input_ids = ids()
    settings = CaptureSettings(rope="post")
    delta = 1e-2
    swept = sweep_batch(model, input_ids, TARGET, [np.exp(-delta), np.exp(delta)], settings)

    def gains_match() -> bool:
        gains = capture_batch(model, input_ids, settings)[TARGET.layer]
        for metric in ("max_attn", "entropy"):
            finite = (swept[metric][:, 1] - swept[metric][:, 0]).double() / (2 * delta)
            analytic = gains[f"gain_{metric}"][:, TARGET.head].double()
            keep = torch.isfinite(finite)
            if not torch.allclose(analytic[keep], finite[keep], rtol=2e-3, atol=5e-4):
                return False
        return True

    assert gains_match()
    if name != "llama":
        # The gains of plain logits, on the blocked torch path (where g is an argument): the
        # comparison above is sharp enough to catch a kernel that computed them.
        plain = metrics.transformed_gains
        monkeypatch.setattr(metrics, "CPU_KERNEL", False)
        monkeypatch.setattr(metrics, "transformed_gains", lambda z, g, *rest: plain(z, z, *rest))
        assert not gains_match()


@pytest.mark.parametrize("name", ["gemma2", "falcon_alibi", "gpt2"])
def test_the_atlas_equals_the_sweep_through_the_cap_and_the_bias(name, captured):
    """The atlas scales a head's logits a → s·a before the model's cap and bias, as the sweep's
    scaled query does: their per-sample means agree (what check_atlas_vs_sweep compares)."""
    from spectra_attn.model.atlas import atlas_batch
    from spectra_attn.model.attention import token_mean

    model = captured(name)
    input_ids = ids()
    settings = CaptureSettings(rope="post")
    atlas = atlas_batch(model, input_ids, settings, SCALES)[TARGET.layer]
    swept = sweep_batch(model, input_ids, TARGET, SCALES, settings)
    for metric in ("max_attn", "entropy"):
        torch.testing.assert_close(
            atlas[metric][:, TARGET.head], token_mean(swept[metric], settings), rtol=1e-4, atol=1e-5
        )


def test_falcon_needs_a_transformers_that_calls_the_attention_interface():
    falcon = ARCHITECTURES["falcon"]
    with pytest.raises(UnsupportedModelError, match="'falcon' needs transformers >= 5.25"):
        check_transformers_version(falcon, installed="5.24.0")
    check_transformers_version(falcon, installed="5.25.0")
    check_transformers_version(ARCHITECTURES["llama"], installed="5.0.0")


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "gpt2", "falcon_alibi"])
def test_load_model_reads_a_saved_model_of_the_family(name, tmp_path):
    """From a folder, as a job loads it: the architecture and context are checked from the
    config (a multimodal Gemma-3's text config), the capture attention is set at load."""
    from spectra_attn.model.loading import ModelSpec, check_model_fits, load_model

    saved = tiny(name)
    saved.save_pretrained(tmp_path, safe_serialization=True)
    spec = ModelSpec(str(tmp_path), device="cpu")
    check_model_fits(spec.config(), LENGTH, VOCAB - 1)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        check_model_fits(spec.config(), LENGTH, VOCAB)
    model = load_model(spec)
    layers = capture_batch(model, ids(), CaptureSettings(rope="post"))
    assert sorted(layers) == [0, 1]
    expected = capture_batch(use_capture_attention(saved) or saved, ids(), CaptureSettings("post"))
    torch.testing.assert_close(layers[1]["entropy"], expected[1]["entropy"], equal_nan=True)
