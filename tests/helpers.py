"""Helpers shared by the tests (not fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, *args: str, drop: tuple[str, ...] = (), **env: str) -> str:
    """Standard output of ``python -c code args`` in a fresh interpreter, with the environment
    variables starting with any of ``drop`` removed and ``env`` added."""
    environment = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**environment, **env},
    )
    return result.stdout
