"""How fast the page answers on CPU, measured through gradio_client as a visitor sees it.

- first heatmap: submit -> the first streamed update carrying Inspect's heatmap, for a prompt of
  --prompt-tokens tokens (goal <= 3 s at 512); the page decodes untraced first and then replays the
  steps traced for Inspect, so the heatmap comes after the method's whole run;
- streaming rate: tokens/s the page streams (untraced), against plain dense generation
  (core.decode.generate, no trace, no page) in the same process on the same prompt (goal >= 70%).

Every page run but one gets a prompt of its own (the same length, another stretch of text), so it pays
its prefill as a new visitor does; the "switch" row runs the sparse method right after dense on the
same prompt, as a visitor switching method does: its prefill and dense reference are reused.

Prints a table and writes assets/results/app_latency.json.

    python benchmarks/bench_app_latency.py [--url URL] [--prompt-tokens 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from app_harness import app_url, write_json
from gradio_client import Client

from app.examples import FILLER
from app.state import default_method
from core.budget import Budget
from core.decode import GenerationConfig, encode_prompt, generate
from core.models import LoadedModel, load

GOAL_FIRST_HEATMAP_S = 3.0
GOAL_RATE_SHARE = 0.70
LAYER = 15


def prompt_of_length(lm: LoadedModel, tokens: int, variant: int = 0) -> str:
    """Filler text whose chat-templated encoding is `tokens` long (trimmed token by token); each `variant`
    starts at another point of the filler, so no two variants share a prefill."""
    filler = lm.tokenizer(FILLER * ((tokens + 7 * variant) // 20 + 4))["input_ids"][7 * variant :]
    keep = tokens
    for _ in range(8):
        text = lm.tokenizer.decode(filler[:keep]) + "\nSummarise the text above in detail."
        found = encode_prompt(lm, text).shape[1]
        if found == tokens:
            return text
        keep += tokens - found
    raise RuntimeError(f"could not build a {tokens}-token prompt (got {found})")


def stream(client: Client, prompt: str, method: str, new_tokens: int) -> dict:
    """Submit one generation; time the first token, the first heatmap and the method's streaming rate."""
    start = time.perf_counter()
    first_token = first_heatmap = None
    token_times: list[float] = []
    for update in client.submit(prompt, method, "ratio", 0.25, 64, new_tokens, 0.0, LAYER, api_name="/generate"):
        now = time.perf_counter() - start
        method_text, dense_text, step_fig = update[0], update[1], update[7]
        if first_heatmap is None and isinstance(step_fig, dict) and '"type":"heatmap"' in step_fig.get("plot", ""):
            first_heatmap = now
        if isinstance(method_text, str) and not isinstance(dense_text, str):  # a method token (dense skipped)
            first_token = first_token if first_token is not None else now
            token_times.append(now)
    return {"first_token_s": first_token, "first_heatmap_s": first_heatmap, "tokens": len(token_times),
            "tokens_per_s": rate(token_times)}


def rate(times: list[float]) -> float:
    """Tokens per second between the first and the last streamed token."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def plain_dense_rate(lm: LoadedModel, prompt: str, new_tokens: int) -> float:
    """The same measure on core.decode.generate alone: dense, no trace, no page."""
    config = GenerationConfig(max_new_tokens=new_tokens)
    start = time.perf_counter()
    times = [time.perf_counter() - start for _ in generate(lm, prompt, "dense", Budget.dense(), config)]
    return rate(times)


def measure(url: str, lm: LoadedModel, tokens: int, sparse: str, new_tokens: int, repeats: int) -> dict[str, list]:
    """Every row `repeats` times, interleaved so a busy neighbour slows every row alike; a new prompt for
    every cold run, the dense run's prompt again for the method switch."""
    client = Client(url, verbose=False)
    stream(client, prompt_of_length(lm, tokens, 99), "dense", 4)  # warm up the page and the model
    runs: dict[str, list[dict]] = {"plain": [], "dense": [], sparse: [], "switch": []}
    for repeat in range(repeats):
        dense_prompt, sparse_prompt = (prompt_of_length(lm, tokens, 2 * repeat + i) for i in (0, 1))
        runs["plain"].append({"tokens_per_s": plain_dense_rate(lm, dense_prompt, new_tokens)})
        runs["dense"].append(stream(client, dense_prompt, "dense", new_tokens))
        runs["switch"].append(stream(client, dense_prompt, sparse, new_tokens))
        runs[sparse].append(stream(client, sparse_prompt, sparse, new_tokens))
    return runs


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Median of every measure per row, and each page row's rate as a share of plain dense."""
    rows = {}
    for name, results in runs.items():
        keys = [key for key, value in results[0].items() if value is not None]
        rows[name] = {key: statistics.median(r[key] for r in results) for key in keys}
    baseline = rows["plain"]["tokens_per_s"]
    for name in rows.keys() - {"plain"}:
        rows[name]["share_of_plain_dense"] = rows[name]["tokens_per_s"] / baseline if baseline else 0.0
    return rows


def print_table(rows: dict[str, dict], sparse: str) -> None:
    labels = {"plain": "plain dense (core, no trace)", "dense": "page, dense, new prompt",
              sparse: f"page, {sparse}, new prompt",
              "switch": f"page, {sparse}, after dense on the same prompt (prefill and reference reused)"}
    print("| run | first token s | first heatmap s | tokens/s | share of plain dense |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        cells = [row.get(k) for k in ("first_token_s", "first_heatmap_s", "tokens_per_s", "share_of_plain_dense")]
        print(f"| {labels[name]} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app; default: launch one in this process")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="median of N runs per row")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    lm = load()
    sparse = default_method()
    with app_url(args.url) as url:
        rows = summarise(measure(url, lm, args.prompt_tokens, sparse, args.new_tokens, args.repeats))
    print(f"\nprompt {args.prompt_tokens} tokens, {args.new_tokens} new, median of {args.repeats}, budget 25%\n")
    print_table(rows, sparse)
    verdict = {
        "first_heatmap_ok": rows[sparse].get("first_heatmap_s", float("inf")) <= GOAL_FIRST_HEATMAP_S,
        "page_rate_ok": rows["dense"]["share_of_plain_dense"] >= GOAL_RATE_SHARE,
    }
    print(f"\ngoals: first heatmap <= {GOAL_FIRST_HEATMAP_S} s: {verdict['first_heatmap_ok']}; "
          f"page streaming >= {GOAL_RATE_SHARE:.0%} of plain dense: {verdict['page_rate_ok']}")
    path = write_json("app_latency.json", {
        "settings": {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
                     "budget": "25%", "sparse_method": sparse, "url": args.url or "in-process"},
        "rows": rows, "goals": {"first_heatmap_s": GOAL_FIRST_HEATMAP_S, "rate_share": GOAL_RATE_SHARE},
        "verdict": verdict,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
