"""What the TokenButler predictor costs per decode step, relative to a dense decode step, on CPU.

Decodes the same prompt densely and with the `tokenbutler` policy; during the sparse run the time spent
in the predictor's own work is summed: the producers (importance queries, in the layer hooks) and the
selection (scoring the cached keys' channels, group pooling, protection, top-k). The ratio of that time
per step to the median dense step is the predictor's overhead (goal <= 10%). Of it, the protection and
top-k (`newest_rows`) are timed apart: every top-k method pays them, an oracle included, so the rest is
what predicting costs. Prints a table and writes assets/results/predictor_cost.json.

    python benchmarks/bench_predictor_cost.py [--contexts 512 1024 2048] [--steps 32] [--budget 50%]
        [--predictor FOLDER] [--out JSON]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core import attention
from core.budget import Budget
from core.data import token_chunks
from core.decode import GenerationConfig, generate
from core.models import DEFAULT_MODEL, load
from core.policies import driver, make_policy, tokenbutler

OUT = Path(__file__).resolve().parent.parent / "assets" / "results" / "predictor_cost.json"


def timed(fn: Callable, spent: list[float]) -> Callable:
    """`fn`, adding its wall time to spent[0] on every call."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return out

    return wrapper


def step_times(lm, ids: torch.Tensor, policy, budget: Budget, steps: int, *spent: list[float]) -> list[float]:
    """Wall time of each decode step after the prefill; each `spent` counter is zeroed once the prefill is done."""
    events = generate(lm, ids, policy, budget, GenerationConfig(max_new_tokens=steps + 1, stop_at_eos=False))
    next(events)
    for counter in spent:
        counter[0] = 0.0
    stamps = [time.perf_counter()]
    stamps += [time.perf_counter() for _ in events]
    return [b - a for a, b in itertools.pairwise(stamps)]


def measure(lm, ids: torch.Tensor, budget: Budget, steps: int, predictor: str | None = None) -> dict:
    spent, selecting = [0.0], [0.0]
    dense = statistics.median(step_times(lm, ids, make_policy("dense"), Budget.dense(), steps, spent))
    policy = make_policy("tokenbutler", predictor=predictor)
    policy.predictor.queries = timed(policy.predictor.queries, spent)  # the producers, in the layer hooks
    patched = {(attention, "decode_selection"): spent,  # scoring, pooling, protection, top-k per layer
               (tokenbutler, "newest_rows"): selecting, (driver, "newest_rows"): selecting}  # protection, top-k
    originals = {(module, name): getattr(module, name) for module, name in patched}
    for (module, name), counter in patched.items():
        setattr(module, name, timed(originals[module, name], counter))
    try:
        sparse_steps = step_times(lm, ids, policy, budget, steps, spent, selecting)
    finally:
        del policy.predictor.queries  # the shared predictor's own method again
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    per_step, select = spent[0] / len(sparse_steps), selecting[0] / len(sparse_steps)
    return {"context": int(ids.numel()), "dense_step_ms": dense * 1e3,
            "tokenbutler_step_ms": statistics.median(sparse_steps) * 1e3,
            "predictor_ms_per_step": per_step * 1e3, "selection_ms_per_step": select * 1e3,
            "overhead": per_step / dense, "prediction_overhead": (per_step - select) / dense}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--budget", default="50%")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--predictor", default=None, help="folder of a trained predictor (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load(args.model)
    text = torch.cat(token_chunks(lm.tokenizer, "heldout", max(args.contexts), max_chunks=1))
    rows = [measure(lm, text[:n].view(1, -1), Budget.parse(args.budget), args.steps, args.predictor)
            for n in args.contexts]
    print("| context | dense step (ms) | tokenbutler step (ms) | predictor (ms/step) | of it top-k (ms/step) "
          "| overhead vs dense | without top-k |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['dense_step_ms']:.1f} | {r['tokenbutler_step_ms']:.1f} | "
              f"{r['predictor_ms_per_step']:.2f} | {r['selection_ms_per_step']:.2f} | {r['overhead']:.1%} | "
              f"{r['prediction_overhead']:.1%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": lm.spec.name, "predictor": args.predictor or "assets/predictor",
                                    "budget": args.budget, "threads": args.threads,
                                    "cpu": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
