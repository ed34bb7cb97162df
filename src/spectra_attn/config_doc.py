"""The configuration reference page (docs/configuration.md), rendered from the schema.

The schema (``schemas/config.schema.yaml``) is the one source of every key, type, default and
description; this module only lays it out as Markdown, so that the page cannot say something the
validator does not. ``tests/test_docs.py`` compares the checked-in page with a fresh render.

Regenerate after editing the schema::

    make docs            # or: python -m spectra_attn.config_doc docs/configuration.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectra_attn.config import EXECUTION_KEYS, load_schema

PAGE = Path("docs/configuration.md")

INTRO = """\
# Configuration reference

<!-- Generated from src/spectra_attn/schemas/config.schema.yaml by `make docs`
     (python -m spectra_attn.config_doc docs/configuration.md): edit the schema, not this page. -->

Every key Spectra reads, with its type, default and meaning, rendered from the schema that
validates every configuration
([`config.schema.yaml`](../src/spectra_attn/schemas/config.schema.yaml)). `config.yaml`
spells out every value of the demo; a file of your own given with
`snakemake --configfile my.yaml` overlays it key by key (mappings merge, lists are replaced).
Unknown keys and values outside these ranges stop the run before any job starts, naming the
key ([troubleshooting](troubleshooting.md#configuration-before-any-job)).
`spectra config show --configfile my.yaml` prints the resolved values with the design
decisions they imply.

The keys are a contract: they keep working in every later version. The defaults below are the
schema's; `config.yaml` differs in one value, the demo's heads (`intervention.heads`: layer 2,
head 0 as target and layer 2, head 5 as control, since the demo model has 4 layers of 8 heads).

The keys described as an *execution setting* only decide how the work is cut (batch and block
sizes): they reach the jobs as Snakemake resources rather than params, so changing one, for
example to fit a GPU, reruns nothing that has finished, and can be set per rule
(`--set-resources capture:batch_size=4`).
Every other key reaches the jobs that use it as a param: changing it reruns exactly those jobs
([reproducibility](reproducibility.md#what-reruns-when-something-changes)).
"""


def _type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    names = []
    for name in kinds:
        if name == "array" and "items" in schema:
            item = schema["items"].get("type", "")
            names.append(f"list of {item}s" if item else "list")
        else:
            names.append(name)
    return " or ".join(n for n in names if n)


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _allowed(schema: Mapping[str, Any]) -> str:
    parts = []
    enum = schema.get("enum") or schema.get("items", {}).get("enum")
    if enum:
        parts.append("one of " + ", ".join(f"`{_value(v)}`" for v in enum))
    for key, text in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        for source, prefix in ((schema, ""), (schema.get("items", {}), "each ")):
            if key in source:
                parts.append(f"{prefix}{text} {_value(source[key])}")
    if "minItems" in schema:
        count = schema["minItems"]
        parts.append(f"at least {count} item{'s' if count != 1 else ''}")
    if schema.get("uniqueItems"):
        parts.append("no repeats")
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    return "; ".join(parts)


def _default(schema: Mapping[str, Any], required: bool) -> str:
    if "default" not in schema:
        return "(required)" if required else "(optional)"
    default = schema["default"]
    if isinstance(default, list) and default and isinstance(default[0], Mapping):
        return "<br>".join(f"`{_value(item)}`" for item in default)
    return f"`{_value(default)}`"


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, and outside `code` a <placeholder> escaped (it
    would be read as an HTML tag and vanish)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"<([A-Za-z_][^<>]*)>", r"&lt;\1&gt;", parts[i])
    return "`".join(parts)


def _rows(
    properties: Mapping[str, Any], prefix: str, execution: set[str], required=()
) -> list[str]:
    rows = []
    for name, schema in properties.items():
        key = f"{prefix}{name}"
        description = schema.get("description", "")
        if key in execution and "execution setting" not in description.lower():
            description = f"An execution setting. {description}"
        rows.append(
            f"| `{key}` | {_cell(_type(schema))} | {_default(schema, name in required)} | "
            f"{_cell(_allowed(schema))} | {_cell(description)} |"
        )
        items = schema.get("items", {})
        if schema.get("type") == "array" and "properties" in items:
            rows += _rows(items["properties"], f"{key}[].", execution, items.get("required", ()))
    return rows


HEADER = "| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |"


def render(schema: Mapping[str, Any] | None = None) -> str:
    """The Markdown page: an introduction, the top-level keys, then one section per group."""
    schema = schema if schema is not None else load_schema()
    execution = {".".join(key) for key in EXECUTION_KEYS}
    properties = schema["properties"]
    scalars = {k: v for k, v in properties.items() if v.get("type") != "object"}
    groups = {k: v for k, v in properties.items() if v.get("type") == "object"}
    out = [INTRO, "## Top-level keys", "", HEADER, *_rows(scalars, "", execution), ""]
    for name, group in groups.items():
        out += [f"## {name}", "", _cell(group.get("description", "")), "", HEADER]
        out += _rows(group.get("properties", {}), f"{name}.", execution)
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spectra_attn.config_doc",
        description="Write the configuration reference page rendered from the schema.",
    )
    parser.add_argument("path", nargs="?", default=str(PAGE), help=f"default: {PAGE}")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the page differs"
    )
    args = parser.parse_args(argv)
    path, text = Path(args.path), render()
    if args.check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"{path} differs from the schema: run `make docs`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
