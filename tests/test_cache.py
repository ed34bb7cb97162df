"""Between-workflow caching of the demo corpus, the demo model and the shards.

Three fresh working directories ("checkouts") of this Snakefile share one SNAKEMAKE_OUTPUT_CACHE:
the first builds the data targets and stores them, the second takes them from the cache without
running a job, the third changes a data parameter and rebuilds the shards only. Only the data
targets are built: the model and the shards are what is expensive to share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spectra_attn import config as spectra_config
from spectra_attn.data.shards import store_dir

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TARGET = "results/demo/data/manifest.json"  # the run's view of the shards (publish_shards)
FEWER_SOURCES = ["RedPajamaC4", "RedPajamaWikipedia"]


def store(**changes: dict) -> str:
    """Where make_shards writes the shards of config.yaml with ``changes``."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section, values in changes.items():
        config[section].update(values)
    return str(store_dir(spectra_config.validate(config)))


STORE = store()
CACHED = ("resources/demo/slimpajama", "resources/demo/model", f"{STORE}/shards")
STORE_MANIFEST = f"{STORE}/manifest.json"

pytestmark = pytest.mark.integration


def checkout(root: Path, name: str, **changes: dict) -> Path:
    """A fresh working directory with config.yaml, its sections updated by ``changes``."""
    workdir = root / name
    workdir.mkdir()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section, values in changes.items():
        config[section].update(values)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def snakemake(workdir: Path, cache: Path, *args: str) -> str:
    """Run Snakemake in ``workdir`` with the shared cache; its log (stdout and stderr)."""
    result = subprocess.run(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "SNAKEMAKE_OUTPUT_CACHE": str(cache)},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return result.stdout + result.stderr


def cached_build(workdir: Path, cache: Path, *extra: str) -> str:
    # --cache takes rule names: given before the target, it would swallow it.
    return snakemake(workdir, cache, TARGET, "--cores", "1", *extra, "--cache")


def cache_plan(log: str) -> dict[str, str]:
    """Dry run: each cached job's first output → 'obtained from' or 'written to' the cache."""
    pattern = r"Output file (\S+) will be (obtained from|written to) global between-workflow cache"
    return dict(re.findall(pattern, log))


def moved_to_cache(log: str) -> set[str]:
    """Outputs of jobs that ran and stored their outputs."""
    return set(re.findall(r"Moving output file (\S+) to cache\.", log))


def symlinked_from_cache(log: str) -> set[str]:
    """Outputs (or, for a directory, its entries) linked from the cache."""
    return set(re.findall(r"Symlinking output file (\S+) from cache\.", log))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkouts")
    cache = root / "cache"
    cache.mkdir()  # Snakemake 9 does not create it
    first, second = checkout(root, "first"), checkout(root, "second")
    third = checkout(root, "third", data={"include_sources": FEWER_SOURCES})
    logs = {"first": cached_build(first, cache)}
    logs["second_plan"] = cached_build(second, cache, "-n")
    logs["second"] = cached_build(second, cache)
    logs["third"] = cached_build(third, cache)
    return {"root": root, "cache": cache, "first": first, "second": second, "third": third}, logs


def test_first_checkout_stores_its_outputs_in_the_cache(checkouts):
    dirs, logs = checkouts
    assert moved_to_cache(logs["first"]) == {*CACHED, STORE_MANIFEST}
    for path in (*CACHED, STORE_MANIFEST):
        # The output itself became a link to its cache entry (a directory as a whole).
        link = dirs["first"] / path
        assert link.is_symlink() and link.resolve().parent == dirs["cache"], path
    assert (dirs["first"] / "results" / "logs" / "build_demo_model.log").stat().st_size > 0


