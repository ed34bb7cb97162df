"""A model spread over several devices by a device map (model.device_map) gives the numbers of
the same model on one device: capture, sweeps, gate checks and atlas.

A machine without GPUs has one compute device, so the split here is the one accelerate allows on
the CPU: some modules in CPU memory, the others (the input embedding, the last decoder layer, the
head) offloaded to "disk", their weights on the meta device and loaded by accelerate's hooks at
every forward pass. That runs the dispatch path (hooks on every module, inputs moved to each
module's execution device, ``model.device`` no longer where inputs go), but not a copy between
two GPUs: docs/large-models.md says what only a machine with several GPUs can show.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import spectra_attn.model.attention as attention
import spectra_attn.model.capture as capture
from spectra_attn.model.atlas import atlas_table
from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.capture import capture_batch
from spectra_attn.model.checks import baseline_sanity, isolation, temperature_identity
from spectra_attn.model.intervention import HeadSpec, run_sweep
from spectra_attn.model.loading import (
    ModelSpec,
    cuda_devices,
    input_device,
    load_model,
    placement_kwargs,
)

from .test_capture import input_ids, tiny_model, write_shards

ROOT = Path(__file__).resolve().parents[1]
# The tiny Llama (2 decoder layers) split: the embedding, layer 1 and the head on "disk".
SPLIT = {
    "model.embed_tokens": "disk",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "lm_head": "disk",
}
TARGET = HeadSpec(layer=1, head=2, role="target")
SCALES = [0.5, 1.0, 1.5]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    tiny_model("llama").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_device(model_dir):
    return load_model(ModelSpec(str(model_dir), device="cpu"))


@pytest.fixture(scope="module")
def split(model_dir):
    return load_model(ModelSpec(str(model_dir), device="cpu", device_map=SPLIT))


def assert_same_layers(expected, actual):
    assert sorted(expected) == sorted(actual)
    for layer in expected:
        for name, values in expected[layer].items():
            torch.testing.assert_close(actual[layer][name], values, rtol=0, atol=0, equal_nan=True)


def test_the_split_model_is_dispatched_by_accelerate(split):
    """Really split: accelerate's hooks run the modules, the offloaded weights are not in memory,
    and ``model.device`` (the first weight's) is not where inputs can go."""
    assert split.hf_device_map == SPLIT
    assert hasattr(split.model.layers[1], "_hf_hook")
    assert split.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    assert split.model.layers[0].self_attn.q_proj.weight.device.type == "cpu"
    assert split.device.type == "meta"
    assert input_device(split) == torch.device("cpu")
    assert cuda_devices(split) == []


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_capture_metrics_equal_one_devices_exactly(one_device, split, rope):
    settings = CaptureSettings(rope=rope)
    ids = input_ids(batch=3)
    assert_same_layers(
        capture_batch(one_device, ids, settings), capture_batch(split, ids, settings)
    )
    # Twice: a pass that ended early (after the last recorded attention) left nothing behind.
    assert_same_layers(
        capture_batch(one_device, ids, settings), capture_batch(split, ids, settings)
    )


def test_run_capture_writes_the_same_parquet_rows(model_dir, tmp_path):
    manifest = write_shards(tmp_path / "data", (5, 4))
    settings = CaptureSettings(rope="pre")
    frames = []
    for name, spec in (
        ("one", ModelSpec(str(model_dir), device="cpu")),
        ("split", ModelSpec(str(model_dir), device="cpu", device_map=SPLIT)),
    ):
        out = tmp_path / f"{name}.parquet"
        capture.run_capture(
            spec,
            str(manifest),
            str(out),
            sample_start=2,
            sample_stop=9,
            settings=settings,
            batch_size=3,
        )
        frames.append(pd.read_parquet(out))
    assert len(frames[0]) == 7 * 2 * 4 * 20  # samples × layers × heads × tokens
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_sweep_tables_equal_one_devices_exactly(one_device, split, rope):
    settings = CaptureSettings(rope=rope)
    tokens = input_ids(batch=3).numpy()
    sample_ids = np.arange(3)
    expected = run_sweep(one_device, tokens, sample_ids, TARGET, SCALES, settings, batch_size=2)
    actual = run_sweep(split, tokens, sample_ids, TARGET, SCALES, settings, batch_size=2)
    for one, other in zip(expected, actual, strict=True):
        pd.testing.assert_frame_equal(one, other, check_exact=True)
    assert (expected[1].kl > 0).any()  # the scales changed the model's output


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_gate_checks_pass_with_the_same_deviations(one_device, split, rope):
    settings = CaptureSettings(rope=rope)
    ids = input_ids(batch=2)
    for check in (
        lambda model: baseline_sanity(model, ids, TARGET, settings),
        lambda model: isolation(model, ids, TARGET, 1.5),
        lambda model: temperature_identity(model, ids, TARGET, SCALES, settings),
    ):
        expected, actual = check(one_device), check(split)
        assert actual["passed"], actual
        assert actual == expected


def test_atlas_rows_equal_one_devices_exactly(one_device, split):
    settings = CaptureSettings(rope="pre")
    tokens = input_ids(batch=3).numpy()
    args = (tokens, np.arange(3), settings, SCALES)
    pd.testing.assert_frame_equal(
        atlas_table(one_device, *args, batch_size=2),
        atlas_table(split, *args, batch_size=2),
        check_exact=True,
    )


# ---- GPUs: what can be shown without one ---------------------------------------------


class FakeDispatched(torch.nn.Module):
    """A model whose device map names GPUs (its weights on the CPU: only the map is read)."""

    def __init__(self, device_map):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.hf_device_map = device_map


def test_cuda_devices_are_every_gpu_of_the_device_map():
    model = FakeDispatched({"model.embed_tokens": 0, "model.layers.0": 1, "model.layers.1": 3})
    model.hf_device_map["lm_head"] = "cpu"
    model.hf_device_map["model.norm"] = "disk"
    expected = [torch.device("cuda", i) for i in (0, 1, 3)]
    assert cuda_devices(model) == expected


def test_capture_waits_for_the_copies_of_every_gpu(one_device, monkeypatch):
    """Each layer queues its metrics' copies to the host on its own GPU: waiting for the first
    GPU alone would read the other layers' before they land."""
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    synchronized, non_blocking = [], []
    monkeypatch.setattr(capture, "cuda_devices", lambda model: gpus)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronized.append)
    original = attention.head_metrics

    def spy(*args, **kwargs):
        non_blocking.append(kwargs["non_blocking"])
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "head_metrics", spy)
    capture_batch(one_device, input_ids(batch=1), CaptureSettings())
    assert synchronized == gpus
    assert non_blocking == [True, True]


