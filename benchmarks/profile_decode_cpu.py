"""A decode loop to profile with py-spy, and a summary of the raw profile by where the step's time goes.

    py-spy record -r 50 -f raw -o runs/decode.prof -- python benchmarks/profile_decode_cpu.py --method tokenbutler
    python benchmarks/profile_decode_cpu.py --summarize runs/decode.prof

The loop prefills `--context` tokens of held-out text once and decodes `--new-tokens` greedily with one
thread, untraced, numba's kernels warmed up first; the summary counts only samples inside the decode steps
(`decode_tokens`; the first of them also stores the prompt's key codes).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch

from core.budget import Budget
from core.data import token_chunks
from core.decode import GenerationConfig, generate, prefill_prompt
from core.kernels.select_cpu import warm_up
from core.models import DEFAULT_MODEL, load
from core.policies import make_policy

PARTS = {  # a label and a frame that marks it in a stack
    "selection, all of it": "decode_selection",
    "K/V gather": "gather_kv",
    "attention over the kept rows": "attend (",
    "predictor queries (producer hooks)": "hook (",
}


def decode(model: str, method: str, budget: str, context: int, new_tokens: int) -> float:
    """Decode tokens/s of `method` after one dense prefill of `context` held-out tokens."""
    torch.set_num_threads(1)
    lm = load(model)
    warm_up()  # numba's kernels loaded before decoding, as the page and CLI do at start-up
    ids = token_chunks(lm.tokenizer, "heldout", context, max_chunks=1, order="in-order")[0].view(1, -1)
    config = GenerationConfig(max_new_tokens=new_tokens, stop_at_eos=False)
    shared = prefill_prompt(lm, ids, config)
    started = time.perf_counter()
    steps = sum(1 for _ in generate(lm, shared, make_policy(method), Budget.parse(budget), config))
    return (steps - 1) / (time.perf_counter() - started)


def summarize(path: Path, top: int = 12) -> None:
    """Shares of the decode steps' samples: named parts, then the innermost project frames."""
    stacks = [line.rstrip("\n").rsplit(" ", 1) for line in path.read_text().splitlines() if line.strip()]
    decode_stacks = [(stack, int(count)) for stack, count in stacks if "decode_tokens" in stack]
    total = sum(count for _, count in decode_stacks)
    print(f"{total} samples in decode steps")
    for label, frame in PARTS.items():
        print(f"{sum(c for s, c in decode_stacks if frame in s) / total:6.1%}  {label}")
    leaves: Counter[str] = Counter()
    for stack, count in decode_stacks:
        ours = [frame for frame in stack.split(";") if "core/" in frame]
        leaves[ours[-1] if ours else "outside core"] += count
    print("innermost project frame:")
    for frame, count in leaves.most_common(top):
        print(f"{count / total:6.1%}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--method", default="tokenbutler")
    parser.add_argument("--budget", default="10%")
    parser.add_argument("--context", type=int, default=8000)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--summarize", type=Path, help="summarize a py-spy raw profile instead of decoding")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    rate = decode(args.model, args.method, args.budget, args.context, args.new_tokens)
    print(f"{args.method} @ {args.budget}, {args.context} tokens: {rate:.2f} tok/s")


if __name__ == "__main__":
    main()
