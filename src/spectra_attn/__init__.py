"""Spectra: per-token attention measurements and query-scaling interventions for decoder LLMs."""

import os

# On the CPU, capture's Numba kernel runs its parallel loops between torch operations on the same
# cores. GNU OpenMP's default wait keeps idle threads spinning for about a millisecond after every
# parallel region, which takes those cores from whatever runs next (a 2-thread NumPy sort once ran
# at single-thread speed right after a torch operation); a passive wait gives them back. A user's
# own setting stands, and it only takes effect when spectra_attn is imported before torch (the
# workflow's scripts and the `spectra` command do so). See benchmarks/RESULTS.md, capture overhead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
