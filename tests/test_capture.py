"""Capture against independent references: the model's own eager attention (post-RoPE) and a
float64 recomputation from the layer inputs (pre-RoPE), for each supported architecture."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from spectra_attn.model.architectures import UnsupportedModelError
from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.capture import COLUMNS, capture_batch, run_capture, to_columns
from spectra_attn.model.loading import (
    ModelSpec,
    UnsafeWeightsError,
    load_model,
    use_capture_attention,
)

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 9}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 8}),
    "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM, {}),
}


def tiny_model(kind: str, attn_implementation: str = "sdpa", seed: int = 0):
    config_class, model_class, extra = ARCHITECTURES[kind]
    torch.manual_seed(seed)
    config = config_class(**TINY, **extra, attn_implementation=attn_implementation)
    model = model_class(config).eval()
    with torch.no_grad():  # larger weights than the init, so heads are far from uniform
        for name, parameter in model.named_parameters():
            if "proj" in name and parameter.dim() == 2:
                parameter.mul_(6.0)
            if "bias" in name:
                parameter.normal_(0.0, 0.5)
    return model


def input_ids(batch=3, length=24, seed=1):
    return torch.randint(
        0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def reference_metrics(p: np.ndarray, threshold=0.9, skip=2) -> dict[str, np.ndarray]:
    """Entropy, max and k_eff of probability rows ``[..., T, T]`` in float64 numpy."""
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    entropy[..., :skip] = np.nan
    cumulative = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
    k_eff = (cumulative < threshold - 1e-6).sum(-1) + 1
    return {"entropy": entropy, "max_attn": p.max(-1), "k_eff": k_eff, "sink_attn": p[..., 0]}


def assert_matches(layers, reference_probabilities, query_norms=None):
    for layer, p in enumerate(reference_probabilities):
        expected = reference_metrics(p)
        got = layers[layer]
        np.testing.assert_allclose(got["entropy"], expected["entropy"], atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(got["max_attn"], expected["max_attn"], atol=2e-6, rtol=1e-5)
        np.testing.assert_allclose(got["sink_attn"], expected["sink_attn"], atol=2e-6, rtol=1e-5)
        mismatched = (got["k_eff"].numpy() != expected["k_eff"]).mean()
        assert mismatched <= 0.002, f"layer {layer}: k_eff differs in {mismatched:.2%} of rows"
        if query_norms is not None:
            np.testing.assert_allclose(got["query_norm"], query_norms[layer], rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_post_rope_equals_the_models_eager_attention(kind):
    ids = input_ids()
    eager = tiny_model(kind, "eager")
    with torch.no_grad():
        attentions = eager(ids, output_attentions=True).attentions
    model = tiny_model(kind, "sdpa")
    use_capture_attention(model)
    layers = capture_batch(model, ids, CaptureSettings(rope="post"))
    assert_matches(layers, [a.detach().double().numpy() for a in attentions])


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_pre_rope_equals_a_float64_recomputation(kind):
    ids = input_ids()
    model = tiny_model(kind)
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layer_inputs = {}

    def keep_input(module, args, kwargs):
        layer_inputs[module.layer_idx] = kwargs["hidden_states"].detach().double().numpy()

    handles = [
        layer.self_attn.register_forward_pre_hook(keep_input, with_kwargs=True)
        for layer in model.model.layers
    ]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()

    def rms_norm(x, weight, eps):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * weight

    probabilities, norms = [], []
    for index, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        hidden = layer_inputs[index]  # [B, T, hidden]
        batch, length, _ = hidden.shape
        projections = {}
        for kind_, n in (("q", heads), ("k", kv_heads)):
            projection = getattr(attention, f"{kind_}_proj")
            x = hidden @ projection.weight.detach().double().numpy().T
            if projection.bias is not None:
                x = x + projection.bias.detach().double().numpy()
            norm = getattr(attention, f"{kind_}_norm", None)
            if norm is not None and norm.weight.numel() == n * head_dim:  # OLMo-2: across heads
                x = rms_norm(x, norm.weight.detach().double().numpy(), norm.variance_epsilon)
            x = x.reshape(batch, length, n, head_dim)
            if norm is not None and norm.weight.numel() == head_dim:  # Qwen3: per head
                x = rms_norm(x, norm.weight.detach().double().numpy(), norm.variance_epsilon)
            projections[kind_] = x.transpose(0, 2, 1, 3)  # [B, n, T, d]
        q = projections["q"]
        k = np.repeat(projections["k"], heads // kv_heads, axis=1)  # head h reads KV h // groups
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim)
        position = np.arange(length)
        masked = position[None, :] > position[:, None]  # causal
        window = getattr(config, "sliding_window", None)
        if window is not None:  # Mistral: the model's mask also hides keys beyond its window
            masked |= position[None, :] <= position[:, None] - window
        logits[..., masked] = -np.inf
        p = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities.append(p / p.sum(-1, keepdims=True))
        norms.append(np.linalg.norm(q, axis=-1))

    use_capture_attention(model)
    layers = capture_batch(model, ids, CaptureSettings(rope="pre"))
    assert_matches(layers, probabilities, norms)


def test_capture_leaves_the_model_output_unchanged():
    ids = input_ids()
    model = tiny_model("llama")
    with torch.no_grad():
        plain = model(ids).logits
    use_capture_attention(model)
    capture_batch(model, ids, CaptureSettings(rope="pre"))
    with torch.no_grad():
        captured = model(ids).logits
    torch.testing.assert_close(captured, plain)


def _calls_after_the_last_attention(model) -> tuple[list[str], list]:
    """Forward hooks that note each call of what follows the last layer's attention."""
    calls: list[str] = []
    last = model.model.layers[-1]
    handles = [
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, module in (("mlp", last.mlp), ("norm", model.model.norm), ("head", model.lm_head))
    ]
    return calls, handles


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_capture_stops_after_the_last_layers_attention_with_the_same_metrics(rope):
    """Nothing capture records comes after the last layer's queries and keys: its attention output,
    MLP, final norm and head are not computed, and the metrics equal those of a recorder that
    lets the whole forward pass run."""
    from spectra_attn.model.atlas import atlas_batch
    from spectra_attn.model.attention import AttentionRecorder
    from spectra_attn.model.capture import forward_for_metrics

    ids = input_ids()
    model = tiny_model("llama")
    use_capture_attention(model)
    settings = CaptureSettings(rope=rope)
    calls, handles = _calls_after_the_last_attention(model)
    try:
        stopped = capture_batch(model, ids, settings)
        atlas_batch(model, ids, settings, [0.5, 1.0])
        assert calls == []
        with torch.inference_mode(), AttentionRecorder(model, settings) as full:
            model(input_ids=ids, use_cache=False)
        assert calls == ["mlp", "norm", "head"]
        # A recorder of layer 0 alone stops there: the last layer's MLP is not reached either.
        calls.clear()
        with (
            torch.inference_mode(),
            AttentionRecorder(model, settings, layers={0}, stop_when_done=True) as first,
        ):
            forward_for_metrics(model, ids)
        assert calls == [] and set(first.layers) == {0}
    finally:
        for handle in handles:
            handle.remove()
    assert set(stopped) == set(full.layers) == {0, 1}
    for layer, metrics in full.layers.items():
        for name, value in metrics.items():
            torch.testing.assert_close(stopped[layer][name], value, rtol=0, atol=0, equal_nan=True)


