"""Which package modules a rule's script runs: read from its imports, transitively."""

from __future__ import annotations

from pathlib import Path

from spectra_attn.run.workflow import PACKAGE_DIR, package_modules

ROOT = Path(__file__).resolve().parents[1]


def names(script: str) -> set[str]:
    return {path.stem for path in package_modules(ROOT / "workflow_scripts" / f"{script}.py")}


def test_capture_runs_the_metrics_kernels_and_the_shard_readers():
    # capture → metrics → cpu_kernels (a lazy import inside a function), samples → shards
    assert {"__init__", "capture", "metrics", "cpu_kernels", "samples", "shards", "io"} <= names(
        "capture"
    )


def test_analysis_scripts_do_not_pull_in_the_model_code():
    for script in ("check_atlas_vs_sweep", "gain", "plots", "aggregate", "atlas_gain"):
        assert not {"capture", "metrics", "checks"} & names(script), script


def test_model_jobs_do_not_depend_on_the_analysis_code():
    """Editing the analysis (gains, plots, aggregation, head selection, the CSV export) must not
    rerun the jobs that run the model, which take hours of GPU time at scale."""
    analysis = {"gain", "plots", "aggregate", "selection", "capture_csv", "gates"}
    for script in ("capture", "atlas", "intervention_sweep"):
        assert not analysis & names(script), (script, analysis & names(script))
    assert not (analysis - {"gates"}) & names("check_intervention")


def test_from_package_import_module_counts(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("from spectra_attn import gates\n\ndef f():\n    import spectra_attn.io\n")
    assert names_of(script) == {"__init__", "gates", "io"}


def names_of(script: Path) -> set[str]:
    return {path.stem for path in package_modules(script)}


def test_every_module_found_exists_in_the_package():
    for script in (ROOT / "workflow_scripts").glob("*.py"):
        for path in package_modules(script):
            assert PACKAGE_DIR in path.parents and path.is_file()


def test_a_module_in_a_subpackage_brings_its_package_init(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("from spectra_attn.model.metrics import row_metrics\n")
    found = {str(path.relative_to(PACKAGE_DIR)) for path in package_modules(script)}
    assert {"__init__.py", "model/__init__.py", "model/metrics.py", "model/cpu_kernels.py"} <= found
    assert not any(name.startswith("analysis/") for name in found)
