"""The workflow end to end on the offline demo: dry run, real run, a second run that does nothing.

Runs Snakemake on a copy of this checkout's workflow (Snakefile, rules, scripts, package sources)
in a fresh working directory, as a user would after `make demo`, so it never touches the
checkout's own results/ and a test that edits a module edits the copy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW = ("Snakefile", "rules", "workflow_scripts", "envs", "report", "src/spectra_attn")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The workflow's files copied: rules declare the package modules under the Snakefile's
    folder as inputs, and the copy's are safe to edit. (Jobs import the installed package.)"""
    copy = tmp_path_factory.mktemp("checkout")
    for name in WORKFLOW:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake on the workflow copy that ``workdir`` (a folder inside it) belongs to."""
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(workdir.parent / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def demo_run(checkout):
    workdir = checkout / "demo"
    workdir.mkdir()
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    dry = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    real = snakemake(workdir, "--cores", "1", "--resources", "gpu=1")
    assert real.returncode == 0, real.stderr[-5000:]
    return workdir, dry, real


def test_dry_run_plans_every_stage(demo_run):
    """Every rule of the default configuration, and only those: the hub download, the CSV export
    and the automatic head selection run only when asked for."""
    _, dry, _ = demo_run
    assert planned_rules(dry) == {
        "build_demo_corpus",
        "build_demo_model",
        "make_shards",
        "publish_shards",
        "capture_samples",
        "capture",
        "aggregate_partial",
        "aggregate",
        "atlas",
        "atlas_gain",
        "intervention_sweep",
        "check_baseline_sanity",
        "check_isolation",
        "check_temperature_identity",
        "check_atlas_vs_sweep",
        "gain",
        "plots",
        "verdict_page",
        "provenance",
        "describe_config",
        "all",
    }, dry.stdout[-3000:]


def test_real_run_writes_validated_shards(demo_run):
    from spectra_attn.data.shards import validate_shards

    workdir, _, _ = demo_run
    manifest_path = workdir / "results" / "demo" / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    paths = validate_shards(manifest_path)
    assert manifest["sequences"] > 100
    assert set(manifest["documents_seen_per_source"]) == {
        "RedPajamaCommonCrawl",
        "RedPajamaC4",
        "RedPajamaWikipedia",
        "RedPajamaStackExchange",
        "RedPajamaGithub",
        "RedPajamaArXiv",
        "RedPajamaBook",
    }
    assert set(manifest["documents_used_per_source"]) == set(manifest["include_sources"])
    with np.load(paths[0], allow_pickle=False) as shard:
        assert shard["input_ids"].shape[1] == 512
    for rule in ("build_demo_corpus", "build_demo_model", "make_shards"):
        assert list((workdir / "results").rglob(f"{rule}.log")), rule


def test_capture_parts_cover_every_layer_head_and_token(demo_run):
    import pandas as pd

    workdir, _, _ = demo_run
    capture = workdir / "results" / "demo" / "capture"
    parts = sorted(capture.glob("part_*.parquet"))
    assert [p.name for p in parts] == [f"part_{i:04d}.parquet" for i in range(4)]  # 64 / 16
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert list(frame.columns[:8]) == [
        "sample_id",
        "layer",
        "head",
        "token_pos",
        "query_norm",
        "entropy",
        "max_attn",
        "k_eff",
    ]
    assert len(frame) == 64 * 4 * 8 * 512  # samples × layers × heads × tokens
    assert frame.entropy.isna().sum() == 64 * 4 * 8 * 2  # the first 2 positions
    assert frame.k_eff.between(1, 512).all() and frame.max_attn.between(0, 1).all()
    samples = pd.read_parquet(capture / "samples.parquet")
    assert samples.sample_id.tolist() == list(range(64))
    assert (samples.shard == "shard_0000.npz").all() and samples.row.tolist() == list(range(64))
    log = (workdir / "results" / "demo" / "logs" / "capture" / "part_0000.log").read_text()
    assert "100%" in log  # the progress bar reaches the log
    if not torch.cuda.is_available():
        assert "no CUDA device found: running on the CPU" in log


def test_sweeps_and_checks_of_every_configured_head(demo_run):
    import pandas as pd

    workdir, _, _ = demo_run
    run = workdir / "results" / "demo"
    for head, role in (("L2_H0", "target"), ("L2_H5", "control")):
        sweep = pd.read_parquet(run / "intervention" / head / "sweep.parquet")
        assert len(sweep) == 64 * 5 and set(sweep.role) == {role}
        one = sweep[sweep.scale == 1.0]
        assert one.kl.abs().max() < 1e-6  # scale 1.0 is the unmodified model
        seed = pd.read_csv(run / "intervention" / head / "q_scale_intervention_results.csv")
        assert seed.scale.tolist() == [0.5, 0.75, 1.0, 1.25, 1.5]
        trends = pd.read_csv(run / "intervention" / head / "trend_analysis.csv")
        assert trends.metric.tolist() == ["entropy", "max_attn", "k_eff"]
        for check in ("baseline_sanity", "isolation", "temperature_identity"):
            report = json.loads((run / "checks" / f"{check}_{head}.json").read_text())
            assert report["passed"] and report["max_deviation"] <= report["tolerance"]
        log = (run / "logs" / "intervention" / f"{head}.log").read_text()
        assert log.index("expected as the query") < log.index(f"observed for {head}")


def test_analysis_outputs_and_report(demo_run):
    import duckdb
    import pandas as pd

    workdir, _, _ = demo_run
    run = workdir / "results" / "demo"
    con = duckdb.connect(str(run / "aggregate" / "spectra.duckdb"), read_only=True)
    summary = con.execute("SELECT * FROM head_summary").df()
    con.close()
    assert len(summary) == 4 * 8 and summary.spearman_qn_entropy.between(-1, 1).all()
    assert (summary.rows == 64 * 512).all()
    verdict = json.loads((run / "gain" / "verdict.json").read_text())
    assert {"gain_ratio", "ratio_ci_low", "ratio_ci_high", "verdict", "target_percentile"} <= set(
        verdict
    )
    assert verdict["ratio_ci_low"] <= verdict["gain_ratio"] <= verdict["ratio_ci_high"]
    gains = pd.read_csv(run / "gain" / "gain_summary.csv")
    assert set(gains.metric) == {"max_attn", "entropy", "k_eff"} and len(gains) == 6
    assert json.loads((run / "checks" / "atlas_vs_sweep.json").read_text())["passed"]
    assert len(pd.read_csv(run / "atlas" / "atlas_gain.csv")) == 32
    for name in (
        "intervention_panels",
        "gain_comparison",
        "heatmap_atlas_gain",
        "position_profiles",
    ):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000
        assert (run / "plots" / f"{name}.svg").is_file()
    assert (run / "plots" / "gain_fits" / "gain_fit_L2_H0.png").is_file()
    page = (run / "plots" / "verdict.html").read_text()
    markdown = (run / "plots" / "verdict.md").read_text()
    assert 'id="answer"' in page and "L2 H0" in page and "data:image/png;base64," in page
    assert "## Gates" in markdown and "## Provenance" in markdown and "{'" not in markdown
    # provenance in every output, and the outputs agree on it
    from spectra_attn.provenance import check_folder, read

    assert read(run / "capture" / "part_0000.parquet")["corpus"]["shards"]
    assert read(run / "intervention" / "L2_H0" / "sweep.parquet")["model"]["source"] == "local"
    assert read(run / "aggregate" / "spectra.duckdb")["config_sha256"]
    consistent, text = check_folder(run)
    assert consistent, text
    assert "consistent: every output" in (run / "provenance.txt").read_text()
    described = (run / "configuration.txt").read_text()
    assert "k_eff_threshold: 0.9" in described and "pre-RoPE" in described
    result = snakemake(workdir, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (workdir / "report.html").read_text(errors="ignore")
    assert "Verdict" in html and "Gain" in html and "Configuration" in html


def test_report_and_verdict_page_in_a_browser(demo_run):
    """As a person sees them: headless Chromium opens the demo's verdict page (its verdict
    sentence there, no console message) and the Snakemake report (its Verdict and Provenance
    sections there, no uncaught script error)."""
    import html

    from tests.browser import chromium, open_page

    chromium()  # skips without it
    workdir, _, _ = demo_run
    run = workdir / "results" / "demo"
    dom, console = open_page(run / "plots" / "verdict.html")
    assert console == []
    assert re.search(r"max_attn gain is [−0-9.]+× the control's \(95% CI", html.unescape(dom))
    result = snakemake(workdir, "--report", "browser_report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    dom, console = open_page(workdir / "browser_report.html")
    assert not [message for message in console if "Uncaught" in message], console
    assert "Verdict" in dom and "Provenance" in dom


def test_automatic_head_selection_runs_through_the_checkpoint(demo_run, tmp_path):
    """``intervention.select: auto`` on a copy of the finished demo: the select_heads checkpoint
    picks the heads from the capture, the sweeps and the analysis follow them, and the choice
    agrees with the aggregate's Spearman rho."""
    import duckdb
    import pandas as pd

    workdir, _, _ = demo_run
    copy = workdir.parent / "demo_auto"  # beside it: the same workflow copy, the same code inputs
    shutil.copytree(workdir, copy, symlinks=True)  # copy2 keeps mtimes: the capture is up to date
    mine = tmp_path / "mine.yaml"
    mine.write_text("intervention:\n  select: auto\n")
    result = snakemake(copy, "--cores", "1", "--resources", "gpu=1", "--configfile", str(mine))
    assert result.returncode == 0, result.stderr[-5000:]
    assert "rule capture:" not in result.stdout + result.stderr

    run = copy / "results" / "demo"
    heads = json.loads((run / "intervention" / "selected_heads.json").read_text())["heads"]
    target, control = heads
    assert (target["role"], control["role"]) == ("target", "control")
    assert target["layer"] == control["layer"] and target["head"] != control["head"]
    con = duckdb.connect(str(run / "aggregate" / "spectra.duckdb"), read_only=True)
    summary = con.execute("SELECT layer, head, spearman_qn_entropy FROM head_summary").df()
    con.close()
    strongest = summary.loc[summary.spearman_qn_entropy.abs().idxmax()]
    assert (target["layer"], target["head"]) == (strongest["layer"], strongest["head"])
    assert target["spearman_rho"] == pytest.approx(strongest["spearman_qn_entropy"], abs=1e-12)
    gains = pd.read_csv(run / "gain" / "gain_summary.csv")
    chosen = {(h["layer"], h["head"], h["role"]) for h in heads}
    assert set(zip(gains["layer"], gains["head"], gains["role"], strict=True)) == chosen
    for h in heads:
        sweep = run / "intervention" / f"L{h['layer']}_H{h['head']}" / "sweep.parquet"
        assert len(pd.read_parquet(sweep)) == 64 * 5
    # the verdict page names the chosen heads and the correlation that chose them
    page = (run / "plots" / "verdict.md").read_text()
    assert f"target L{target['layer']} H{target['head']}" in page
    assert "select: auto" in page and f"ρ = {target['spearman_rho']:.2f}".replace("-", "−") in page