def test_grouped_query_heads_read_their_own_kv_head():
    """Breaking the h // groups mapping (here: reading KV heads in the wrong order) is caught."""
    ids = input_ids()
    model = tiny_model("llama")
    use_capture_attention(model)
    good = capture_batch(model, ids, CaptureSettings(rope="pre"))
    with torch.no_grad():  # swap the two KV heads' key projections
        weight = model.model.layers[0].self_attn.k_proj.weight
        weight.copy_(torch.cat([weight[8:], weight[:8]]))
    swapped = capture_batch(model, ids, CaptureSettings(rope="pre"))
    assert not torch.allclose(good[0]["entropy"][..., 2:], swapped[0]["entropy"][..., 2:])


def test_half_precision_models_give_float32_metrics_close_to_float32():
    ids = input_ids()
    settings = CaptureSettings(rope="pre")
    model = tiny_model("llama")
    use_capture_attention(model)
    full = capture_batch(model, ids, settings)
    half = capture_batch(model.to(torch.bfloat16), ids, settings)
    assert half[0]["entropy"].dtype == torch.float32
    np.testing.assert_allclose(half[1]["max_attn"], full[1]["max_attn"], atol=0.05)


def test_columns_are_long_format_in_seed_order():
    ids = input_ids(batch=2, length=5)
    model = tiny_model("llama")
    use_capture_attention(model)
    layers = capture_batch(model, ids, CaptureSettings())
    columns = to_columns(layers, np.array([10, 11]))
    frame = pd.DataFrame(columns)
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 2 * 2 * 4 * 5
    row = frame[
        (frame.sample_id == 11) & (frame.layer == 1) & (frame["head"] == 3) & (frame.token_pos == 4)
    ]
    assert row.max_attn.item() == pytest.approx(layers[1]["max_attn"][1, 3, 4].item())


