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
