"""Decode speed on CPU against context length: transformers' generate, our dense path, sparse methods.

For each context (real held-out text, consecutive, of 1k-8k tokens) and thread count, the prompt is
prefilled once for our rows (`core.decode.prefill_prompt`; every method decodes from its own copy)
and `--new-tokens` tokens are decoded greedily, batch 1, untraced. Decode tokens/s excludes the
prefill for every row: for transformers' generate, a logits processor stamps the time of each step
and the rate is taken from the first to the last step. Each row runs `--repeats` times, interleaved
with the others, and its best run is kept (this shared 2-core machine drifts by 20% within minutes).

Rows: transformers generate (its default DynamicCache, a StaticCache, and a StaticCache with
torch.compile: the ecosystem's fast path), our dense, and each sparse method at each budget; with
`--static`, the same for our static step compiled whole (`core.static_step`: dense and each scorer; its
dense counts among the dense rows the ratios are taken against). Per row:
tokens/s, ratios to the fastest dense of the run (the best of our dense and the three generate rows at
that context and thread count), to our dense and to generate, the bytes a step reads (weights + K/V
rows read + the method's side data at its stored precision: TokenButler's key codes, Double Sparsity's
label codes, Quest's page bounds) and the implied GB/s. Writes assets/results/decode_cpu.json and
decode_cpu.png.

    python benchmarks/bench_decode_cpu.py                       # 1k,2k,4k,8k x 1,2 threads
    python benchmarks/bench_decode_cpu.py --contexts 1024 --threads 1 --new-tokens 16   # quick look
    python benchmarks/bench_decode_cpu.py --static              # + the compiled static step's rows
    python benchmarks/bench_decode_cpu.py --print-only          # the tables of the shipped JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList

from core.args import split_csv, split_ints
from core.budget import Budget
from core.data import token_chunks
from core.decode import GenerationConfig, Prefilled, generate, prefill_prompt
from core.kernels.select_cpu import backend, warm_up
from core.models import DEFAULT_MODEL, LoadedModel, load
from core.palette import color
from core.policies import make_policy
from core.static_step import generate_static

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "results"
METHODS = ("tokenbutler", "double-sparsity", "quest", "streaming", "h2o")
STATIC = " (static step, compiled)"  # the label's suffix of a `core.static_step` row (--static)
DENSE_LABELS = ("ours: dense", f"ours: dense{STATIC}", "transformers generate", "transformers generate (static)",
                "transformers generate (static + compile)")


class StepClock(LogitsProcessor):
    """Stamps the time of every generation step (the first stamp comes right after the prefill)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.stamps.append(time.perf_counter())
        return scores


def real_text(lm: LoadedModel, tokens: int) -> torch.Tensor:
    """`tokens` consecutive held-out tokens of one source (the first long enough)."""
    return token_chunks(lm.tokenizer, "heldout", tokens, max_chunks=1, order="in-order")[0].view(1, -1)


def compiled() -> CompileConfig:
    """torch.compile for generate on CPU (transformers compiles on accelerators only unless told), with a
    recompile limit above the per-layer specialisations of the cache update, so no frame falls back to eager."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    config = CompileConfig(mode="default")
    config._compile_all_devices = True
    return config


def hf_rate(lm: LoadedModel, ids: torch.Tensor, new: int, cache: str | None, compile_forward: bool = False) -> float:
    """Decode tokens/s of transformers' own generate (stock SDPA: no session is active)."""
    clock = StepClock()
    extra = {"cache_implementation": cache} if cache else {}
    if compile_forward:
        extra["compile_config"] = compiled()
    with torch.inference_mode():
        lm.model.generate(
            ids,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
            **extra,
        )
    return (len(clock.stamps) - 1) / (clock.stamps[-1] - clock.stamps[0])


def our_rate(lm: LoadedModel, shared: Prefilled, new: int, name: str, budget: Budget) -> tuple[float, float]:
    """Decode tokens/s from the shared prefill, untraced, and the share of K/V rows read."""
    config = GenerationConfig(max_new_tokens=new, stop_at_eos=False)
    stamps, last = [], None
    for event in generate(lm, shared, make_policy(name), budget, config):
        stamps.append(time.perf_counter())
        last = event
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), 1 - last.sparsity


def static_rate(lm: LoadedModel, shared: Prefilled, new: int, name: str, budget: Budget) -> tuple[float, float]:
    """Decode tokens/s of the compiled static step (`core.static_step`) from the shared prefill, its first
    step left out (the compile, or the first call of a graph compiled for the same shapes), and the share of
    K/V rows read."""
    result = generate_static(lm, shared, make_policy(name), budget, new, compile=True)
    return (new - 2) / result.seconds, 1 - result.stats.sparsity