def test_changing_one_heads_scales_reruns_only_that_head(demo_run, tmp_path):
    workdir, _, _ = demo_run
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "intervention:\n  heads:\n"
        "    - {layer: 2, head: 0, role: target, scales: [0.5, 1.0, 2.0]}\n"
        "    - {layer: 2, head: 5, role: control}\n"
    )
    result = snakemake(workdir, "--cores", "1", "-n", "--configfile", str(mine))
    assert result.returncode == 0, result.stderr[-3000:]
    planned = result.stdout
    # (the jobs' wildcards start with the run's since several models can run at once)
    assert "wildcards: run=demo, layer=2, head=0" in planned
    assert "layer=2, head=5" not in planned
    for rule in ("make_shards", "capture", "build_demo_model", "build_demo_corpus"):
        assert f"rule {rule}:" not in planned


def planned_rules(result: subprocess.CompletedProcess) -> set[str]:
    import re

    return set(re.findall(r"^(?:local)?rule (\w+):", result.stdout, flags=re.MULTILINE))


def planned_with(workdir: Path, tmp_path: Path, overlay: str) -> set[str]:
    """The rules a dry run with ``overlay`` (YAML over config.yaml) plans."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(overlay)
    result = snakemake(workdir, "--cores", "1", "-n", "--configfile", str(mine))
    assert result.returncode == 0, result.stderr[-3000:]
    return planned_rules(result)


def test_changing_the_scales_reruns_the_sweeps_and_analysis_only(demo_run, tmp_path):
    workdir, _, _ = demo_run
    planned = planned_with(workdir, tmp_path, "intervention:\n  scales: [0.5, 1.0, 2.0]\n")
    assert {"intervention_sweep", "check_temperature_identity", "gain", "plots"} <= planned
    assert not planned & {"make_shards", "capture", "build_demo_model", "aggregate"}


def test_changing_the_rope_mode_keeps_the_shards(demo_run, tmp_path):
    workdir, _, _ = demo_run
    planned = planned_with(workdir, tmp_path, "capture:\n  rope: post\n")
    assert {"capture", "intervention_sweep", "aggregate"} <= planned
    assert not planned & {"make_shards", "build_demo_model", "build_demo_corpus"}


def test_changing_the_model_reruns_every_job_that_runs_it(demo_run, tmp_path):
    """What the model jobs load is a param computed from their input (the demo model's folder),
    which Snakemake does not record; the model's identity is recorded beside it, so a change of
    dtype (or of the model, or the device) reruns them and keeps the shards."""
    workdir, _, _ = demo_run
    planned = planned_with(workdir, tmp_path, "model:\n  dtype: bfloat16\n")
    assert {"capture", "atlas", "intervention_sweep", "check_isolation"} <= planned
    assert not planned & {"make_shards", "build_demo_model", "build_demo_corpus"}
    planned = planned_with(workdir, tmp_path, "device: cpu\n")
    assert {"capture", "atlas", "intervention_sweep"} <= planned


def test_editing_the_metrics_code_reruns_capture(demo_run):
    """Snakemake compares the content of small inputs, not only their mtime: a real edit of a
    package module the capture declares as input reruns it (and what follows)."""
    import os

    workdir, _, _ = demo_run
    module = workdir.parent / "src" / "spectra_attn" / "model" / "metrics.py"  # the copy's
    original, before = module.read_bytes(), module.stat()
    try:
        module.write_bytes(original + b"\n# edited by tests/test_workflow.py\n")
        result = snakemake(workdir, "--cores", "1", "-n")
    finally:
        module.write_bytes(original)
        os.utime(module, (before.st_atime, before.st_mtime))
    assert result.returncode == 0, result.stderr[-3000:]
    planned = planned_rules(result)
    assert {"capture", "atlas", "intervention_sweep"} <= planned
    assert "make_shards" not in planned


def test_second_run_does_nothing(demo_run):
    workdir, _, _ = demo_run
    again = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "-n")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_new_commit_or_a_dirty_tree_reruns_nothing(demo_run):
    """The workflow's git commit is in every output's provenance, but as a param Snakemake does
    not record: committing, or editing a file of the checkout, reruns no job."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    workdir, _, _ = demo_run
    checkout = workdir.parent
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "Snakefile"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a commit"], check=True)
    try:
        again = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "-n")
    finally:
        shutil.rmtree(checkout / ".git")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr


