"""Names shared by the jobs that run the model, the analysis that reads their tables, and the
checks of a configuration before any job runs.

A module of constants only, free of torch and of analysis code: every rule declares the package
modules its script imports as inputs, so a model job that took these names from an analysis
module would rerun (hours of GPU time at scale) whenever that analysis code is edited.
"""

from __future__ import annotations

# The original project's columns of capture's rows, in its order: the first columns of every
# capture part.
ORIGINAL_CSV_COLUMNS = (
    "sample_id",
    "layer",
    "head",
    "token_pos",
    "query_norm",
    "entropy",
    "max_attn",
    "k_eff",
)
# The metrics whose response to a head's query scale (their gain) the sweep and atlas measure.
GAIN_METRICS = ("max_attn", "entropy", "k_eff")
