"""The verdict page: the answer a researcher reads, as HTML (self-contained, figures inline) and as
Markdown (figures linked beside it), from the same content.

:func:`build` turns the analysis's outputs (``verdict.json``, the gain table, the trend analyses,
the gate reports, the sweeps, the gain atlas, the head selection, provenance) into a
:class:`Page`: a list of blocks (headings, paragraphs, tables, lists, figures) whose every value is
already text at a sensible precision. :func:`to_html` and :func:`to_markdown` only render it, so
the two forms say the same thing. No value reaches the page as a raw dict or a 16-digit float.

The caveats are triggered by the data: few samples, a ratio CI that straddles a threshold of the
verdict table, a control that is not flat (or one so flat that the ratio divides by noise), a demo
model, the original project's failure criterion, a failed gate.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from spectra_attn.provenance import summary_rows

# The verdict table's thresholds on the target/control gain ratio
# (spectra_attn.analysis.gain.verdict_text), with the band each side of them.
THRESHOLDS = (1 / 1.5, 1.5, 2.0)
BANDS = (
    "the control is more sensitive than the target",
    "no functional distinction (a universal mechanism)",
    "the target is more sensitive to query magnitude",
    "strong evidence of head-specific exploitation of query magnitude",
)
# Fewer intervened samples than this and the page says so.
FEW_SAMPLES = 30
# The report's figures shown inline, in this order: rule output name → (file name, caption).
KEY_FIGURES = {
    "comparison": (
        "gain_comparison.png",
        "Gain of each intervened head (OLS slope of the per-scale mean against ln s, 95% CI "
        "bars): the verdict compares the two max_attn bars.",
    ),
    "panels": (
        "intervention_panels.png",
        "Entropy, max_attn and k_eff against the query scale s (mean ± 95% CI over samples): "
        "a responsive head's curves slope, a flat control's stay level.",
    ),
    "downstream": (
        "downstream_effects.png",
        "The cost of the intervention: next-token loss and KL divergence from the unscaled "
        "model at each scale.",
    ),
    "atlas_figure": (
        "heatmap_atlas_gain.png",
        "Gain atlas: the max_attn gain of every head (temperature rescaling); the target and "
        "control are outlined.",
    ),
}
GATE_TITLES = {
    "baseline_sanity": "baseline sanity (scale 1.0 changes nothing)",
    "isolation": "isolation (only the target head's query changes)",
    "temperature_identity": "temperature identity (softmax(s·z) of the baseline logits)",
    "atlas_vs_sweep": "atlas vs sweep (two computations of the same means agree)",
}
METRIC_WORDS = {
    "max_attn": "max attention",
    "entropy": "attention entropy",
    "k_eff": "k_eff (effective number of keys)",
}


# -- numbers as text -----------------------------------------------------------------------------
def num(value: Any, digits: int = 3) -> str:
    """A number at ``digits`` significant digits, without a float's full repr: fixed notation for
    everyday magnitudes, scientific for very small or large ones; "n/a" for a missing value."""
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 1e-3 or magnitude >= 1e5:
        mantissa, exponent = f"{value:.{max(digits - 1, 0)}e}".split("e")
        return f"{mantissa}e{int(exponent)}".replace("-", "−")
    decimals = max(digits - 1 - math.floor(math.log10(magnitude)), 0)
    return f"{value:.{decimals}f}".replace("-", "−")


def ratio_text(value: Any) -> str:
    """A gain ratio: two decimals (the verdict table's thresholds are 0.67, 1.5 and 2)."""
    if value is None or not math.isfinite(float(value)):
        return num(value)
    value = float(value)
    return f"{value:.2f}".replace("-", "−") if abs(value) < 100 else num(value)


def head_name(head: Mapping[str, Any]) -> str:
    return f"L{int(head['layer'])} H{int(head['head'])}"


def band(ratio: float) -> int:
    """Index into :data:`BANDS` of a ratio (the original project's table; upper thresholds
    inclusive)."""
    if ratio >= THRESHOLDS[2]:
        return 3
    if ratio >= THRESHOLDS[1]:
        return 2
    if ratio > THRESHOLDS[0]:
        return 1
    return 0


# -- the page as blocks ----------------------------------------------------------------------------
@dataclass
class Block:
    kind: str  # h1, h2, p, answer, table, ul, figure
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)  # table: first row is the header
    items: list[str] = field(default_factory=list)
    path: str = ""  # figure: the PNG
    css: str = ""


