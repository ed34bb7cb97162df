"""Spectra: per-token attention measurements and query-scaling interventions for decoder LLMs."""

import os
import sys

# On the CPU, capture's Numba kernel runs its parallel loops between torch operations on the same
# cores. GNU OpenMP's default wait keeps idle threads spinning for about a millisecond after every
# parallel region, which takes those cores from whatever runs next (a 2-thread NumPy sort once ran
# at single-thread speed right after a torch operation); a passive wait gives them back. A user's
# own setting stands, and it only takes effect when spectra_attn is imported before torch (the
# workflow's scripts and the `spectra` command do so). See benchmarks/RESULTS.md, capture overhead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# glibc's malloc, by default, hands large freed blocks back to the system (munmap, or trimming the
# heap) and maps fresh pages for the next ones, so every batch's activations fault their pages in
# again: about 200,000 page faults per 16 bench-model sequences, a quarter of a plain forward
# pass's time on the project's CPU machine, and noise that varied it by 30 % from run to run
# (benchmarks/RESULTS.md). Blocks up to 32 MiB (glibc's largest threshold) are taken from the heap
# instead, and up to 1 GiB of freed memory stays in the process for the next batch; the peak
# memory is unchanged. A user's MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ stands, and
# SPECTRA_MALLOC=system leaves glibc's own behaviour.
MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 32 << 20), "M_TRIM_THRESHOLD": (-1, 1 << 30)}


def _keep_freed_memory() -> dict[str, int]:
    """Apply :data:`MALLOC_SETTINGS` with glibc's ``mallopt``; returns what was set."""
    if (
        not sys.platform.startswith("linux")
        or os.environ.get("SPECTRA_MALLOC") == "system"
        or any(f"MALLOC_{name[2:]}_" in os.environ for name in MALLOC_SETTINGS)
    ):
        return {}
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return {}
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return {name: value for name, (code, value) in MALLOC_SETTINGS.items() if mallopt(code, value)}


MALLOC_APPLIED = _keep_freed_memory()

__version__ = "0.1.0"
