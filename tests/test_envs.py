"""The environments are reproducible and in step: requirements/constraints.txt (the versions the
tests passed with) satisfies pyproject.toml's ranges and is what make setup installed; the conda
environments in envs/ pin exactly those versions of packages pyproject.toml lists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^([A-Za-z0-9_.-]+)(.*)$", requirement.strip()).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def project_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(split(r) for r in project["dependencies"])


def constraints() -> dict[str, str]:
    pinned = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower().replace("_", "-")] = version
    return pinned


def all_project_requirements() -> dict[str, list[str]]:
    """Every requirement of pyproject.toml, the extras' included: name → its specifiers."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, list[str]] = {}
    for requirement in [
        *project["dependencies"],
        *sum(project["optional-dependencies"].values(), []),
    ]:
        name, spec = split(re.sub(r"\[.*?\]", "", requirement))
        found.setdefault(name, []).append(spec)
    return found


@pytest.mark.parametrize("env", sorted(p.name for p in (ROOT / "envs").glob("*.yaml")))
def test_env_pins_the_tested_versions(env):
    content = yaml.safe_load((ROOT / "envs" / env).read_text())
    pip = next(d["pip"] for d in content["dependencies"] if isinstance(d, dict) and "pip" in d)
    declared, pinned = project_requirements(), constraints()
    for requirement in pip:
        name, spec = split(requirement)
        assert name in declared, f"{env}: {name} is not a dependency in pyproject.toml"
        assert spec == f"=={pinned[name]}", (
            f"{env}: {name}{spec} but requirements/constraints.txt has {pinned[name]}"
        )
    assert (ROOT / "envs" / env.replace(".yaml", ".post-deploy.sh")).is_file()


def test_constraints_satisfy_pyproject():
    from packaging.specifiers import SpecifierSet

    pinned = constraints()
    for name, specs in all_project_requirements().items():
        assert name in pinned, f"{name} (pyproject.toml) has no version in constraints.txt"
        for spec in specs:
            assert SpecifierSet(spec).contains(pinned[name]), f"{name}=={pinned[name]} vs {spec}"


def test_installed_versions_are_the_constraints():
    """What make setup installed (with -c requirements/constraints.txt) is what the file says;
    a package put on the path from elsewhere (an overlay of another transformers) is not judged."""
    import sys
    from importlib import metadata

    mismatched = []
    for name, version in constraints().items():
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            mismatched.append(f"{name} not installed")
            continue
        if not str(distribution.locate_file("")).startswith(sys.prefix):
            continue
        installed = distribution.version.split("+")[0]
        if installed != version:
            mismatched.append(f"{name}: {installed} installed, {version} in constraints.txt")
    assert not mismatched, "; ".join(mismatched) + " (make setup, or make lock after an upgrade)"


def test_every_rule_uses_an_existing_env():
    for rule_file in (ROOT / "rules").glob("*.smk"):
        for env in re.findall(r'"\.\./envs/([^"]+)"', rule_file.read_text()):
            assert (ROOT / "envs" / env).is_file(), (rule_file.name, env)


# Import names whose distribution is named otherwise, and modules that come with another package.
DISTRIBUTION = {"yaml": "pyyaml", "huggingface_hub": "huggingface-hub"}
BUNDLED = {"llvmlite": "numba"}  # numba depends on llvmlite


def rule_scripts() -> list[tuple[str, str, str]]:
    """(rule, env file, script) of every rule or checkpoint that runs a script in an env."""
    found = []
    for rule_file in sorted((ROOT / "rules").glob("*.smk")):
        blocks = re.split(r"^(?=(?:rule|checkpoint) )", rule_file.read_text(), flags=re.M)
        for block in blocks[1:]:
            name = block.split()[1].rstrip(":")
            env = re.search(r'conda:\s*\n\s*"\.\./envs/([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"\.\./([^"]+)"', block)
            if script:
                assert env, f"rule {name} runs a script but names no conda env"
                found.append((name, env.group(1), script.group(1)))
    return found


def third_party_imports(path: Path) -> set[str]:
    import ast
    import sys

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    tops = {name.split(".")[0] for name in names}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in {"spectra_attn"}}


def test_rule_scripts_are_found():
    rules = {name for name, _, _ in rule_scripts()}
    assert {"capture", "export_capture_csv", "select_heads", "atlas", "plots"} <= rules


@pytest.mark.parametrize(("rule", "env", "script"), rule_scripts(), ids=lambda v: str(v))
def test_rule_env_has_what_its_script_imports(rule, env, script):
    """Every package that a rule's script, or a spectra_attn module it reaches, imports (also
    inside functions, so this over-approximates) is in the rule's conda env: with `--sdm conda`
    a missing one fails the job, perhaps after hours of GPU work."""
    from spectra_attn.run.workflow import package_modules

    content = yaml.safe_load((ROOT / "envs" / env).read_text())
    pip = next(d["pip"] for d in content["dependencies"] if isinstance(d, dict) and "pip" in d)
    available = {split(requirement)[0] for requirement in pip}
    files = [ROOT / script, *package_modules(ROOT / script, ROOT / "src" / "spectra_attn")]
    needed = set().union(*(third_party_imports(path) for path in files))
    missing = {
        name
        for name in needed
        if DISTRIBUTION.get(name, name).replace("_", "-") not in available
        and BUNDLED.get(name) not in available
    }
    assert not missing, f"rule {rule} ({script}) imports {sorted(missing)}, absent from envs/{env}"