@dataclass
class Page:
    title: str
    question: str
    answer: str
    blocks: list[Block]
    caveats: list[str]


@dataclass
class Settings:
    """What the configuration says about the run (params of the rule)."""

    select: str = "explicit"
    model: str = ""
    demo_model: bool = False
    run_name: str = ""


def _gate_rows(checks: Iterable[Mapping[str, Any]]) -> tuple[list[list[str]], list[str]]:
    rows = [["gate", "head", "result", "max deviation", "tolerance"]]
    failed = []
    for report in checks:
        name = str(report.get("check", "?"))
        if "layer" in report:
            subject = f"{head_name(report)} ({report.get('role', '')})".replace(" ()", "")
        else:
            subject = ", ".join(h.replace("_", " ") for h in report.get("heads") or []) or "—"
        passed = bool(report.get("passed"))
        rows.append(
            [
                GATE_TITLES.get(name, name),
                subject,
                "passed" if passed else "FAILED",
                num(report.get("max_deviation"), 2),
                num(report.get("tolerance"), 2),
            ]
        )
        if not passed:
            reason = f": {report['reason']}" if report.get("reason") else ""
            failed.append(
                f"{name} for {subject} (deviation {num(report.get('max_deviation'), 2)} > "
                f"tolerance {num(report.get('tolerance'), 2)}){reason}"
            )
    return rows, failed


def _selection_text(
    settings: Settings,
    verdict: Mapping[str, Any],
    selection: Sequence[Mapping[str, Any]] | None,
    correlations: pd.DataFrame | None,
) -> str:
    target, control = head_name(verdict["target"]), head_name(verdict["control"])

    def rho(head: Mapping[str, Any]) -> float | None:
        for entry in selection or ():
            if (entry["layer"], entry["head"]) == (head["layer"], head["head"]):
                return entry.get("spearman_rho")
        if correlations is not None and "spearman_qn_entropy" in correlations:
            match = correlations[
                (correlations["layer"] == head["layer"]) & (correlations["head"] == head["head"])
            ]
            if len(match):
                return float(match["spearman_qn_entropy"].iloc[0])
        return None

    rho_t, rho_c = rho(verdict["target"]), rho(verdict["control"])
    if settings.select == "auto":
        text = (
            f"Chosen by select: auto from the capture: the target {target} is the head whose "
            f"query norm and attention entropy are most strongly rank-correlated "
            f"(Spearman ρ = {num(rho_t, 2)}), the control {control} the head of the same layer "
            f"with the weakest correlation (ρ = {num(rho_c, 2)})."
        )
    else:
        text = f"Named in the configuration (intervention.heads, select: {settings.select})."
        if rho_t is not None and rho_c is not None:
            text += (
                f" Their Spearman ρ(query norm, entropy) over the capture: {num(rho_t, 2)} for "
                f"the target, {num(rho_c, 2)} for the control."
            )
    return text


def _trend_rows(trends: pd.DataFrame) -> list[list[str]]:
    rows = [
        [
            "head",
            "metric",
            "expected",
            "observed",
            "Spearman ρ vs s",
            "min s → max s",
            "as expected",
        ]
    ]
    for row in _ordered(trends).itertuples():
        rows.append(
            [
                f"{head_name({'layer': row.layer, 'head': row.head})} ({row.role})",
                METRIC_WORDS.get(row.metric, row.metric),
                str(row.expected),
                str(row.observed),
                num(row.spearman_rho, 2),
                f"{num(row.first_scale_mean)} → {num(row.last_scale_mean)}",
                "yes" if bool(row.as_expected) else "no",
            ]
        )
    return rows