# ---- the job: files, samples table, checks before the model loads ------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    tiny_model("llama").save_pretrained(out)
    return out


def write_shards(out, shard_rows, context_length=20):
    """Shards of random ids in the shard format (``shard_rows[i]`` rows each), with a manifest."""
    from spectra_attn.io import sha256_file, write_json, write_npz

    (out / "shards").mkdir(parents=True)
    generator = np.random.default_rng(3)
    entries = []
    for index, rows in enumerate(shard_rows):
        array = generator.integers(
            3, TINY["vocab_size"], size=(rows, context_length), dtype=np.int32
        )
        array[:, 0] = 0
        path = out / "shards" / f"shard_{index:04d}.npz"
        write_npz(path, {"input_ids": array})
        entries.append({"file": path.name, "rows": rows, "sha256": sha256_file(path)})
    spec = {
        "context_length": context_length,
        "vocab_size": 97,
        "bos_token_id": 0,
        "pad_token_id": None,
        "prepend_bos": True,
    }
    write_json(
        out / "manifest.json",
        {
            "shards": entries,
            "shard_spec": spec,
            "sequences": sum(shard_rows),
            "shards_dir": "shards",
        },
    )
    return out / "manifest.json"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Two shards of random ids in the shard format, with a manifest."""
    return write_shards(tmp_path_factory.mktemp("data"), (5, 4))


def capture_range(model_dir, manifest, out, start, stop, settings=None, batch_size=8) -> int:
    """run_capture of samples [start, stop) with the tiny model on the CPU."""
    return run_capture(
        ModelSpec(str(model_dir), device="cpu"),
        str(manifest),
        str(out),
        sample_start=start,
        sample_stop=stop,
        settings=settings or CaptureSettings(),
        batch_size=batch_size,
    )


def test_run_capture_writes_parquet_rows_that_recompute_from_the_shards(
    model_dir, manifest, tmp_path
):
    out = tmp_path / "part_0000.parquet"
    settings = CaptureSettings(rope="post")
    rows = capture_range(model_dir, manifest, out, 3, 7, settings, batch_size=3)
    frame = pd.read_parquet(out)
    assert rows == len(frame) == 4 * 2 * 4 * 20
    assert list(frame.columns) == list(COLUMNS)
    assert sorted(frame.sample_id.unique()) == [3, 4, 5, 6]
    assert not list(tmp_path.glob(".*tmp"))
    # Sample 5 is row 0 of the second shard; recompute it from the shard with the eager model.
    with np.load(manifest.parent / "shards" / "shard_0001.npz", allow_pickle=False) as shard:
        ids = torch.from_numpy(shard["input_ids"][:1].astype(np.int64))
    eager = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation="eager"
    )
    with torch.no_grad():
        attention = eager(ids, output_attentions=True).attentions[1][0, 2].detach().double().numpy()
    got = frame[(frame.sample_id == 5) & (frame.layer == 1) & (frame["head"] == 2)].sort_values(
        "token_pos"
    )
    np.testing.assert_allclose(got.max_attn, attention.max(-1), rtol=1e-5)
    import pyarrow.parquet as pq

    metadata = pq.read_schema(out).metadata
    assert metadata[b"architecture.model_type"] == b"llama"
    assert metadata[b"architecture.pre_rope"].startswith(b"queries and keys after the projections")


def test_row_groups_hold_whole_samples_and_the_bytes_do_not_depend_on_writer_threads(
    model_dir, manifest, tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    import spectra_attn.model.capture as capture

    # 2 layers × 4 heads × 20 tokens = 160 rows per sample: at least 161 rows makes pairs.
    monkeypatch.setattr(capture, "ROW_GROUP_ROWS", 161)
    one = tmp_path / "one" / "part_0000.parquet"
    capture_range(model_dir, manifest, one, 0, 9, batch_size=5)
    monkeypatch.setattr(capture, "writer_threads_for", lambda device: 3)
    three = tmp_path / "three" / "part_0000.parquet"
    capture_range(model_dir, manifest, three, 0, 9, batch_size=5)
    assert one.read_bytes() == three.read_bytes()
    parquet = pq.ParquetFile(one)
    groups = [
        sorted(set(parquet.read_row_group(i, columns=["sample_id"]).column(0).to_pylist()))
        for i in range(parquet.metadata.num_row_groups)
    ]
    assert groups == [[0, 1], [2, 3], [4], [5, 6], [7, 8]]  # batches 0-4 and 5-8
    whole = tmp_path / "whole" / "part_0000.parquet"
    monkeypatch.setattr(capture, "ROW_GROUP_ROWS", 10_000)
    capture_range(model_dir, manifest, whole, 0, 9, batch_size=5)
    assert pq.ParquetFile(whole).metadata.num_row_groups == 2  # one per batch
    pd.testing.assert_frame_equal(pd.read_parquet(one), pd.read_parquet(whole))


def test_writer_threads_are_the_jobs_on_the_cpu_and_all_but_one_on_a_gpu():
    from spectra_attn.model.capture import writer_threads_for

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert writer_threads_for(torch.device("cuda")) == 3
        assert writer_threads_for(torch.device("cpu")) == 4
        torch.set_num_threads(1)
        assert writer_threads_for(torch.device("cuda")) == 1
    finally:
        torch.set_num_threads(previous)


def test_a_failed_write_stops_capture_and_leaves_no_file(
    model_dir, manifest, tmp_path, monkeypatch
):
    """Rows are written on a background thread: its failure must surface, and the half-written
    file must not appear under the output name."""
    import spectra_attn.model.capture as capture

    calls = []
    real = capture.to_columns

    def failing(layers, ids):
        calls.append(len(ids))
        if len(calls) == 2:
            raise OSError("disk full")
        return real(layers, ids)

    monkeypatch.setattr(capture, "to_columns", failing)
    out = tmp_path / "part_0000.parquet"
    with pytest.raises(OSError, match="disk full"):
        capture_range(model_dir, manifest, out, 0, 7, batch_size=2)
    assert not out.exists()
    assert not list(tmp_path.glob(".*tmp"))
    assert len(calls) in (2, 3)  # the batch after the failure may have been computed, not more


KILLED_CAPTURE = """
import os, signal, sys
import spectra_attn.model.capture as capture
from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.capture import run_capture
from spectra_attn.model.loading import ModelSpec

