"""Read spectra.def the way `apptainer build` does, as far as a script can without Apptainer.

    python .ci/docker/apptainer_def.py spectra.def [NAME=VALUE ...]
    python .ci/docker/apptainer_def.py spectra.def --section environment

prints a shell script that does the build's steps inside a container of the base image (run by
.ci/docker/apptainer_post.sh under Docker, the checkout mounted at /ctx): %setup with
APPTAINER_ROOTFS=/, the %files copies, %post under `sh -e`, then %test and the %runscript with
%environment sourced. {{ NAME }} placeholders take the %arguments defaults, or NAME=VALUE (as
`apptainer build --build-arg`). Exits non-zero on what `apptainer build` would refuse: an unknown
section or header, a placeholder without a value, a %files source that does not exist.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

SECTIONS = {
    "arguments", "setup", "files", "post", "environment", "runscript", "test", "labels",
    "help", "startscript", "app", "appinstall", "appenv", "apprun", "applabels", "apphelp",
    "appfiles", "apptest",
}  # fmt: skip
HEADERS = {"bootstrap", "from", "stage", "fingerprints", "includecmd", "mirrorurl", "osversion"}


def parse(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        if match := re.match(r"%(\w+)\s*$", line):
            current = match.group(1)
            if current not in SECTIONS:
                raise SystemExit(f"line {number}: unknown section %{current}")
            if current in sections:
                raise SystemExit(f"line {number}: %{current} twice")
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            if not sep or key.strip().lower() not in HEADERS:
                raise SystemExit(f"line {number}: not a header keyword: {line!r}")
            header[key.strip().lower()] = value.strip()
    if header.get("bootstrap") is None:
        raise SystemExit("no Bootstrap: header")
    return header, sections


def substitute(text: str, values: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise SystemExit(f"{{{{ {name} }}}} has no value (no %arguments default, no build arg)")
        return values[name]

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", value, text)


def arguments(lines: list[str]) -> dict[str, str]:
    values = {}
    for line in lines:
        if line.strip() and not line.strip().startswith("#"):
            name, sep, value = line.strip().partition("=")
            if not sep:
                raise SystemExit(f"%arguments: not NAME=VALUE: {line!r}")
            values[name] = value
    return values


def files(lines: list[str], checkout: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in lines:
        if line.strip() and not line.strip().startswith("#"):
            source, *dest = shlex.split(line)
            if not (checkout / source).exists():
                raise SystemExit(f"%files: {source} does not exist in {checkout}")
            pairs.append((source, dest[0] if dest else source))
    return pairs


def main(argv: list[str]) -> None:
    path = Path(argv[0])
    header, sections = parse(path.read_text())
    values = arguments(sections.get("arguments", []))
    if argv[1:2] == ["--section"]:  # one section as the image holds it (%environment's file)
        print(substitute("\n".join(sections.get(argv[2], [])), values))
        return
    values |= dict(item.split("=", 1) for item in argv[1:])
    header = {key: substitute(value, values) for key, value in header.items()}
    body = {name: substitute("\n".join(lines), values) for name, lines in sections.items()}
    print(f"# {path}: Bootstrap: {header['bootstrap']}, From: {header.get('from')}")
    print("set -e\nexport APPTAINER_ROOTFS=/ SINGULARITY_ROOTFS=/")
    print(f"sh -e <<'SPECTRA_SETUP'\n{body.get('setup', '')}\nSPECTRA_SETUP")
    for source, dest in files(sections.get("files", []), path.parent):
        print(f"mkdir -p {shlex.quote(str(Path(dest).parent))}")
        print(f"cp -a /ctx/{shlex.quote(source)} {shlex.quote(dest)}")
    print(f"sh -e <<'SPECTRA_POST'\n{body.get('post', '')}\nSPECTRA_POST")
    # Apptainer writes %environment to /.singularity.d/env/90-environment.sh, sourced at start.
    print(
        f"cat > /tmp/90-environment.sh <<'SPECTRA_ENV'\n{body.get('environment', '')}\nSPECTRA_ENV"
    )
    print(
        f"(cd /opt/spectra && . /tmp/90-environment.sh && sh -e <<'SPECTRA_TEST'\n"
        f"{body.get('test', '')}\nSPECTRA_TEST\n)"
    )
    print(f"cat > /tmp/runscript <<'SPECTRA_RUN'\n{body.get('runscript', '')}\nSPECTRA_RUN")
    print(
        "(cd /opt/spectra && . /tmp/90-environment.sh"
        " && sh /tmp/runscript config show >/tmp/config.txt && head -3 /tmp/config.txt)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