def _role_order(role: str) -> int:
    return {"target": 0, "control": 1}.get(role, 2)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Target first, then control; max_attn (the verdict's metric), entropy, k_eff."""
    metric_order = {metric: i for i, metric in enumerate(METRIC_WORDS)}
    return frame.assign(
        _role=frame["role"].map(_role_order),
        _metric=frame["metric"].map(lambda m: metric_order.get(m, len(metric_order))),
    ).sort_values(["_role", "layer", "head", "_metric"], kind="stable")


def _gain_rows(gains: pd.DataFrame) -> list[list[str]]:
    rows = [["head", "metric", "gain per unit ln s", "95% CI", "R²"]]
    for row in _ordered(gains).itertuples():
        rows.append(
            [
                f"{head_name({'layer': row.layer, 'head': row.head})} ({row.role})",
                METRIC_WORDS.get(row.metric, row.metric),
                num(row.slope),
                f"{num(row.ci_low)} to {num(row.ci_high)}",
                num(row.r2, 2),
            ]
        )
    return rows


def _cost_rows(sweep: pd.DataFrame) -> list[list[str]]:
    """Mean loss and KL per scale and head, with the loss change from scale 1."""
    rows = [
        ["head", "scale s", "loss (nats/token)", "Δ loss vs s = 1", "KL from unscaled (nats/token)"]
    ]
    means = sweep.groupby(["role", "layer", "head", "scale"], sort=True)[["loss", "kl"]].mean()
    means = means.reset_index()
    means["order"] = means["role"].map(_role_order)
    for (_, role, layer, head), group in means.groupby(["order", "role", "layer", "head"]):
        base = group.loc[(group["scale"] - 1.0).abs() < 1e-9, "loss"]
        for row in group.itertuples():
            delta = row.loss - float(base.iloc[0]) if len(base) else float("nan")
            rows.append(
                [
                    f"L{layer} H{head} ({role})",
                    f"{row.scale:g}",
                    num(row.loss, 4),
                    ("+" if delta > 0 else "") + num(delta, 2),
                    num(row.kl, 2),
                ]
            )
    return rows


def _caveats(
    verdict: Mapping[str, Any],
    settings: Settings,
    n_samples: int | None,
    failed_gates: list[str],
) -> list[str]:
    caveats = []
    low, high = verdict.get("ratio_ci_low"), verdict.get("ratio_ci_high")
    if failed_gates:
        caveats.append(
            "A gate failed, so the intervention cannot be trusted and the gain ratio is not a "
            "verdict: " + "; ".join(failed_gates) + "."
        )
    if verdict.get("failure_criterion_met"):
        caveats.append(
            "The original project's failure criterion is met: the target is not monotonic while "
            "the control stays flat, so the correlation between query norm and entropy is likely "
            "epiphenomenal."
        )
    elif not verdict.get("target_monotonic", True):
        caveats.append(
            "The target's max_attn or entropy does not change monotonically with the scale: a "
            "straight-line gain summarises it poorly."
        )
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        crossed = [t for t in THRESHOLDS if low < t < high]
        for threshold in crossed:
            caveats.append(
                f"The ratio's 95% CI ({ratio_text(low)} to {ratio_text(high)}) straddles the "
                f"verdict threshold {ratio_text(threshold)}: the data do not decide between "
                f"“{BANDS[band(threshold) - 1]}” and “{BANDS[band(threshold)]}”."
            )
    if verdict.get("control_flat"):
        caveats.append(
            "The control is flat (the 95% CI of its max_attn gain contains 0): the ratio divides "
            "by a gain indistinguishable from zero, so its size and sign are unstable; read the "
            "two gains themselves."
        )
    elif "control_flat" in verdict:
        caveats.append(
            "The control is not flat (the 95% CI of its max_attn gain excludes 0): it responds to "
            "its query's scale too, so the ratio compares two responsive heads rather than one "
            "against a baseline."
        )
    gain_control = verdict.get("gain_control")
    if gain_control is not None and gain_control < 0 < verdict.get("gain_target", 0):
        caveats.append(
            "The control's max_attn gain is negative: a negative ratio means opposite directions, "
            "not a weaker target."
        )
    if n_samples is not None and n_samples < FEW_SAMPLES:
        caveats.append(
            f"Few samples: {n_samples} sequences per scale (fewer than {FEW_SAMPLES}); the CI "
            "rests on a small bootstrap population."
        )
    if settings.demo_model:
        caveats.append(
            "Demo model: a small model trained for a few hundred steps on the offline demo "
            "corpus. The numbers exercise the pipeline; they say nothing about real LLMs."
        )
    return caveats


def answer_sentence(verdict: Mapping[str, Any], failed_gates: Sequence[str] = ()) -> str:
    """The answer in one sentence: the verdict band, the ratio and its 95% CI."""
    ratio = verdict.get("gain_ratio")
    low, high = verdict.get("ratio_ci_low"), verdict.get("ratio_ci_high")
    numbers = (
        f"the target's max_attn gain is {ratio_text(ratio)}× the control's "
        f"(95% CI {ratio_text(low)} to {ratio_text(high)})"
    )
    if failed_gates:
        names = ", ".join(failed_gates)
        return f"No verdict: a gate failed ({names}), so {numbers} cannot be trusted."
    if ratio is None or not math.isfinite(float(ratio)):
        return "No verdict: the gain ratio is undefined (the control's gain is zero)."
    which = BANDS[band(float(ratio))]
    sentence = f"{which[0].upper()}{which[1:]}: {numbers}."
    if verdict.get("failure_criterion_met"):
        sentence = (
            "Failure criterion met — the target is not monotonic while the control stays flat, "
            f"so the query-norm correlation is likely epiphenomenal; {numbers}."
        )
    return sentence


def build(
    verdict: Mapping[str, Any],
    *,
    settings: Settings | None = None,
    gains: pd.DataFrame | None = None,
    trends: pd.DataFrame | None = None,
    checks: Sequence[Mapping[str, Any]] = (),
    sweep: pd.DataFrame | None = None,
    atlas: pd.DataFrame | None = None,
    selection: Sequence[Mapping[str, Any]] | None = None,
    correlations: pd.DataFrame | None = None,
    figures: Mapping[str, str | Path] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Page:
    """The verdict page's content. ``verdict``: verdict.json; ``gains``: gain_summary.csv;
    ``trends``: the heads' trend_analysis.csv; ``checks``: every gate report; ``sweep``: the sweep
    tables; ``atlas``: atlas_gain.csv; ``selection``: selected_heads.json's heads (select: auto);
    ``correlations``: the head summary (spearman_qn_entropy); ``figures``: :data:`KEY_FIGURES`'
    names to PNG paths; ``provenance``: the sweeps' record (:mod:`spectra_attn.provenance`)."""
    settings = settings or Settings()
    target, control = head_name(verdict["target"]), head_name(verdict["control"])
    model = f" of {settings.model}" if settings.model else ""
    question = (
        f"Is the attention sharpness (max attention) of the target head {target}{model} more "
        f"sensitive to the magnitude of its query than that of the control head {control}?"
    )
    gate_rows, failed = _gate_rows(checks)
    answer = answer_sentence(verdict, [f.split(" (deviation")[0] for f in failed])
    n_samples = int(sweep["sample_id"].nunique()) if sweep is not None and len(sweep) else None
    blocks: list[Block] = []

    facts = [
        f"Gain ratio target/control: {ratio_text(verdict.get('gain_ratio'))} (95% bootstrap CI "
        f"{ratio_text(verdict.get('ratio_ci_low'))} to {ratio_text(verdict.get('ratio_ci_high'))},"
        f" {int(verdict.get('bootstrap_samples', 0))} resamples of the samples, seed "
        f"{verdict.get('bootstrap_seed', 'n/a')}).",
        f"max_attn gain (d max_attn / d ln s): target {num(verdict.get('gain_target'))}, control "
        f"{num(verdict.get('gain_control'))}.",
        "Verdict table: ≥ 2.0 strong evidence of head-specific exploitation; ≥ 1.5 the target is "
        "more sensitive; between 0.67 and 1.5 no functional distinction; ≤ 0.67 the control is "
        "more sensitive.",
    ]
    if n_samples is not None:
        scales = sorted(float(s) for s in sweep["scale"].unique())
        facts.append(
            f"{n_samples} sequences per head at {len(scales)} query scales "
            f"({', '.join(f'{s:g}' for s in scales)})."
        )
    blocks.append(Block("ul", items=facts))

    blocks.append(Block("h2", "Target and control"))
    blocks.append(
        Block(
            "p",
            f"Target {target}, control {control}. "
            + _selection_text(settings, verdict, selection, correlations),
        )
    )

    blocks.append(Block("h2", "Gates"))
    if len(gate_rows) > 1:
        blocks.append(
            Block(
                "p",
                "Each gate must pass before the gain analysis runs; a deviation is the largest "
                "relative difference measured, the tolerance the largest accepted for the dtype.",
            )
        )
        blocks.append(Block("table", rows=gate_rows))
    else:
        blocks.append(Block("p", "No gate report was given to this page."))

    if trends is not None and len(trends):
        blocks.append(Block("h2", "Expected and observed direction"))
        blocks.append(
            Block(
                "p",
                "Scaling a query up sharpens its head's attention if magnitude controls "
                "sharpness: max attention should rise, entropy and k_eff fall. Monotonic means "
                "every step between adjacent scales goes the same way.",
            )
        )
        blocks.append(Block("table", rows=_trend_rows(trends)))
    if gains is not None and len(gains):
        blocks.append(Block("h2", "Gains"))
        blocks.append(Block("table", rows=_gain_rows(gains)))

    if sweep is not None and {"loss", "kl"} <= set(sweep.columns):
        blocks.append(Block("h2", "Downstream cost"))
        blocks.append(
            Block(
                "p",
                "What the intervention costs the model's predictions: the mean next-token loss "
                "and the KL divergence of the output distribution from the unscaled model's.",
            )
        )
        blocks.append(Block("table", rows=_cost_rows(sweep)))

    if atlas is not None and len(atlas) and "percentile_max_attn" in atlas:
        blocks.append(Block("h2", "Place in the gain atlas"))
        blocks.append(Block("p", _atlas_text(verdict, atlas)))

    figures = figures or {}
    shown = [(name, figures[name]) for name in KEY_FIGURES if figures.get(name)]
    if shown:
        blocks.append(Block("h2", "Key figures"))
        for name, path in shown:
            blocks.append(Block("figure", KEY_FIGURES[name][1], path=str(path)))

    caveats = _caveats(verdict, settings, n_samples, failed)
    if not provenance:
        caveats.append(
            "No provenance: the sweeps do not record which model, corpus and configuration made "
            "them (or they disagree), so this result cannot be traced to its inputs."
        )
    else:
        blocks.append(Block("h2", "Provenance"))
        rows = [["item", "value"], *([label, text] for label, text in summary_rows(provenance))]
        blocks.append(Block("table", rows=rows))
    title = f"Spectra verdict: {target} vs {control}"
    if settings.run_name:
        title += f" (run {settings.run_name})"
    return Page(title, question, answer, blocks, caveats)


def _atlas_text(verdict: Mapping[str, Any], atlas: pd.DataFrame) -> str:
    by_head = atlas.set_index(["layer", "head"])
    parts = []
    for role in ("target", "control"):
        key = (int(verdict[role]["layer"]), int(verdict[role]["head"]))
        if key not in by_head.index:
            continue
        row = by_head.loc[key]
        rank = int((atlas["gain_max_attn"] > row["gain_max_attn"]).sum()) + 1
        parts.append(
            f"the {role} {head_name(verdict[role])} has max_attn gain {num(row['gain_max_attn'])}, "
            f"rank {rank} of {len(atlas)} heads (percentile {num(row['percentile_max_attn'], 3)})"
        )
    median = float(atlas["gain_max_attn"].median())
    return (
        "Among every head of the model (temperature rescaling of the capture): "
        + "; ".join(parts)
        + f". The median head's gain is {num(median)}."
    )


# -- rendering -----------------------------------------------------------------------------------
CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; max-width: 980px; margin: 2em auto;
  padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.3em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
p.question { font-size: 1.05em; color: #444; }
p.answer { font-size: 1.2em; font-weight: bold; padding: 0.6em 0.8em; background: #eef4fb;
  border-left: 5px solid #2a6ebb; }
div.caveats { background: #fff6e5; border-left: 5px solid #d98c00; padding: 0.3em 1em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.failed { color: #b00020; font-weight: bold; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
"""


def _html_table(rows: list[list[str]]) -> str:
    header, *body = rows
    out = ["<table><thead><tr>"]
    out += [f"<th>{html.escape(cell)}</th>" for cell in header]
    out.append("</tr></thead><tbody>")
    for row in body:
        cells = "".join(
            f'<td class="failed">{html.escape(c)}</td>'
            if c == "FAILED"
            else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _data_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(page: Page, embed: bool = True) -> str:
    """A self-contained HTML page (figures embedded as data URIs when ``embed``, else linked by
    file name, for a page beside them); every text escaped; no script."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>{e(page.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(page.title)}</h1>",
        f'<p class="question" id="question"><b>Question.</b> {e(page.question)}</p>',
        f'<p class="answer" id="answer">{e(page.answer)}</p>',
    ]
    if page.caveats:
        out.append('<div class="caveats" id="caveats"><h2>Caveats</h2><ul>')
        out += [f"<li>{e(c)}</li>" for c in page.caveats]
        out.append("</ul></div>")
    for block in page.blocks:
        if block.kind in ("h1", "h2"):
            out.append(f"<{block.kind}>{e(block.text)}</{block.kind}>")
        elif block.kind == "p":
            out.append(f"<p>{e(block.text)}</p>")
        elif block.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block.items) + "</ul>")
        elif block.kind == "table":
            out.append(_html_table(block.rows))
        elif block.kind == "figure":
            source = _data_uri(block.path) if embed else Path(block.path).name
            out.append(
                f'<figure><img src="{e(source)}" alt="{e(Path(block.path).stem)}"/>'
                f"<figcaption>{e(block.text)}</figcaption></figure>"
            )
        else:
            raise ValueError(f"unknown block kind {block.kind!r}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(page: Page) -> str:
    """The same content as Markdown (GitHub-flavoured tables); figures linked by file name, for a
    file beside them."""
    out = [f"# {page.title}", "", f"**Question.** {page.question}", "", f"**{page.answer}**", ""]
    if page.caveats:
        out += ["## Caveats", ""] + [f"- {c}" for c in page.caveats] + [""]
    for block in page.blocks:
        if block.kind == "h1":
            out += [f"# {block.text}", ""]
        elif block.kind == "h2":
            out += [f"## {block.text}", ""]
        elif block.kind == "p":
            out += [block.text, ""]
        elif block.kind == "ul":
            out += [f"- {i}" for i in block.items] + [""]
        elif block.kind == "table":
            header, *body = block.rows
            out.append("| " + " | ".join(_md_cell(c) for c in header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
            out.append("")
        elif block.kind == "figure":
            name = Path(block.path).name
            out += [f"![{Path(block.path).stem}]({name})", "", f"*{block.text}*", ""]
        else:
            raise ValueError(f"unknown block kind {block.kind!r}")
    return "\n".join(out).rstrip() + "\n"
