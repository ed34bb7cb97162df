"""A page as a person sees it: Debian's Chromium, headless, opens a file and returns the DOM after
its scripts ran and the console messages it logged. Tests skip, saying why, without Chromium
(.ci/run installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
# Offline, quiet and sandbox-free (CI runs as root in a container): no network, no profile reuse.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
# Chromium logs each console message (log, warning, error, uncaught exception) as one such line.
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\] \"(?P<message>.*)\", source: ")


def chromium() -> str:
    """The Chromium executable, or skip the test."""
    for name in NAMES:
        if found := shutil.which(name):
            return found
    pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")


def open_page(
    path: str | Path, budget_ms: int = 5000, screenshot: Path | None = None
) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran for up to ``budget_ms`` of virtual time, every
    console message). With ``screenshot``, a 1200 × 1600 PNG of the page as well."""
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="spectra-chromium-") as profile:
        command = [
            chromium(),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
        ]
        done = subprocess.run(
            [*command, "--dump-dom", url], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        if screenshot is not None:
            shot = subprocess.run(
                [*command, f"--screenshot={screenshot}", "--window-size=1200,1600", url],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert shot.returncode == 0, shot.stderr[-3000:]
    messages = [m.group("message") for m in CONSOLE.finditer(done.stderr)]
    return done.stdout, messages