batches = []
real = capture.to_columns


def killed_on_the_third_batch(layers, ids):
    batches.append(len(ids))
    if len(batches) == 3:  # two row groups are in the temporary file by now
        os.kill(os.getpid(), signal.SIGKILL)
    return real(layers, ids)


capture.to_columns = killed_on_the_third_batch
model_dir, manifest, out = sys.argv[1:]
run_capture(ModelSpec(model_dir, device="cpu"), manifest, out, sample_start=0, sample_stop=9,
            settings=CaptureSettings(), batch_size=2)
"""


def test_a_capture_killed_halfway_leaves_nothing_and_a_rerun_equals_an_uninterrupted_run(
    model_dir, manifest, tmp_path
):
    import signal
    import subprocess
    import sys

    out = tmp_path / "part_0000.parquet"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_CAPTURE, str(model_dir), str(manifest), str(out)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()  # the rows written so far stayed in a temporary file
    assert list(tmp_path.glob(".part_0000.parquet.*.tmp"))  # (left behind by the kill)

    capture_range(model_dir, manifest, out, 0, 9, batch_size=2)  # the restart
    reference = tmp_path / "uninterrupted" / "part_0000.parquet"
    capture_range(model_dir, manifest, reference, 0, 9, batch_size=2)
    assert out.read_bytes() == reference.read_bytes()
    assert pd.read_parquet(out).sample_id.nunique() == 9


@pytest.mark.parametrize(
    "config_class, name, why",
    [
        (transformers.BloomConfig, "BloomForCausalLM", "does not call transformers' Attention"),
        (transformers.GPTNeoConfig, "GPTNeoForCausalLM", "does not call transformers' Attention"),
        (transformers.GptOssConfig, "GptOssForCausalLM", "learned attention sinks"),
        (transformers.MptConfig, "MptForCausalLM", "not been tested against its eager"),
    ],
)
def test_unsupported_architecture_fails_before_weights_load(tmp_path, config_class, name, why):
    config = config_class()
    config.architectures = [name]
    config.save_pretrained(tmp_path)  # no weights at all: the refusal comes first
    with pytest.raises(UnsupportedModelError, match=f"{name}.*{why}.*reads the attention of: "):
        load_model(ModelSpec(str(tmp_path), device="cpu"))


def test_pickled_weights_are_refused(tmp_path):
    """A model folder with only pytorch_model.bin (a pickle) is refused, naming the problem,
    although transformers could load it."""
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="pickled checkpoints"):
        load_model(ModelSpec(str(tmp_path), device="cpu"))


def test_shards_from_another_tokenizer_fail_before_the_model_loads(
    model_dir, manifest, tmp_path, monkeypatch
):
    small = tmp_path / "small"
    config = json.loads((model_dir / "config.json").read_text())
    config["vocab_size"] = 50
    small.mkdir()
    (small / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(
        "spectra_attn.model.loading.load_model", lambda *a, **k: pytest.fail("loaded")
    )
    with pytest.raises(ValueError, match="outside the model's vocabulary of 50"):
        capture_range(small, manifest, tmp_path / "x.parquet", 0, 2)
    assert not (tmp_path / "x.parquet").exists()


def test_shards_made_with_another_tokenizer_are_refused(model_dir, tmp_path, tokenizer_dir):
    """The manifest records the sha256 of the tokenizer that made the shards; a model whose own
    tokenizer differs is refused before its weights load, and one with the same tokenizer runs."""
    from spectra_attn.data.shards import load_tokenizer

    _, info = load_tokenizer(str(tokenizer_dir))
    with_tokenizer = tmp_path / "model"
    shutil.copytree(model_dir, with_tokenizer)
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(with_tokenizer)
    for fingerprint, fails in (("0" * 64, True), (info.fingerprint, False)):
        shards = tmp_path / fingerprint[:4]
        manifest_path = write_shards(shards, [4])
        manifest = json.loads(manifest_path.read_text())
        manifest["tokenizer"] = {"name_or_path": "elsewhere", "fingerprint": fingerprint}
        manifest_path.write_text(json.dumps(manifest))
        out = shards / "part.parquet"
        if fails:
            with pytest.raises(ValueError, match="tokenizer of 'elsewhere' .* has another one"):
                capture_range(with_tokenizer, manifest_path, out, 0, 2)
            assert not out.exists()
        else:
            capture_range(with_tokenizer, manifest_path, out, 0, 2)
            assert out.is_file()


def test_samples_table_maps_ids_to_shard_rows_in_order(manifest):
    from spectra_attn.data.samples import sample_ranges, sample_table

    table = sample_table(manifest, 7)
    assert table.sample_id.tolist() == list(range(7))
    assert table.shard.tolist() == ["shard_0000.npz"] * 5 + ["shard_0001.npz"] * 2
    assert table.row.tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert sample_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError, match="only 9 sequences"):
        sample_table(manifest, 10)


def test_load_samples_takes_each_row_from_its_shard_one_shard_at_a_time(manifest, tmp_path):
    import shutil

    from spectra_attn.data.samples import load_samples, sample_table
    from spectra_attn.data.shards import ShardError, iter_validated_shards

    table = sample_table(manifest, 9).iloc[3:8]  # rows 3-4 of the first shard, 0-2 of the second
    expected = []
    for shard, row in zip(table.shard, table.row, strict=True):
        with np.load(manifest.parent / "shards" / shard, allow_pickle=False) as archive:
            expected.append(archive["input_ids"][row])
    np.testing.assert_array_equal(load_samples(manifest, table), np.stack(expected))

    # Shards are validated and yielded one at a time: a corrupt second shard does not stop the
    # first from being read (nor is the second held while the first is used).
    copy = tmp_path / "data"
    shutil.copytree(manifest.parent, copy)
    (copy / "shards" / "shard_0001.npz").write_bytes(b"not a zip")
    shards = iter_validated_shards(copy / manifest.name, check_checksums=False)
    path, _ = next(shards)
    assert path.name == "shard_0000.npz"
    with pytest.raises(ShardError, match="shard_0001.npz"):
        next(shards)

    unlisted = table.assign(shard="shard_0009.npz")
    with pytest.raises(ShardError, match="shard_0009.npz"):
        load_samples(manifest, unlisted)


def test_shards_are_held_one_at_a_time(tmp_path):
    """Validating a manifest's shards, or reading samples spread over all of them, holds about one
    shard in memory, not all of them (numpy's allocations are traced by tracemalloc)."""
    import tracemalloc

    from spectra_attn.data.samples import load_samples, sample_table
    from spectra_attn.data.shards import validate_shards

    manifest = write_shards(tmp_path, (1024,) * 4, context_length=1024)
    shard_bytes = 1024 * 1024 * 4
    tracemalloc.start()
    try:
        validate_shards(manifest)
        _, validating = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        rows = load_samples(manifest, sample_table(manifest, 4096).iloc[::256])
        _, loading = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows.shape == (16, 1024)
    assert validating < 2.5 * shard_bytes, validating / shard_bytes
    assert loading < 2.5 * shard_bytes, loading / shard_bytes


def test_csv_export_has_the_original_projects_columns(model_dir, manifest, tmp_path):
    from spectra_attn.analysis.capture_csv import export_original_csv

    parts = []
    for index, (start, stop) in enumerate([(0, 2), (2, 3)]):
        parts.append(str(tmp_path / f"part_{index:04d}.parquet"))
        capture_range(model_dir, manifest, parts[-1], start, stop)
    export_original_csv(parts, str(tmp_path / "attention_metrics.csv"))
    csv = pd.read_csv(tmp_path / "attention_metrics.csv")
    assert list(csv.columns) == [
        "sample_id",
        "layer",
        "head",
        "token_pos",
        "query_norm",
        "entropy",
        "max_attn",
        "k_eff",
    ]
    both = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    np.testing.assert_allclose(csv.max_attn, both.max_attn, rtol=1e-6)
    assert csv.entropy.isna().sum() == both.entropy.isna().sum() == 3 * 2 * 4 * 2