def test_execution_settings_rerun_nothing(demo_run, tmp_path):
    """Batch sizes and the query block size only decide how the work is cut (they reach the jobs
    as resources): lowering them to fit a GPU must not recompute finished shards, captures,
    sweeps or anything after them."""
    workdir, _, _ = demo_run
    planned = planned_with(
        workdir,
        tmp_path,
        "data:\n  tokenize_batch_size: 7\n"
        "capture:\n  batch_size: 2\n  query_block_size: 32\n"
        "intervention:\n  batch_size: 2\n",
    )
    # Only the configuration's description (it lists every value) is written again.
    assert planned == {"describe_config", "all"}


def test_bad_config_key_fails_before_any_job(demo_run, tmp_path):
    workdir, _, _ = demo_run
    mine = tmp_path / "mine.yaml"
    mine.write_text("capture:\n  n_sample: 3\n")
    result = snakemake(workdir, "--cores", "1", "-n", "--configfile", str(mine))
    assert result.returncode != 0
    assert "'n_sample' under 'capture'" in result.stdout + result.stderr


def test_a_value_that_would_fail_inside_a_job_keeps_the_outputs(demo_run, tmp_path):
    """Snakemake removes a job's outputs before running it: a context longer than the demo
    model's, which make_shards would refuse only after its shards were removed, is refused
    before any job runs (not a dry run), and the shards and the demo model stay."""
    workdir, _, _ = demo_run
    shards = sorted((workdir / "results" / "demo" / "data" / "shards").iterdir())
    before = [p.read_bytes() for p in shards]
    mine = tmp_path / "mine.yaml"
    mine.write_text("data:\n  context_length: 4096\n")
    result = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "--configfile", str(mine))
    assert result.returncode != 0
    assert "'data.context_length': 4096 exceeds the model's maximum context" in (
        result.stdout + result.stderr
    )
    assert [p.read_bytes() for p in shards] == before
    assert (workdir / "resources" / "demo" / "model" / "model.safetensors").is_file()
    again = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_other_model_skips_the_demo_model(demo_run, tmp_path):
    workdir, _, _ = demo_run
    mine = tmp_path / "mine.yaml"
    model_dir = workdir / "resources" / "demo" / "model"
    mine.write_text(f"run_name: other\nmodel:\n  name_or_path: {model_dir}\n")
    result = snakemake(workdir, "--cores", "1", "-n", "--configfile", str(mine), "--forceall")
    assert result.returncode == 0, result.stderr[-3000:]
    planned = planned_rules(result)
    assert "make_shards" in planned
    assert "build_demo_model" not in planned  # (it is named in the cache-eligibility notice)