def test_second_checkout_takes_every_job_from_the_cache(checkouts):
    dirs, logs = checkouts
    assert cache_plan(logs["second_plan"]) == dict.fromkeys(CACHED, "obtained from")
    assert not moved_to_cache(logs["second"])
    linked = symlinked_from_cache(logs["second"])
    assert {
        "resources/demo/model/model.safetensors",
        f"{STORE}/shards/shard_0000.npz",
        STORE_MANIFEST,
    } <= linked
    # No script ran: the logs Snakemake creates for the jobs stay empty.
    second = dirs["second"]
    for log in ("logs/build_demo_corpus.log", "logs/build_demo_model.log"):
        assert (second / "results" / log).stat().st_size == 0, log
    assert (second / "results" / "demo" / "logs" / "make_shards.log").stat().st_size == 0


def test_second_checkouts_shards_are_the_firsts(checkouts):
    from spectra_attn.data.shards import validate_shards

    dirs, _ = checkouts
    first, second = dirs["first"] / TARGET, dirs["second"] / TARGET
    assert first.read_bytes() == second.read_bytes()
    # A directory fetched from the cache is a real folder whose entries link into the cache;
    # the run's view of them links to the same files.
    stored = dirs["second"] / STORE / "shards"
    assert stored.is_dir() and not stored.is_symlink()
    shards = dirs["second"] / "results" / "demo" / "data" / "shards"
    paths = validate_shards(second)
    assert paths and all(path.parent == shards for path in paths)
    manifest = json.loads(second.read_text())
    for path, entry in zip(paths, manifest["shards"], strict=True):
        assert (stored / path.name).resolve().is_relative_to(dirs["cache"])
        assert os.path.samefile(path, stored / path.name)
        twin = dirs["first"] / "results" / "demo" / "data" / "shards" / path.name
        assert sha256(path) == sha256(twin) == entry["sha256"]


def test_downstream_rules_accept_the_cached_outputs(checkouts):
    dirs, _ = checkouts
    plan = snakemake(dirs["second"], dirs["cache"], "--cores", "1", "--resources", "gpu=1", "-n")
    planned = set(re.findall(r"^(?:local)?rule (\w+):", plan, flags=re.MULTILINE))
    assert {"capture_samples", "capture", "intervention_sweep", "gain"} <= planned
    assert not planned & {"build_demo_corpus", "build_demo_model", "make_shards"}


def test_changed_data_parameter_rebuilds_the_shards_only(checkouts):
    dirs, logs = checkouts
    third = store(data={"include_sources": FEWER_SOURCES})
    assert moved_to_cache(logs["third"]) == {f"{third}/shards", f"{third}/manifest.json"}
    assert "resources/demo/model/model.safetensors" in symlinked_from_cache(logs["third"])
    manifest = json.loads((dirs["third"] / TARGET).read_text())
    assert manifest["include_sources"] == sorted(FEWER_SOURCES)
    assert (
        manifest["shards"][0]["sha256"]
        != json.loads((dirs["first"] / TARGET).read_text())["shards"][0]["sha256"]
    )
    assert len(list(dirs["cache"].glob("*_shards"))) == 2


@pytest.mark.parametrize(
    ("changes", "rebuilt"),
    [
        ({"data": {"prepend_bos": False}}, {"shards"}),
        ({"data": {"context_length": 256}}, {"shards"}),
        ({"demo": {"train_steps": 100}}, {"resources/demo/model", "shards"}),
    ],
    ids=["prepend_bos", "context_length", "demo_train_steps"],
)
def test_cache_key_follows_the_parameters(checkouts, changes, rebuilt):
    """A fresh checkout with one parameter changed: what it would rebuild (dry run)."""
    dirs, _ = checkouts
    name = "dry_" + "_".join(f"{k}_{key}" for k, v in changes.items() for key in v)
    workdir = checkout(dirs["root"], name, **changes)
    plan = cache_plan(cached_build(workdir, dirs["cache"], "-n"))
    # Other settings make their shards in a folder of their own: the first checkout's stay.
    shards = f"{store(**changes)}/shards"
    assert (shards == CACHED[2]) == ("shards" not in rebuilt)
    expected = {path: "written to" if path in rebuilt else "obtained from" for path in CACHED[:2]}
    expected[shards] = "written to" if "shards" in rebuilt else "obtained from"
    assert plan == expected
