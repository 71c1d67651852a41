"""Concurrent visitors on loopback: N gradio_client sessions hammer the page for a bounded time.

Each visitor loops over what a visitor does: a short traced generation, Inspect and one head's
triangle on its own run (its own gr.State), and every few rounds the Budgets curves and a ShadowLLM
analysis. Visitors share a few prompts, as real ones share examples, so the dense reference cache
is exercised too. Counts errors (goal 0) and reports p50 / p95 latency per endpoint; model work
queues on one slot, so its latency grows with the number of visitors while Inspect should stay flat.
Prints a table and writes assets/results/load_app.json.

    python benchmarks/load_app.py [--clients 16] [--seconds 120] [--url URL] [--max-new 8]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from app_harness import app_url, percentiles, write_json
from gradio_client import Client

from app.examples import coreference_prompt
from app.state import default_method
from app.ui import SHADOW_EXAMPLE

LAYER = 10
HEADS = 9
PROMPTS = 4  # visitors share this many prompts (the dense reference is reused between them)
CURVE_METHODS = ["oracle", "h2o", "streaming"]


class Tally:
    """Latencies and errors per endpoint, shared by the visitor threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()

    def call(self, endpoint: str, client: Client, *args: object) -> bool:
        start = time.perf_counter()
        try:
            client.predict(*args, api_name=f"/{endpoint}")
        except Exception as err:  # every failure counts, whatever its kind
            with self.lock:
                self.errors[f"{endpoint}: {type(err).__name__}: {str(err)[:120]}"] += 1
            return False
        with self.lock:
            self.latency[endpoint].append(time.perf_counter() - start)
        return True


def visitor(number: int, url: str, deadline: float, method: str, max_new: int, tally: Tally) -> None:
    """One session until the deadline: generate, inspect the middle step and one head of its run; every
    third round the Budgets curves, every fourth a ShadowLLM analysis (offset by the visitor's number, so
    every kind of call is in flight from the first rounds on)."""
    client = Client(url, verbose=False)
    prompt = coreference_prompt(number % PROMPTS)
    rounds = 0
    while time.perf_counter() < deadline:
        rounds += 1
        if tally.call("generate", client, prompt, method, "ratio", 0.25, 64, max_new, 0.0, LAYER):
            tally.call("inspect", client, max(1, (max_new - 1) // 2), LAYER)
            tally.call("head_triangle", client, LAYER, number % HEADS)
        if (rounds + number) % 3 == 0 and time.perf_counter() < deadline:
            tally.call("budgets", client, prompt, CURVE_METHODS, "10%, 25%, 50%")
        if (rounds + number) % 4 == 0 and time.perf_counter() < deadline:
            tally.call("shadow_analyze", client, SHADOW_EXAMPLE, 0.5, 0.0, "global")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0, help="no request starts after this")
    parser.add_argument("--url", help="a running app; default: launch one in this process")
    parser.add_argument("--max-new", type=int, default=8)
    parser.add_argument("--method", default=None, help="default: the page's default method")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    method = args.method or default_method()

    tally = Tally()
    with app_url(args.url) as url:
        start = time.perf_counter()
        threads = [threading.Thread(target=visitor, args=(i, url, start + args.seconds, method, args.max_new, tally))
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start

    rows = {name: {**percentiles(values), "per_s": len(values) / wall} for name, values in tally.latency.items()}
    errors = sum(tally.errors.values())
    print(f"\n{args.clients} clients, {args.seconds:.0f} s, {method} @ 25%, {args.max_new} new tokens, "
          f"wall {wall:.1f} s\n")
    print("| endpoint | ok | p50 s | p95 s | max s | per s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['n']} | {row['p50']:.2f} | {row['p95']:.2f} | {row['max']:.2f} | {row['per_s']:.2f} |")
    print(f"\nerrors: {errors}" + "".join(f"\n  {count} × {kind}" for kind, count in tally.errors.items()))
    path = write_json("load_app.json", {
        "settings": {"clients": args.clients, "seconds": args.seconds, "method": method, "budget": "25%",
                     "max_new_tokens": args.max_new, "url": args.url or "in-process"},
        "wall_s": wall, "endpoints": rows, "errors": errors, "error_kinds": dict(tally.errors),
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