def finished_outputs(workdir: Path) -> dict[str, bytes]:
    """The bytes of what a finished demo run made that a bad input must not cost: the shards
    (where they are made and where the run shows them), the capture parts, the sweeps, the
    demo model and the configuration's description."""
    results, resources = workdir / "results" / "demo", workdir / "resources"
    paths = [
        *sorted((resources / "shards").rglob("*")),
        *sorted((results / "data").rglob("*")),
        *sorted((results / "capture").glob("part_*.parquet")),
        *sorted((results / "intervention").rglob("sweep.parquet")),
        resources / "demo" / "model" / "model.safetensors",
        results / "configuration.txt",
    ]
    return {str(p.relative_to(workdir)): p.read_bytes() for p in paths if p.is_file()}


def damaged_demo_corpus(workdir: Path, tmp_path: Path, damage) -> Path:
    corpus = tmp_path / "corpus"
    shutil.copytree(workdir / "resources" / "demo" / "slimpajama", corpus)
    files = sorted((corpus / "test").rglob("*.jsonl.zst"))
    damage(files[len(files) // 2])
    return corpus


def only_books(workdir: Path, tmp_path: Path) -> Path:
    from .conftest import make_documents, write_jsonl_corpus

    books = [r for r in make_documents() if r["meta"]["redpajama_set_name"] == "RedPajamaBook"]
    return write_jsonl_corpus(tmp_path / "books", books)


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def mostly_bad(path: Path) -> None:
    (path.parent / "example_zz_bad.jsonl").write_text("{not json}\n" * 50)


def malformed_line(path: Path) -> None:
    (path.parent / "example_zz_bad.jsonl").write_text('{"text": "cut off\n')


# (overlay over config.yaml, given the workdir and a scratch folder; words the error must hold)
BAD_INPUTS = {
    # Caught inside make_shards: it writes beside the finished shards, which stay.
    "sources_absent": (
        lambda w, t: f"data:\n  source: {only_books(w, t)}\n",
        "nothing left after filtering",
    ),
    "zst_of_random_bytes": (
        lambda w, t: f"data:\n  source: {damaged_demo_corpus(w, t, random_bytes)}\n",
        "not a zstd file",
    ),
    "truncated_zst": (
        lambda w, t: f"data:\n  source: {damaged_demo_corpus(w, t, cut_in_half)}\n",
        "truncated: the file ends inside zstd frame",
    ),
    "mostly_malformed_file": (
        lambda w, t: f"data:\n  source: {damaged_demo_corpus(w, t, mostly_bad)}\n",
        "more than data.max_bad_record_fraction=0.01 allows",
    ),
    "on_bad_record_fail": (
        lambda w, t: (
            f"data:\n  source: {damaged_demo_corpus(w, t, malformed_line)}\n  on_bad_record: fail\n"
        ),
        "(data.on_bad_record: fail)",
    ),
    "corpus_yields_too_few": (
        lambda w, t: "data:\n  max_sequences: 5000\ncapture:\n  n_samples: 4000\n",
        "the configuration asks for",
    ),
    # Refused before any job.
    "more_samples_than_the_shards_hold": (
        lambda w, t: "capture:\n  n_samples: 4000\n",
        "the corpus yields no more; lower capture.n_samples",
    ),
    "demo_split_typo": (lambda w, t: "data:\n  split: tset\n", "the demo corpus has no split"),
    "missing_model_folder_like_a_hub_id": (
        lambda w, t: "model:\n  name_or_path: models/llama3\n",
        "config key 'model.name_or_path': 'models/llama3' is not a path on this machine",
    ),
    "missing_corpus_folder_like_a_hub_id": (
        lambda w, t: "data:\n  source: data/slimpajama\n",
        "config key 'data.source': 'data/slimpajama' is not a path on this machine",
    ),
    "float_for_an_integer": (
        lambda w, t: "capture:\n  n_samples: 8.0\n",
        "'capture.n_samples': 8.0 is not an integer (write 8)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_costs_no_finished_output(demo_run, tmp_path, case):
    """Each bad input of issue 15, run for real over the finished demo: refused with a message
    naming the key or file, every finished output byte-identical afterwards, and going back to
    the configuration that made them schedules nothing."""
    workdir, _, _ = demo_run
    before = finished_outputs(workdir)
    overlay, words = BAD_INPUTS[case]
    mine = tmp_path / "mine.yaml"
    mine.write_text(overlay(workdir, tmp_path))
    result = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "--configfile", str(mine))
    said = result.stdout + result.stderr
    logs = "".join(
        log.read_text(errors="replace")
        for log in (workdir / "results" / "demo" / "logs").glob("make_shards*.log")
    )
    assert result.returncode != 0, said[-3000:]
    assert words in said + logs, (said + logs)[-3000:]
    assert finished_outputs(workdir) == before
    again = snakemake(workdir, "--cores", "1", "--resources", "gpu=1", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


# ---- other architectures (issue 16) ----------------------------------------------------------
# The whole workflow (shards, capture, sweeps, gate checks, atlas, gain, plots) on tiny GPT-2,
# Pythia (GPT-NeoX) and Gemma-2 models, as the demo runs on its Llama: each family's tiny random
# model is saved beside the finished demo with the demo's tokenizer and run as a run of its own.
TINY_VOCAB = 4096  # the demo tokenizer's
TINY_MODELS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=None,  # GPT-2's 50256 is outside the demo vocabulary
            eos_token_id=None,
        )
    ),
    "pythia": lambda: transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            rotary_pct=0.25,
            max_position_embeddings=256,
        )
    ),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
            sliding_window=32,
            attn_implementation="eager",
        )
    ),
}
TINY_OVERLAY = """run_name: tiny-{name}
model:
  name_or_path: {folder}
data:
  context_length: 64
  max_sequences: 64
capture:
  n_samples: 16
  samples_per_job: 8
intervention:
  heads:
    - {{layer: 1, head: 0, role: target}}
    - {{layer: 1, head: 3, role: control}}
  n_samples: 8
gain:
  bootstrap_samples: 200
"""


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_the_workflow_runs_end_to_end_on_the_family(demo_run, name):
    workdir, _, _ = demo_run
    folder = workdir / f"tiny_{name}"
    torch.manual_seed(0)
    TINY_MODELS[name]().save_pretrained(folder, safe_serialization=True)
    demo_model = workdir / "resources" / "demo" / "model"
    for tokenizer_file in demo_model.glob("*token*"):
        shutil.copy(tokenizer_file, folder / tokenizer_file.name)
    overlay = workdir / f"tiny_{name}.yaml"
    overlay.write_text(TINY_OVERLAY.format(name=name, folder=folder))
    result = snakemake(
        workdir, "--cores", "1", "--resources", "gpu=1", "--configfile", str(overlay)
    )
    assert result.returncode == 0, result.stderr[-5000:]
    run = workdir / "results" / f"tiny-{name}"
    for check in ("baseline_sanity", "isolation", "temperature_identity"):
        for head in ("L1_H0", "L1_H3"):
            report = json.loads((run / "checks" / f"{check}_{head}.json").read_text())
            assert report["passed"], report
    assert json.loads((run / "checks" / "atlas_vs_sweep.json").read_text())["passed"]
    assert (run / "gain" / "verdict.json").is_file()
    assert (run / "plots" / "gain_fits" / "gain_fit_L1_H0.png").is_file()
    part = next((run / "capture").glob("part_*.parquet"))
    metadata = pq.read_schema(part).metadata
    expected = {"gpt2": "gpt2", "pythia": "gpt_neox", "gemma2": "gemma2"}[name]
    assert metadata[b"architecture.model_type"] == expected.encode()


