"""Spectra: per-token attention measurements and query-scaling interventions for decoder LLMs."""

import os

# On the CPU, capture's kernels (NumPy sorts on worker threads, Numba loops) run between torch
# operations on the same cores. GNU OpenMP's default wait keeps torch's idle threads spinning for
# about a millisecond after every operation, which takes those cores from the kernels (a 2-thread
# sort ran at single-thread speed); a passive wait gives them back. A user's own setting stands,
# and it only takes effect when spectra_attn is imported before torch (the workflow's scripts and
# the `spectra` command do so). See benchmarks/RESULTS.md, capture overhead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