def measure_context(
    lm: LoadedModel, ids: torch.Tensor, new: int, methods: tuple[str, ...], budgets: list[Budget], repeats: int,
    static: bool = False, compiled_generate: bool = True,
) -> dict[tuple[str, str], tuple[float, float]]:
    """(method, label) -> best (tokens/s, share of K/V rows read) over `repeats` interleaved runs of every row."""
    shared = prefill_prompt(lm, ids, GenerationConfig(max_new_tokens=new))
    cells: dict[tuple[str, str], Callable[[], tuple[float, float]]] = {
        ("transformers", "transformers generate"): lambda: (hf_rate(lm, ids, new, None), 1.0),
        ("transformers", "transformers generate (static)"): lambda: (hf_rate(lm, ids, new, "static"), 1.0),
    }
    if compiled_generate:
        cells[("transformers", "transformers generate (static + compile)")] = lambda: (
            hf_rate(lm, ids, new, "static", True), 1.0)
    cells[("dense", "ours: dense")] = lambda: our_rate(lm, shared, new, "dense", Budget.dense())
    for name in methods:
        for budget in budgets:
            cells[(name, f"ours: {name} @ {budget.label}")] = partial(our_rate, lm, shared, new, name, budget)
    if static:  # the scorers only: a recurrence has no static step
        cells[("dense", f"ours: dense{STATIC}")] = partial(static_rate, lm, shared, new, "dense", Budget.dense())
        for name in (n for n in methods if make_policy(n).stateless):
            for budget in budgets:
                label = f"ours: {name} @ {budget.label}{STATIC}"
                cells[(name, label)] = partial(static_rate, lm, shared, new, name, budget)
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for _ in range(repeats):  # interleaved, best kept: slow drifts of the machine cancel
        for key, measure in cells.items():
            rate, share = measure()
            best[key] = max(best.get(key, (0.0, share)), (rate, share))
    return best


def bytes_per_step(lm: LoadedModel, context: int, read_share: float, name: str) -> float:
    """Weights + K/V rows read + side data, per decode step, at `context` tokens (mean over the run)."""
    spec = lm.spec
    elem = torch.finfo(lm.dtype).bits // 8
    weights = lm.parameter_count * elem
    kv_row = 2 * spec.num_kv_heads * spec.head_dim * elem  # K and V of one token in one layer
    kv = spec.num_layers * context * kv_row * read_share
    side = 0.0
    if name == "tokenbutler":
        config = make_policy("tokenbutler").predictor.config
        side = len(config.predicted_layers) * spec.num_kv_heads * code_bytes(config.dim, config.key_bits) * context
    elif name == "double-sparsity":
        policy = make_policy("double-sparsity")
        sparse_layers = spec.num_layers - policy.first_sparse_layer
        side = sparse_layers * spec.num_kv_heads * code_bytes(policy.channels, policy.bits) * context
    elif name == "quest":
        page = make_policy("quest").page_size
        side = spec.num_layers * spec.num_kv_heads * 2 * spec.head_dim * (context / page) * elem
    return weights + kv + side


