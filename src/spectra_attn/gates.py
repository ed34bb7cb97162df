"""What makes a check a gate: its report's tolerance by model dtype, and ``require``, which stops
the workflow when a report did not pass. Free of torch, so analysis jobs (whose environment has
no torch) can gate on reports too; the checks that run the model are in
:mod:`spectra_attn.model.checks`.
"""

from __future__ import annotations

from typing import Any

# Largest deviation accepted, by model dtype: exact arithmetic agrees to float32 rounding; half
# precision rounds the scaled query itself (bf16 keeps 8 bits of mantissa).
TOLERANCES = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}
# The atlas-vs-sweep check compares means over positions, computed two ways (temperature-scaled
# logits against hooked queries), so it allows a little more, relative.
ATLAS_TOLERANCES = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


# The gate checks run on every intervened head (spectra_attn.model.checks), in the order they run.
CHECKS = ("baseline_sanity", "isolation", "temperature_identity")


class CheckFailed(RuntimeError):
    """A gate check did not pass; the message says what deviated and by how much."""


def require(report: dict[str, Any]) -> None:
    """Raise CheckFailed, with the deviations (and the report's ``reason``, if it gives one), if
    the report did not pass. A report is about one head (``layer``, ``head``, ``role``) or about
    several (``heads``)."""
    if report["passed"]:
        return
    if "layer" in report:
        subject = f"L{report['layer']}_H{report['head']} ({report['role']})"
    else:
        subject = ", ".join(report.get("heads") or []) or "no head"
    problems = []
    if report.get("reason"):
        problems.append(report["reason"])
    failing = {k: v for k, v in report["deviations"].items() if not v <= report["tolerance"]}
    if failing:
        problems.append(
            f"deviations above the tolerance {report['tolerance']:g}: "
            + ", ".join(f"{k}={v:.3g}" for k, v in failing.items())
        )
    raise CheckFailed(f"{report['check']} failed for {subject}: " + "; ".join(problems))
