"""A real browser (Debian's chromium through Playwright) runs a generation and finds Inspect's heatmap drawn.

Screenshots of every tab go to test-artifacts/ so a person can look at what the page shows; readme.png is the
first screen after a run, the picture README opens with (copied to docs/images/page.png).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.examples import EXAMPLES
from app.state import default_method
from benchmarks.app_harness import CHROMIUM, CHROMIUM_ARGS

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: apt-get install -y chromium"),
]


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    if os.environ.get("TOKENBUTLER_APP_URL"):  # an app already running (debugging the page)
        yield os.environ["TOKENBUTLER_APP_URL"]
        return
    from app.serve import start_local

    demo, url = start_local()
    yield url
    demo.close()


@pytest.fixture(scope="module")
def page(page_url: str):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(page_url)
        yield page
        browser.close()


def _pick(page, elem_id: str, option: str) -> None:
    """Choose a value in a gradio dropdown by typing it and clicking the matching option."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _shot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _scrolls(legend) -> bool:
    """Whether a plotly legend scrolls: it draws a scroll bar of non-zero height."""
    bars = legend.locator(".scrollbar")
    return any((box := bars.nth(i).bounding_box()) and box["height"] > 0 for i in range(bars.count()))


def test_bad_input_shows_a_message_not_a_trace(page) -> None:
    page.locator("#prompt textarea").fill("   ")
    page.locator("#generate-btn").click()
    toast = page.locator(".toast-body", has_text="empty")
    toast.first.wait_for()
    assert "Traceback" not in page.locator("body").inner_text()
    page.reload()  # a fresh page for the next test, without the toast


def test_generate_then_inspect_draws_heatmaps(page) -> None:
    page.locator("#prompt textarea").fill(EXAMPLES[0].prompt)
    _pick(page, "method", default_method())
    max_new = page.locator("#max-new input[type=number]")
    max_new.fill("8")
    max_new.press("Enter")
    page.locator("#generate-btn").click()
    page.locator("#prompt-view .tb-prompt").wait_for()  # the last update of a run colours the prompt
    assert page.locator("#dense-out textarea").input_value().strip()
    assert "done" in page.locator("#run-stats").inner_text()
    _shot(page, "generate")
    page.evaluate("window.scrollTo(0, 0)")
    assert _shot(page, "readme", full_page=False).stat().st_size > 10_000

    page.get_by_role("tab", name="Inspect").click()
    heatmaps = page.locator("#step-fig g.hm image")
    heatmaps.first.wait_for()
    assert heatmaps.count() >= 2  # true attention plus the method's scores or kept rows
    assert page.locator("#grid-fig g.hm image").count() == 2
    assert _shot(page, "inspect").stat().st_size > 10_000


def test_other_tabs_render(page) -> None:
    page.get_by_role("tab", name="Budgets").click()
    page.wait_for_timeout(500)
    report = page.locator("#eval-report")
    assert "The full evaluation report" in report.inner_text() and "| policy |" not in page.locator("body").inner_text()
    lead = page.locator("#budgets-lead .js-plotly-plot")
    lead.first.wait_for(timeout=30_000)
    assert lead.count() == 2  # quality at equal bytes, then speed against context
    assert "equal bytes" in lead.nth(0).inner_text() and "CPU, 1 thread" in lead.nth(1).inner_text()
    assert not page.locator("#budgets-shipped .js-plotly-plot").first.is_visible()  # the other figures are folded
    _shot(page, "budgets")
    page.locator("#budgets-shipped").get_by_text("Every other figure").click()
    folded = page.locator("#budgets-shipped .js-plotly-plot")
    folded.first.wait_for(timeout=30_000)
    assert folded.count() >= 4
    page.wait_for_timeout(1000)
    for plot in [*(lead.nth(i) for i in range(2)), *(folded.nth(i) for i in range(folded.count()))]:
        assert not _scrolls(plot.locator(".legend"))  # every legend fits in rows below its plot
    _shot(page, "budgets-all-figures")
    for tab, name in (("ShadowLLM", "shadow"), ("About", "about")):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(500)
        _shot(page, name)
    assert "Methods" in page.locator("body").inner_text()