def code_bytes(channels: int, bits: int) -> float:
    """Bytes of one token's summary for one KV head as `core.keycodes.KeyCodes` stores it: the codes, and
    an fp32 scale below 16 bits (16 bits: fp32 values)."""
    return channels * 4 if bits == 16 else channels * bits / 8 + 4


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(6 * len(threads), 4.2), squeeze=False)
    for ax, count in zip(axes[0], threads, strict=True):
        labels = dict.fromkeys(r["label"] for r in rows if r["threads"] == count)
        for label in labels:
            mine = sorted(
                (r for r in rows if r["threads"] == count and r["label"] == label), key=lambda r: r["context"]
            )
            method = mine[0]["method"]
            style = {"linestyle": ":" if "25%" in label else "-", "marker": "o"}
            hf = method.startswith("transformers")
            ax.plot(
                [r["context"] for r in mine],
                [r["tokens_per_s"] for r in mine],
                label=label,
                color="black" if hf else color(method),
                alpha=0.6 if "static" in label else 1.0,
                **style,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"{count} thread{'s' if count > 1 else ''}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--contexts", default="1024,2048,4096,8000", help="prompt tokens, comma list")
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma list")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--budgets", default="25%,10%")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per row, best kept")
    parser.add_argument("--static", action="store_true",
                        help="add rows of the static step under torch.compile (dense and each scorer; compiles first)")
    parser.add_argument("--skip-compiled-generate", action="store_true",
                        help="leave out generate with static cache + compile (its compile takes 20+ min at 4k)")
    parser.add_argument("--out", type=Path, default=RESULTS / "decode_cpu.json")
    parser.add_argument(
        "--keep-other-threads", action="store_true",
        help="keep --out's rows of thread counts not measured in this run (re-measure one thread count alone)",
    )
    parser.add_argument("--print-only", action="store_true", help="print --out's tables again, measuring nothing")
    args = parser.parse_args()
    if args.print_only:
        rows = json.loads(args.out.read_text())["rows"]
        add_ratios(rows)
        print_pivots(rows)
        return
    lm = load(args.model)
    warm_up()  # the selection kernels compile (or load from numba's cache) before any timed run
    contexts = list(split_ints(args.contexts))
    budgets = [Budget.parse(b) for b in split_csv(args.budgets)]
    rows: list[dict] = []

    def add(method: str, label: str, context: int, count: int, rate: float, share: float) -> None:
        step_bytes = bytes_per_step(lm, context, share, method)
        rows.append(
            {
                "method": method,
                "label": label,
                "context": context,
                "threads": count,
                "tokens_per_s": rate,
                "read_share": share,
                "bytes_per_step": step_bytes,
                "gb_per_s": step_bytes * rate / 1e9,
            }
        )
        print(
            f"{count}t {context:>5} {label:28} {rate:6.2f} tok/s  reads {share:6.1%}  "
            f"{step_bytes * rate / 1e9:5.1f} GB/s"
        )

    for count in split_ints(args.threads):
        torch.set_num_threads(count)
        for context in contexts:
            ids = real_text(lm, context)
            hf_rate(lm, ids[:, :64], 4, None)  # warm-up
            best = measure_context(lm, ids, args.new_tokens, split_csv(args.methods), budgets, args.repeats,
                                   args.static, not args.skip_compiled_generate)
            for (method, label), (rate, share) in best.items():
                add(method, label, context, count, rate, share)
    if args.keep_other_threads and args.out.exists():
        measured = set(split_ints(args.threads))
        rows = [r for r in json.loads(args.out.read_text())["rows"] if r["threads"] not in measured] + rows
    add_ratios(rows)
    print("\n| threads | context | method | tokens/s | vs fastest dense | vs our dense | vs generate | K/V rows read "
          "| GB/step | GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['context']} | {r['label']} | {r['tokens_per_s']:.2f} "
            f"| {r['vs_fastest_dense']:.2f}x | {r['vs_our_dense']:.2f}x "
            f"| {r['vs_generate']:.2f}x | {r['read_share']:.1%} | {r['bytes_per_step'] / 1e9:.3f} "
            f"| {r['gb_per_s']:.1f} |"
        )
    meta = {
        "model": args.model,
        "new_tokens": args.new_tokens,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "dtype": str(lm.dtype),
        "selection_backend": backend(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    figure(rows, args.out.with_suffix(".png"))
    print_pivots(rows)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


def add_ratios(rows: list[dict]) -> None:
    """Each row's rate over the fastest dense, our dense and generate at its context and thread count."""
    for row in rows:
        same = [r for r in rows if r["context"] == row["context"] and r["threads"] == row["threads"]]
        fastest = max((r for r in same if r["label"] in DENSE_LABELS), key=lambda r: r["tokens_per_s"])
        row["fastest_dense"] = fastest["label"]
        row["vs_fastest_dense"] = row["tokens_per_s"] / fastest["tokens_per_s"]
        row["vs_our_dense"] = row["tokens_per_s"] / next(r["tokens_per_s"] for r in same if r["label"] == "ours: dense")
        row["vs_generate"] = row["tokens_per_s"] / next(
            r["tokens_per_s"] for r in same if r["label"] == "transformers generate"
        )


def print_pivots(rows: list[dict]) -> None:
    """Per thread count, one table of tokens/s (x the fastest dense at that context): method x context."""
    for count in sorted({r["threads"] for r in rows}):
        mine = [r for r in rows if r["threads"] == count]
        contexts = sorted({r["context"] for r in mine})
        print(f"\n{count} thread{'s' if count > 1 else ''}: decode tokens/s (x the fastest dense)\n")
        print("| method | " + " | ".join(f"{c:,} tokens" for c in contexts) + " |")
        print("|---|" + "---|" * len(contexts))
        for label in dict.fromkeys(r["label"] for r in mine):
            cells = {r["context"]: r for r in mine if r["label"] == label}
            print(f"| {label} | " + " | ".join(
                f"{cells[c]['tokens_per_s']:.2f} ({cells[c]['vs_fastest_dense']:.2f}x)" if c in cells else "-"
                for c in contexts) + " |")


if __name__ == "__main__":
    main()
