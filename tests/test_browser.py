"""The verdict page in a headless Chromium: the verdict sentence is on the rendered page, its
figures load, and no script error or console message appears (skipped without Chromium)."""

from __future__ import annotations

import html
import re

from spectra_attn.analysis import plots
from spectra_attn.analysis import verdict as page
from tests.browser import open_page
from tests.test_plots import make_atlas, make_gain, make_sweep
from tests.test_verdict import full_page, make_verdict


def test_verdict_page_reads_in_a_browser(tmp_path):
    sweep = make_sweep()
    plots.plot_gain_comparison(make_gain(sweep), tmp_path / "gain_comparison")
    plots.plot_heatmap(make_atlas(), "gain_max_attn", tmp_path / "heatmap_atlas_gain", "Gain atlas")
    figures = {
        "comparison": tmp_path / "gain_comparison.png",
        "atlas_figure": tmp_path / "heatmap_atlas_gain.png",
    }
    content = full_page(make_verdict(1.7, 1.3, 1.9), figures=figures)
    path = tmp_path / "verdict.html"
    path.write_text(page.to_html(content), encoding="utf-8")

    dom, console = open_page(path, screenshot=tmp_path / "verdict.png")
    assert console == []  # no script error, no message at all: the page has no script
    answer = re.search(r'<p class="answer" id="answer">(.*?)</p>', dom, re.S)
    assert answer and html.unescape(answer.group(1)) == content.answer
    assert content.answer.startswith("The target is more sensitive")
    assert "straddles the verdict threshold 1.50" in html.unescape(dom)
    assert dom.count('<img src="data:image/png;base64,') == 2
    assert (tmp_path / "verdict.png").stat().st_size > 10_000


def test_a_script_error_is_caught(tmp_path):
    """The check above fails on a page whose script throws."""
    path = tmp_path / "broken.html"
    path.write_text(
        '<!DOCTYPE html><html><body><p id="answer">x</p>'
        "<script>notDefinedAnywhere();</script></body></html>"
    )
    _, console = open_page(path)
    assert len(console) == 1 and "Uncaught ReferenceError" in console[0]
