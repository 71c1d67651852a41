"""What the TokenButler predictor costs per decode step, relative to a dense decode step, on CPU.

Decodes the same prompt densely and with the `tokenbutler` policy, untraced; during the sparse run the time
spent in the predictor's own work is summed: the producers (importance queries, in the layer hooks) and the
selection (each step's `decode_selection`: appending the new keys' codes, then one fused pass over a key
group's stored codes that scores them and picks each KV head's top-k, `core.kernels.select_cpu`). The
ratio of that time per step to the median dense step is the predictor's overhead (goal <= 10% at 2k). The
fused pass is timed apart: scoring and top-k are one loop there, so it is reported whole; the rest is the
producers and the bookkeeping around them. Prints a table and writes assets/results/predictor_cost.json.

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
from core.kernels.select_cpu import warm_up
from core.models import DEFAULT_MODEL, load
from core.policies import make_policy, tokenbutler

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
    """Wall time of each decode step after the first; each `spent` counter is zeroed once the prefill and the
    first decode step are done (that step stores the prompt's key codes once: a prefill cost, not a step's)."""
    events = generate(lm, ids, policy, budget, GenerationConfig(max_new_tokens=steps + 2, stop_at_eos=False))
    next(events)
    next(events)
    for counter in spent:
        counter[0] = 0.0
    stamps = [time.perf_counter()]
    stamps += [time.perf_counter() for _ in events]
    return [b - a for a, b in itertools.pairwise(stamps)]


def measure(lm, ids: torch.Tensor, budget: Budget, steps: int, predictor: str | None = None) -> dict:
    spent, producing, fused = [0.0], [0.0], [0.0]
    dense = statistics.median(step_times(lm, ids, make_policy("dense"), Budget.dense(), steps, spent))
    policy = make_policy("tokenbutler", predictor=predictor)
    policy.predictor.queries = timed(policy.predictor.queries, producing)  # the producers, in the layer hooks
    patched = {(attention, "decode_selection"): spent,  # code appends, fused scoring + top-k, per layer
               (tokenbutler, "select_topk"): fused}  # the fused pass alone
    originals = {(module, name): getattr(module, name) for module, name in patched}
    for (module, name), counter in patched.items():
        setattr(module, name, timed(originals[module, name], counter))
    try:
        sparse_steps = step_times(lm, ids, policy, budget, steps, spent, producing, fused)
    finally:
        del policy.predictor.queries  # the shared predictor's own method again
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    n = len(sparse_steps)
    per_step = (spent[0] + producing[0]) / n
    return {"context": int(ids.numel()), "dense_step_ms": dense * 1e3,
            "tokenbutler_step_ms": statistics.median(sparse_steps) * 1e3,
            "predictor_ms_per_step": per_step * 1e3, "producers_ms_per_step": producing[0] / n * 1e3,
            "fused_selection_ms_per_step": fused[0] / n * 1e3, "overhead": per_step / dense}


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
    warm_up()  # numba's kernels loaded before the first measured step
    text = torch.cat(token_chunks(lm.tokenizer, "heldout", max(args.contexts), max_chunks=1))
    rows = [measure(lm, text[:n].view(1, -1), Budget.parse(args.budget), args.steps, args.predictor)
            for n in args.contexts]
    print("| context | dense step (ms) | tokenbutler step (ms) | predictor (ms/step) | of it producers "
          "| of it fused scoring + top-k | overhead vs dense |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['dense_step_ms']:.1f} | {r['tokenbutler_step_ms']:.1f} | "
              f"{r['predictor_ms_per_step']:.2f} | {r['producers_ms_per_step']:.2f} | "
              f"{r['fused_selection_ms_per_step']:.2f} | {r['overhead']:.1%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": lm.spec.name, "predictor": args.predictor or "assets/predictor",
                                    "budget": args.budget, "threads": args.threads,
                                    "cpu": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
