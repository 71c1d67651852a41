"""The page's own run statistics on a long prompt, read in a real browser (issue 30's page goal).

Starts the page in this process, opens it in Debian's chromium through Playwright, types a prompt of
--prompt-tokens tokens (filler text, chat-templated length), picks the method and budget, presses Generate
and waits for the run to finish. The page decodes the method and then dense from the same prefill,
both untraced, and its "Run statistics" table shows each one's decode tokens/s; this script reads that
table, writes it to --out (default assets/results/page_speed.json) and saves a screenshot of the page
beside the other browser screenshots, test-artifacts/<the JSON's name>.png.

    python benchmarks/page_speed_browser.py [--prompt-tokens 4096] [--method tokenbutler] [--ratio 0.1]
        [--new-tokens 64] [--threads N] [--out JSON]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from app_harness import CHROMIUM, CHROMIUM_ARGS, RESULTS, app_url, write_json
from bench_app_latency import prompt_of_length

from app.state import decode_threads
from core.models import DEFAULT_MODEL, load

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def stats_rows(text: str) -> dict[str, list[str]]:
    """The run-statistics table as rendered text: row name -> its cells (one per run)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"\t+", line) if c.strip()]
        if len(cells) > 1:
            rows[cells[0]] = cells[1:]
    return rows


def run_page(url: str, prompt: str, method: str, ratio: float, new_tokens: int, timeout_s: int, shot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url)
        page.locator("#prompt textarea").fill(prompt)
        page.locator("#method input").click()
        page.get_by_role("option", name=method, exact=True).click()
        for elem_id, value in (("budget-ratio", ratio), ("max-new", new_tokens)):
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
        page.locator("#generate-btn").click()
        page.locator("#prompt-view .tb-prompt").wait_for()  # the last update of a run colours the prompt
        stats = page.locator("#run-stats")
        stats.scroll_into_view_if_needed()
        text = stats.inner_text()
        shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    rows = stats_rows(text)
    labels, rates = rows.get("", []), rows["decode tokens / s (untraced)"]
    return {"stats_text": text, "runs": dict(zip(labels or [method, "dense"], map(float, rates), strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--method", default="tokenbutler")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=decode_threads(), help="default: the page's own count")
    parser.add_argument("--url", default=None, help="a page already running (default: start one here)")
    parser.add_argument("--timeout-s", type=int, default=900)
    parser.add_argument("--out", type=Path, default=RESULTS / "page_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shot = ARTIFACTS / f"{args.out.stem}.png"
    prompt = prompt_of_length(load(DEFAULT_MODEL), args.prompt_tokens)
    with app_url(args.url) as url:
        result = run_page(url, prompt, args.method, args.ratio, args.new_tokens, args.timeout_s, shot)
    rates = list(result["runs"].values())
    print(result["stats_text"])
    print(f"\n{args.method}@{args.ratio:.0%} / dense, decode tokens/s on the page: {rates[0] / rates[1]:.2f}x "
          f"({args.prompt_tokens}-token prompt, {args.threads} thread(s)); screenshot {shot}")
    path = write_json("page_speed.json", {"prompt_tokens": args.prompt_tokens, "method": args.method,
                                          "ratio": args.ratio, "new_tokens": args.new_tokens, **result,
                                          "speedup": rates[0] / rates[1]}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
