"""The documentation cannot go stale unnoticed: every relative link and #anchor of README.md,
docs/*.md and benchmarks/RESULTS.md resolves (GitHub's heading slugs), the configuration reference
is the schema rendered, the outputs page names every path a rule writes and none it no longer
writes, and the README points to every page of the user guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spectra_attn import config_doc

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/RESULTS.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def without_code_blocks(text: str) -> str:
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text (code spans and links reduced to their
    text), lower-cased, punctuation dropped but for hyphens and underscores, spaces → hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "")
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug, repeats numbered as GitHub does (-1, -2, …)."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(without_code_blocks(path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Relative links whose file does not exist, and #anchors no heading of the target makes."""
    problems = []
    for match in LINK.finditer(without_code_blocks(page.read_text(encoding="utf-8"))):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        where = f"{name}: ({target})"
        if not resolved.exists():
            problems.append(f"{where}: no file {path_part}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading makes #{anchor} in {resolved.name}")
    return problems


def test_github_slugs():
    assert slug("Inside `make_shards` (finished shards stay)") == (
        "inside-make_shards-finished-shards-stay"
    )
    assert slug("Running on SageMaker (inputs, outputs and Snakemake's records in S3)") == (
        "running-on-sagemaker-inputs-outputs-and-snakemakes-records-in-s3"
    )
    assert slug("k_eff ≥ 0.9: [the metric](x.md)") == "k_eff--09-the-metric"


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n\n## A section\n")
    page.write_text(
        "# Page\n\n[ok](other.md#a-section) [ok](other.md#a-section-1) [ok](#page)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [web](https://example.org/x#y)\n"
        "```\n[in a code block](ignored.md)\n```\n"
    )
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "no file missing.md" in problems[0] and "#nowhere" in problems[1]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_anchor_resolves(page):
    assert not broken_links(page)


# -- the configuration reference -------------------------------------------------------------------
def test_the_configuration_page_is_the_schema_rendered():
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text(encoding="utf-8") == config_doc.render(), (
        "docs/configuration.md differs from the schema: run `make docs`"
    )


def test_the_configuration_check_fails_on_a_stale_page(tmp_path):
    page = tmp_path / "configuration.md"
    assert config_doc.main([str(page)]) == 0
    assert config_doc.main(["--check", str(page)]) == 0
    schema = config_doc.load_schema()
    schema["properties"]["seed"]["description"] = "Edited."
    page.write_text(config_doc.render(schema), encoding="utf-8")
    assert config_doc.main(["--check", str(page)]) == 1


def test_the_configuration_page_names_every_key():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")

    def keys(properties, prefix=""):
        for name, schema in properties.items():
            yield prefix + name
            yield from keys(schema.get("properties", {}), f"{prefix}{name}.")
            yield from keys(schema.get("items", {}).get("properties", {}), f"{prefix}{name}[].")

    for key in keys(config_doc.load_schema()["properties"]):
        if "." in key:
            assert f"`{key}`" in text, key


# -- the outputs page ------------------------------------------------------------------------------
def rule_paths() -> tuple[set[str], set[str]]:
    """Every output, log and benchmark path pattern of the workflow's rules (read through
    Snakemake itself, with the default configuration), written as the outputs page writes them:
    results/<run>/…, part_NNNN, L<l>_H<h>, resources/shards/<digest>/…; and which are
    directories."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(),
            storage_settings=StorageSettings(),
            snakefile=ROOT / "Snakefile",
            workdir=ROOT,
        )._workflow
        run = workflow.config["run_name"]
        paths, directories = set(), set()
        for rule in workflow.rules:
            files = [*rule.output, *rule.log]
            files += [rule.benchmark] if rule.benchmark else []
            for file in files:
                path = normalise(str(file), run)
                paths.add(path)
                if file.is_directory:
                    directories.add(path)
    return paths, directories


def normalise(path: str, run: str) -> str:
    wildcard = r"\{(\w+)(?:,(?:[^{}]|\{[^{}]*\})*)?\}"
    names = {"part": "NNNN", "layer": "<l>", "head": "<h>"}
    path = re.sub(wildcard, lambda m: names.get(m.group(1), f"<{m.group(1)}>"), path)
    path = re.sub(rf"^results/{re.escape(run)}/", "results/<run>/", path)
    path = re.sub(r"^resources/shards/[0-9a-f]+/", "resources/shards/<digest>/", path)
    return re.sub(
        r"^resources/datasets/[^/]+/[^/]+$", "resources/datasets/<org>__<name>/<split>", path
    )


@pytest.fixture(scope="module")
def workflow_paths():
    return rule_paths()


def outputs_page_paths() -> set[str]:
    text = (ROOT / "docs" / "outputs.md").read_text(encoding="utf-8")
    return {
        code.rstrip("/")
        for code in re.findall(r"`([^`\s]+)`", text)
        if code.startswith(("results/", "resources/"))
    }


def test_the_outputs_page_lists_every_path_a_rule_writes(workflow_paths):
    paths, _ = workflow_paths
    missing = sorted(paths - outputs_page_paths())
    assert not missing, f"docs/outputs.md does not list: {missing}"


def test_the_outputs_page_lists_nothing_the_rules_do_not_write(workflow_paths):
    """A documented path is a rule's output, log or benchmark, a file inside a directory
    output, or a folder that holds some of them."""
    paths, directories = workflow_paths
    unknown = [
        path
        for path in outputs_page_paths() - paths
        if not any(path.startswith(d + "/") for d in directories)
        and not any(p.startswith(path + "/") for p in paths)
    ]
    assert not unknown, f"docs/outputs.md lists what no rule writes: {sorted(unknown)}"


# -- the README --------------------------------------------------------------------------------
def test_the_readme_is_a_short_entry_point_to_every_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 180
    assert "make demo" in readme and "make test" in readme  # .ci/run runs the README's command
    linked = {m.group(2).partition("#")[0] for m in LINK.finditer(readme)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README.md does not link docs/{page.name}"
    assert "benchmarks/RESULTS.md" in linked


# -- the measurements ----------------------------------------------------------------------------
def test_every_measurement_says_when_where_how_and_at_which_commit():
    """benchmarks/RESULTS.md: each section names its date, machine, command and commit, and the
    sections run from the latest date to the earliest."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert sections
    dates = []
    for section in sections:
        title = section.splitlines()[0]
        for field in ("Date", "Machine", "Command", "Commit"):
            assert f"**{field}" in section, f"RESULTS.md, {title!r}: no **{field}…**"
        date = re.search(r"\*\*Date:?\*\*:?\s*(\d{4}-\d{2}-\d{2})", section)
        assert date, f"RESULTS.md, {title!r}: no date as YYYY-MM-DD after **Date:**"
        dates.append(date.group(1))
    assert dates == sorted(dates, reverse=True), f"RESULTS.md is not latest first: {dates}"