# ---- several models in one configuration (issue 17) -------------------------------------------
# configs/demo-two-models.yaml (the demo Llama and a smaller demo Llama of another shape, both
# built by the workflow, sharing the demo tokenizer) at a small size, in a working directory of
# its own.
SMALL_RUN = """data:
  max_sequences: 64
  sequences_per_shard: 32
capture:
  n_samples: 16
  samples_per_job: 8
intervention:
  n_samples: 8
gain:
  bootstrap_samples: 200
demo:
  train_steps: 20
"""


def planned_runs(result: subprocess.CompletedProcess) -> dict[str, set[str]]:
    """Each planned rule → the run wildcards of its jobs (empty for a job without one)."""
    jobs: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            found = re.search(r"wildcards: (?:.*, )?run=([^,\s]+)", block)
            jobs.setdefault(rule.group(1), set()).update([found.group(1)] if found else [])
    return jobs


@pytest.fixture(scope="module")
def two_model_run(checkout):
    workdir = checkout / "two_models"
    workdir.mkdir()
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    shutil.copy(ROOT / "configs" / "demo-two-models.yaml", workdir / "two.yaml")
    (workdir / "small.yaml").write_text(SMALL_RUN)
    configfiles = [str(workdir / name) for name in ("two.yaml", "small.yaml")]
    args = ["--cores", "2", "--resources", "gpu=1", "--configfile", *configfiles]
    dry = snakemake(workdir, *args, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    real = snakemake(workdir, *args)
    assert real.returncode == 0, real.stderr[-5000:]
    return workdir, dry, real


def test_two_models_share_the_shards_made_once(two_model_run):
    workdir, dry, real = two_model_run
    assert dry.stdout.count("rule make_shards:") == 1
    assert len(re.findall(r"^rule make_shards:", real.stdout + real.stderr, re.MULTILINE)) <= 1
    stores = sorted((workdir / "resources" / "shards").iterdir())
    assert len(stores) == 1
    assert planned_runs(dry)["capture"] == {"demo", "demo-small"}
    manifests = [
        json.loads((workdir / "results" / run / "data" / "manifest.json").read_text())
        for run in ("demo", "demo-small")
    ]
    assert manifests[0]["made_in"] == manifests[1]["made_in"] == str(stores[0].relative_to(workdir))
    # Both models' own tokenizers are the one that made them (their jobs check it too).
    from spectra_attn.data.shards import load_tokenizer

    for folder in ("model", "models/small"):
        _, info = load_tokenizer(str(workdir / "resources" / "demo" / folder))
        assert info.fingerprint == manifests[0]["tokenizer"]["fingerprint"]


def test_each_models_outputs_are_where_a_run_of_it_alone_puts_them(two_model_run):
    workdir, _, _ = two_model_run
    for run, target in (("demo", "L2_H0"), ("demo-small", "L1_H0")):
        folder = workdir / "results" / run
        verdict = json.loads((folder / "gain" / "verdict.json").read_text())
        assert f"L{verdict['target']['layer']}_H{verdict['target']['head']}" == target
        assert (folder / "intervention" / target / "sweep.parquet").is_file()
        assert (folder / "plots" / "verdict.html").is_file()
        assert len(list((folder / "capture").glob("part_*.parquet"))) == 2
        assert "consistent: every output" in (folder / "provenance.txt").read_text()
    # The first model alone (config.yaml and the same small settings, no models:) finds its
    # outputs made, with the records it would have made itself: nothing to do.
    alone = snakemake(workdir, "--cores", "1", "--configfile", str(workdir / "small.yaml"), "-n")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "Nothing to be done" in alone.stdout + alone.stderr, alone.stdout[-3000:]


def test_the_comparison_reads_each_runs_own_outputs(two_model_run):
    import duckdb
    import pandas as pd

    workdir, _, _ = two_model_run
    folder = workdir / "results" / "demo-two-models" / "comparison"
    table = pd.read_csv(folder / "comparison.csv")
    assert list(table.run_name) == ["demo", "demo-small"]
    for row in table.to_dict("records"):
        run = workdir / "results" / row["run_name"]
        verdict = json.loads((run / "gain" / "verdict.json").read_text())
        atlas = pd.read_csv(run / "atlas" / "atlas_gain.csv")
        con = duckdb.connect(str(run / "aggregate" / "spectra.duckdb"), read_only=True)
        rho = con.execute("SELECT spearman_qn_entropy FROM head_summary").df()
        con.close()
        for key in ("gain_ratio", "ratio_ci_low", "ratio_ci_high", "target_percentile"):
            assert row[key] == pytest.approx(verdict[key], rel=1e-12), key
        assert row["verdict"] == verdict["verdict"]
        target = verdict["target"]
        assert (row["target_layer"], row["target_head"]) == (target["layer"], target["head"])
        assert (row["n_layers"], row["n_heads"]) == (atlas.layer.nunique(), atlas["head"].nunique())
        assert row["spearman_rho_median"] == pytest.approx(rho.spearman_qn_entropy.median())
    assert list(table.n_layers) == [4, 3] and list(table.n_heads) == [8, 4]
    con = duckdb.connect(str(folder / "comparison.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM atlas").fetchone()[0] == 4 * 8 + 3 * 4
    con.close()
    for name in ("verdicts", "atlas_depth", "correlations"):
        assert (folder / f"comparison_{name}.png").stat().st_size > 1000
    configfiles = [str(workdir / name) for name in ("two.yaml", "small.yaml")]
    result = snakemake(workdir, "--configfile", *configfiles, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Comparison" in (workdir / "report.html").read_text(errors="ignore")


def changed_models(workdir: Path, index: int, change: dict) -> str:
    """A copy of two.yaml with models[index] changed; its file name."""
    import yaml

    from spectra_attn.config import deep_merge

    config = yaml.safe_load((workdir / "two.yaml").read_text())
    config["models"][index] = deep_merge(config["models"][index], change)
    name = f"changed_{index}.yaml"
    (workdir / name).write_text(yaml.safe_dump(config))
    return name


@pytest.mark.parametrize(
    ("index", "change", "changed", "kept"),
    [
        (1, {"model": {"dtype": "bfloat16"}}, "demo-small", "demo"),
        (
            0,
            {
                "intervention": {
                    "heads": [
                        {"layer": 2, "head": 0, "role": "target"},
                        {"layer": 2, "head": 6, "role": "control"},
                    ]
                }
            },
            "demo",
            "demo-small",
        ),
    ],
    ids=["dtype_of_the_second", "head_of_the_first"],
)
def test_changing_one_model_reruns_that_models_jobs_only(
    two_model_run, index, change, changed, kept
):
    """Also when the changed file gives its keys in another order (yaml.safe_dump sorts them)."""
    workdir, _, _ = two_model_run
    overlay = changed_models(workdir, index, change)
    configfiles = [str(workdir / name) for name in (overlay, "small.yaml")]
    result = snakemake(workdir, "--cores", "1", "-n", "--configfile", *configfiles)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_runs(result)
    assert "compare_models" in jobs
    assert not {"make_shards", "build_demo_model", "build_other_demo_model"} & set(jobs)
    runs = set().union(*jobs.values())
    assert runs == {changed}, jobs
    assert "intervention_sweep" in jobs
    if index == 0:  # one head changed: only its sweep, not the unchanged target's
        assert "wildcards: run=demo, layer=2, head=6" in result.stdout
        assert "layer=2, head=0" not in result.stdout
    else:
        assert "capture" in jobs
    assert not re.search(rf"run={kept}[,\s]", result.stdout)
