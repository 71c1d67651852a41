"""Concurrent visitors on loopback: N gradio_client sessions hammer the page for a bounded time.

Each visitor loops: a short traced generation, then Inspect on its own run (its own gr.State).
Counts errors (goal 0) and reports p50 / p95 latency per endpoint; model work queues on one slot,
so generate latency grows with the number of visitors while inspect should stay flat.
Prints a table and writes assets/results/load_app.json.

    PYTHONPATH=. python benchmarks/load_app.py [--clients 4] [--seconds 60] [--url URL] [--max-new 8]
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

LAYER = 10


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


def visitor(url: str, deadline: float, method: str, max_new: int, tally: Tally) -> None:
    """One session: generate, then inspect the step in the middle of its run, until the deadline."""
    client = Client(url, verbose=False)
    prompt = coreference_prompt(1)
    while time.perf_counter() < deadline:
        if tally.call("generate", client, prompt, method, "ratio", 0.25, 64, max_new, 0.0, LAYER):
            tally.call("inspect", client, max(1, (max_new - 1) // 2), LAYER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="no request starts after this")
    parser.add_argument("--url", help="a running app; default: launch one in this process")
    parser.add_argument("--max-new", type=int, default=8)
    parser.add_argument("--method", default=None, help="default: the page's default method")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    method = args.method or default_method()

    tally = Tally()
    with app_url(args.url) as url:
        start = time.perf_counter()
        threads = [threading.Thread(target=visitor, args=(url, start + args.seconds, method, args.max_new, tally))
                   for _ in range(args.clients)]
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
