"""Which package modules a rule's script runs: read from its imports, transitively."""

from __future__ import annotations

import ast
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


# The package's rooms (docs/architecture.md), lowest first: a module imports only from its own
# room and rooms below it, so each part can be read (and tested) without those above it.
ROOMS = {"data": 1, "demo": 2, "model": 2, "analysis": 2, "run": 3, "cli": 4}
# The one import up from the ground floor: config reads the table of architectures (a leaf
# module importing nothing of the package) to describe a configuration.
ALLOWED_UP = {("config", "model.architectures")}


def package_imports() -> dict[str, set[str]]:
    """Each module's imports of other package modules, by dotted name below spectra_attn."""
    modules = {
        ".".join(path.relative_to(PACKAGE_DIR).with_suffix("").parts): path
        for path in PACKAGE_DIR.rglob("*.py")
        if path.name != "__init__.py"
    }
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if not node.module.startswith("spectra_attn"):
                    continue
                base = node.module.removeprefix("spectra_attn").lstrip(".")
                for alias in node.names:
                    candidate = f"{base}.{alias.name}" if base else alias.name
                    found.add(candidate if candidate in modules else base)
            elif isinstance(node, ast.Import):
                found |= {
                    a.name.removeprefix("spectra_attn.")
                    for a in node.names
                    if a.name.removeprefix("spectra_attn.") in modules
                }
        imports[name] = found & set(modules)
    return imports


def room(module: str) -> int:
    return ROOMS.get(module.split(".")[0], 0) if "." in module or module == "cli" else 0


def upward_imports(imports: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [
        (module, dependency)
        for module, dependencies in imports.items()
        for dependency in dependencies
        if room(dependency) > room(module)
        and module.split(".")[0] != dependency.split(".")[0]
        and (module, dependency) not in ALLOWED_UP
    ]


def test_every_import_points_down_the_rooms():
    assert not upward_imports(package_imports())


def test_the_rooms_check_sees_an_upward_import():
    assert upward_imports({"data.shards": {"run.workflow"}, "io": {"analysis.gain"}}) == [
        ("data.shards", "run.workflow"),
        ("io", "analysis.gain"),
    ]
    assert not upward_imports({"model.capture": {"data.shards", "io"}, "data.samples": {"data.x"}})


def test_no_import_cycles():
    imports = package_imports()
    done, active = set(), []

    def visit(module):
        if module in active:
            raise AssertionError(f"import cycle: {' → '.join([*active, module])}")
        if module in done:
            return
        active.append(module)
        for dependency in imports.get(module, ()):
            visit(dependency)
        active.pop()
        done.add(module)

    for module in imports:
        visit(module)
