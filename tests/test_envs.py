"""The conda environments in envs/ ask for the same packages and versions as pyproject.toml."""

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


@pytest.mark.parametrize("env", sorted(p.name for p in (ROOT / "envs").glob("*.yaml")))
def test_env_matches_pyproject(env):
    content = yaml.safe_load((ROOT / "envs" / env).read_text())
    pip = next(d["pip"] for d in content["dependencies"] if isinstance(d, dict) and "pip" in d)
    declared = project_requirements()
    for requirement in pip:
        name, spec = split(requirement)
        assert name in declared, f"{env}: {name} is not a dependency in pyproject.toml"
        assert spec == declared[name], (
            f"{env}: {name}{spec} but pyproject.toml says {declared[name]}"
        )
    assert (ROOT / "envs" / env.replace(".yaml", ".post-deploy.sh")).is_file()


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
    from spectra_attn.workflow import package_modules

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
