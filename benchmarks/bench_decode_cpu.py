"""Decode speed on CPU: transformers' own generate vs our dense path vs every policy at one budget.

Embedded model, a fixed 256-token prompt (real text), 128 new tokens, greedy, batch 1.
Prints a markdown table and writes assets/results/decode_cpu.json.

    python benchmarks/bench_decode_cpu.py [--prompt-tokens 256] [--new-tokens 128] [--budget 50%]
"""

from __future__ import annotations

import argparse
import json
import platform
import pydoc_data.topics
import time
from pathlib import Path

import torch

from core.budget import Budget
from core.decode import GenerationConfig, generate
from core.models import DEFAULT_MODEL, load
from core.policies import make_policy, policy_names

OUT = Path(__file__).resolve().parent.parent / "assets" / "results" / "decode_cpu.json"


def prompt_ids(lm, n: int) -> torch.Tensor:
    text = " ".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    return lm.tokenizer(text, return_tensors="pt")["input_ids"][:, :n]


def time_hf_generate(lm, ids: torch.Tensor, new: int) -> float:
    """Stock transformers generate with SDPA (no session is active, so our function is plain SDPA)."""
    start = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new
    return new / elapsed


def time_ours(lm, ids: torch.Tensor, new: int, policy: str, budget: Budget) -> tuple[float, float]:
    """Tokens/s over the whole call (prefill included, like generate) and the achieved sparsity."""
    config = GenerationConfig(max_new_tokens=new, stop_at_eos=False)
    start = time.perf_counter()
    events = list(generate(lm, ids, make_policy(policy), budget, config))
    elapsed = time.perf_counter() - start
    return len(events) / elapsed, events[-1].sparsity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--budget", default="50%")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per row")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    lm = load(args.model)
    ids = prompt_ids(lm, args.prompt_tokens)
    budget = Budget.parse(args.budget)
    time_hf_generate(lm, ids, 8)  # warm-up
    rows = [
        {
            "method": "transformers generate (sdpa)",
            "budget": "-",
            "tokens_per_s": max(time_hf_generate(lm, ids, args.new_tokens) for _ in range(args.repeats)),
            "sparsity": 0.0,
        }
    ]
    for name in policy_names():
        bud = Budget.dense() if name == "dense" else budget
        try:
            runs = [time_ours(lm, ids, args.new_tokens, name, bud) for _ in range(args.repeats)]
        except FileNotFoundError as err:
            print(f"skipping {name}: {err}")
            continue
        rows.append(
            {
                "method": f"ours: {name}",
                "budget": bud.label,
                "tokens_per_s": max(r[0] for r in runs),
                "sparsity": runs[0][1],
            }
        )
    base = rows[0]["tokens_per_s"]
    print(
        f"\n{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, CPU ({torch.get_num_threads()} threads)\n"
    )
    print("| method | budget | tokens/s | vs generate | achieved sparsity |\n|---|---|---|---|---|")
    for row in rows:
        row["relative"] = row["tokens_per_s"] / base
        print(
            f"| {row['method']} | {row['budget']} | {row['tokens_per_s']:.1f} | {row['relative']:.2f}x "
            f"| {row['sparsity']:.1%} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": args.model,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