def test_placement_on_a_machine_without_cuda(model_dir, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = str(model_dir)
    assert placement_kwargs(ModelSpec(path)) == {}
    # A strategy has only the CPU: the whole model loads there, as with device: auto.
    assert placement_kwargs(ModelSpec(path, device_map="auto")) == {}
    assert "no CUDA device here" in caplog.text
    with pytest.raises(ValueError, match="CUDA is not available"):
        placement_kwargs(ModelSpec(path, device="cuda", device_map="auto"))
    with pytest.raises(ValueError, match="puts modules on GPU 0, 1, but CUDA is not available"):
        placement_kwargs(ModelSpec(path, device_map={"model": 0, "lm_head": 1}))
    with pytest.raises(ValueError, match="spreads the model over GPUs, but device is cpu"):
        placement_kwargs(ModelSpec(path, device="cpu", device_map="balanced"))
    with pytest.raises(ValueError, match="not one of auto, balanced"):
        placement_kwargs(ModelSpec(path, device_map="everywhere"))
    with pytest.raises(ValueError, match="lm_head: 'gpu1'"):
        placement_kwargs(
            ModelSpec(path, device="cpu", device_map={"model": "cpu", "lm_head": "gpu1"})
        )
    with pytest.raises(ValueError, match="needs a device_map strategy"):
        placement_kwargs(ModelSpec(path, max_memory_per_gpu="10GiB"))
    kwargs = placement_kwargs(ModelSpec(path, device="cpu", device_map=SPLIT))
    assert kwargs["device_map"] == SPLIT and Path(kwargs["offload_folder"]).is_dir()


# ---- the workflow: params and the gpu resource ------------------------------------------


def model_settings_of(config):
    """rules/common.smk's model_settings(), run on ``config``."""
    # The function's own source: the rest of the file is Snakemake's grammar, not Python's.
    text = (ROOT / "rules" / "common.smk").read_text()
    source = re.search(r"^def model_settings\(.*?(?=^\S)", text, re.M | re.S).group(0)
    namespace = {"run_config": lambda wildcards: config}
    exec(compile(source, "common.smk", "exec"), namespace)
    return namespace["model_settings"](None)


def test_model_params_without_a_device_map_are_as_before():
    """The recorded params of a model on one device are the five keys they always were, so
    adding the device-map keys reran no finished job; a device map adds its own."""
    from spectra_attn.config import validate

    assert model_settings_of(validate({})) == {
        "name_or_path": "resources/demo/model",
        "dtype": "float32",
        "device": "auto",
        "revision": None,
        "trust_remote_code": False,
    }
    spread = model_settings_of(validate({"model": {"device_map": "auto", "gpus": 4}}))
    assert (spread["device_map"], spread["max_memory_per_gpu"]) == ("auto", None)
    assert "gpus" not in spread  # a resource: where layers run, not what they compute
    assert ModelSpec(**spread).device_map == "auto"


def test_model_jobs_hold_model_gpus(tmp_path):
    """A dry run with model.gpus: 2 gives every model job (capture, atlas, sweeps, gate checks)
    the resource gpu=2, which claim_job_gpus turns into two devices."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  device_map: auto\n  gpus: 2\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--resources",
            "gpu=2",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(ROOT / "config.yaml"),
            str(overlay),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    gpus_by_rule: dict[str, set[str]] = {}
    rule = None
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "checkpoint ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            gpu = [r for r in line.split(":", 1)[1].split(", ") if r.strip().startswith("gpu=")]
            gpus_by_rule.setdefault(rule, set()).update(g.strip() for g in gpu)
    model_rules = {
        "capture",
        "intervention_sweep",
        "check_baseline_sanity",
        "check_isolation",
        "check_temperature_identity",
        "atlas",
    }
    assert {r: g for r, g in gpus_by_rule.items() if g} == dict.fromkeys(model_rules, {"gpu=2"})
