"""The verdict page against hand-made verdict.json cases: each band of the verdict table, the
failure criterion, a gate that failed upstream, a CI across a threshold; no raw dicts or long
floats; HTML and Markdown say the same."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from spectra_attn.analysis import verdict as page
from spectra_attn.analysis.gain import verdict_text
from spectra_attn.model.intervention import trend_analysis
from tests.test_plots import make_atlas, make_gain, make_head_summary, make_sweep


def make_verdict(ratio: float, low: float, high: float, **extra) -> dict:
    """A verdict.json as spectra_attn.analysis.gain.verdict writes it."""
    result = {
        "target": {"layer": 1, "head": 2},
        "control": {"layer": 1, "head": 0},
        "gain_target": 0.04481234567891234,
        "gain_control": 0.04481234567891234 / ratio,
        "gain_ratio": ratio,
        "ratio_ci_low": low,
        "ratio_ci_high": high,
        "bootstrap_samples": 2000,
        "bootstrap_seed": 0,
        "target_monotonic": True,
        "control_flat": False,
        "failure_criterion_met": False,
        "verdict": verdict_text(ratio),
        "target_percentile": 87.5,
        "heads_in_atlas": 8,
    }
    return result | extra


def gate(check: str, passed: bool = True, deviation: float = 3.2e-7, **extra) -> dict:
    return {
        "check": check,
        "layer": 1,
        "head": 2,
        "role": "target",
        "passed": passed,
        "tolerance": 1e-05,
        "max_deviation": deviation,
        "deviations": {"x": deviation},
        **extra,
    }


GATES = [gate("baseline_sanity"), gate("isolation"), gate("temperature_identity")]


def full_page(verdict: dict, **overrides) -> page.Page:
    sweep = make_sweep()
    arguments = {
        "settings": page.Settings(select="explicit", model="org/model", run_name="demo"),
        "gains": make_gain(sweep),
        "trends": trend_analysis(sweep),
        "checks": GATES,
        "sweep": sweep,
        "atlas": make_atlas(),
        "correlations": make_head_summary(),
    }
    return page.build(verdict, **(arguments | overrides))


@pytest.mark.parametrize(
    ("ratio", "low", "high", "words"),
    [
        (2.4, 2.1, 2.9, "Strong evidence of head-specific exploitation"),
        (1.7, 1.55, 1.9, "The target is more sensitive"),
        (1.02, 0.8, 1.3, "No functional distinction"),
        (0.45, 0.3, 0.6, "The control is more sensitive"),
    ],
)
def test_each_band_gives_its_answer(ratio, low, high, words):
    content = full_page(make_verdict(ratio, low, high))
    assert content.answer.startswith(words)
    assert f"{ratio:.2f}× the control's (95% CI {low:.2f} to {high:.2f})" in content.answer
    assert not any("straddles" in c for c in content.caveats)


@pytest.mark.parametrize("ratio", [0.1, 1 / 1.5, 0.67, 1.0, 1.4999, 1.5, 1.99, 2.0, 7.0, -1.0])
def test_bands_agree_with_the_workflows_verdict_table(ratio):
    prefixes = ("≤ 0.67", "≈ 1.0", "≥ 1.5", "≥ 2.0")
    assert verdict_text(ratio).startswith(prefixes[page.band(ratio)])


def test_answer_precision_and_question():
    content = full_page(make_verdict(0.4484050926620272, 0.2112345678, 0.7798765432))
    assert "0.45× the control's (95% CI 0.21 to 0.78)" in content.answer
    assert content.question.startswith("Is the attention sharpness")
    assert "L1 H2" in content.question and "L1 H0" in content.question
    assert "org/model" in content.question


@pytest.mark.parametrize(
    ("low", "high", "threshold"),
    [(1.3, 1.8, "1.50"), (0.5, 0.9, "0.67"), (1.8, 2.6, "2.00")],
)
def test_ci_across_a_threshold_is_a_caveat(low, high, threshold):
    content = full_page(make_verdict((low + high) / 2, low, high))
    straddles = [c for c in content.caveats if "straddles" in c]
    assert len(straddles) == 1 and f"threshold {threshold}" in straddles[0]


def test_ci_across_two_thresholds_names_both():
    content = full_page(make_verdict(1.4, 0.5, 2.5))
    straddles = [c for c in content.caveats if "straddles" in c]
    assert len(straddles) == 3


def test_failure_criterion_met():
    verdict = make_verdict(
        0.9, 0.5, 1.4, failure_criterion_met=True, target_monotonic=False, control_flat=True
    )
    content = full_page(verdict)
    assert content.answer.startswith("Failure criterion met")
    assert any("failure criterion is met" in c for c in content.caveats)
    assert any("control is flat" in c for c in content.caveats)


def test_gate_failed_upstream_gives_no_verdict():
    checks = [*GATES[:2], gate("temperature_identity", passed=False, deviation=0.031)]
    content = full_page(make_verdict(2.4, 2.1, 2.9), checks=checks)
    assert content.answer.startswith("No verdict: a gate failed (temperature_identity for L1 H2")
    assert any("0.031 > tolerance 1.0e−5" in c for c in content.caveats)
    html = page.to_html(content)
    assert '<td class="failed">FAILED</td>' in html


def test_control_not_flat_few_samples_and_demo_model():
    content = full_page(
        make_verdict(1.7, 1.55, 1.9), settings=page.Settings(model="m", demo_model=True)
    )
    joined = " ".join(content.caveats)
    assert "control is not flat" in joined
    assert "Few samples: 5 sequences" in joined  # make_sweep has 5 samples
    assert "Demo model" in joined


def test_selection_auto_names_the_correlation():
    selection = [
        {"layer": 1, "head": 2, "role": "target", "spearman_rho": -0.6234567},
        {"layer": 1, "head": 0, "role": "control", "spearman_rho": 0.0312345},
    ]
    content = full_page(
        make_verdict(2.4, 2.1, 2.9), settings=page.Settings(select="auto"), selection=selection
    )
    text = page.to_markdown(content)
    assert "select: auto" in text and "ρ = −0.62" in text and "ρ = 0.031" in text


def test_no_raw_dicts_or_long_floats():
    verdict = make_verdict(0.4484050926620272, 0.2112345678, 0.7798765432)
    provenance = {"spectra_version": "0.1.0", "model": {"sha256": "ab" * 32}, "x": 0.1234567891}
    content = full_page(verdict, provenance=provenance)
    for text in (page.to_html(content, embed=False), page.to_markdown(content)):
        assert not re.search(r"\d\.\d{7,}", text), re.search(r"\d\.\d{7,}", text)
        assert "{'" not in text and "{&#x27;" not in text
        assert "True" not in text and "False" not in text
        assert "provenance" not in text or "model.sha256" in text


def test_html_is_well_formed_and_matches_markdown(tmp_path):
    png = tmp_path / "gain_comparison.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    content = full_page(make_verdict(2.4, 2.1, 2.9), figures={"comparison": png})
    html = page.to_html(content)
    root = ET.fromstring(html.removeprefix("<!DOCTYPE html>\n"))
    answer = root.find(".//p[@id='answer']")
    assert answer is not None and answer.text == content.answer
    assert "data:image/png;base64," in html and "<script" not in html
    markdown = page.to_markdown(content)
    assert f"**{content.answer}**" in markdown
    assert "![gain_comparison](gain_comparison.png)" in markdown
    # every table row of the HTML is in the Markdown
    for block in content.blocks:
        for row in block.rows:
            assert "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" in markdown


def test_downstream_cost_and_trends_tables():
    content = full_page(make_verdict(2.4, 2.1, 2.9))
    tables = {b.rows[0][0]: b.rows for b in content.blocks if b.kind == "table"}
    markdown = page.to_markdown(content)
    assert "## Downstream cost" in markdown and "## Expected and observed direction" in markdown
    cost = next(b.rows for b in content.blocks if b.kind == "table" and "KL" in b.rows[0][-1])
    assert len(cost) == 1 + 2 * 3  # two heads × three scales
    at_one = [row for row in cost[1:] if row[1] == "1"]
    assert [row[3] for row in at_one] == ["0", "0"]
    assert "gate" in tables


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.4484050926620272, "0.448"),
        (12.3456, "12.3"),
        (1234.5678, "1235"),
        (-0.0000123, "−1.23e−5"),
        (3.2e-07, "3.20e−7"),
        (float("nan"), "n/a"),
        (None, "n/a"),
        (0.0, "0"),
    ],
)
def test_num(value, text):
    assert page.num(value) == text


def test_atlas_text_ranks_the_target():
    atlas = make_atlas()
    content = full_page(make_verdict(2.4, 2.1, 2.9), atlas=atlas)
    text = next(b.text for b in content.blocks if b.text.startswith("Among every head"))
    gains = atlas.set_index(["layer", "head"])["gain_max_attn"]
    rank = int((atlas["gain_max_attn"] > gains.loc[(1, 2)]).sum()) + 1
    assert f"rank {rank} of {len(atlas)} heads" in text
    assert np.isfinite(gains.loc[(1, 2)])
    assert isinstance(pd.DataFrame, type)
