"""What importing spectra_attn sets for the process: the OpenMP wait policy and glibc's malloc
thresholds (see spectra_attn/__init__.py), each left alone where the user set their own."""

from __future__ import annotations

import json
import platform
import sys

import pytest

from tests.helpers import run_python

# Allocates and touches eight 8 MiB blocks, then frees them, ten times; counts the page faults of
# the last nine times.
FAULTS = """
import json, resource, sys
if sys.argv[1] == "import":
    import spectra_attn
    applied = spectra_attn.MALLOC_APPLIED
else:
    applied = None
import numpy as np

def touch():  # like a forward pass: several blocks alive at once, then all freed
    blocks = [np.empty(2 << 20, np.float32) for _ in range(8)]
    for block in blocks:
        block.fill(1.0)
    del blocks, block

touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def run(mode: str, **env) -> dict:
    output = run_python(FAULTS, mode, drop=("MALLOC_", "SPECTRA_MALLOC"), **env)
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the malloc thresholds are glibc's")
def test_freed_blocks_stay_in_the_process_instead_of_faulting_in_again():
    """64 MiB in blocks of 8 MiB freed and taken again: by glibc's default its pages fault in
    again (16,384 of 4 KiB each time it is trimmed), not once spectra_attn is imported; a user's own
    MALLOC_TRIM_THRESHOLD_ stands, and SPECTRA_MALLOC=system keeps glibc's behaviour."""
    plain = run("plain")
    imported = run("import")
    assert imported["applied"] == {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 1 << 30}
    assert plain["faults"] >= 16384  # the 64 MiB faulted in again at least once
    assert imported["faults"] < 100
    for own in (
        run("import", MALLOC_TRIM_THRESHOLD_="131072"),
        run("import", SPECTRA_MALLOC="system"),
    ):
        assert own["applied"] == {}
        assert own["faults"] >= 16384


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise():
    code = "import os, spectra_attn; print(os.environ['OMP_WAIT_POLICY'])"
    default = run_python(code, drop=("OMP_WAIT_POLICY",))
    assert default.strip() == "PASSIVE"
    own = run_python(code, drop=("OMP_WAIT_POLICY",), OMP_WAIT_POLICY="ACTIVE")
    assert own.strip() == "ACTIVE"
