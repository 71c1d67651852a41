"""GPU decode speed measured through core: whole decode steps of core.decode.generate under core's policies,
and core.kernels' sparse decode attention against dense decode attention and the device's copy bandwidth.

Needs CUDA: without it, it says so and exits with status 2 (--help works anywhere).

Kernels (`measure_kernels`): one layer's decode attention at --kernel-shape (default 32 query heads, 8 KV
heads, head dim 128, bf16: Llama-3-8B's attention), batch 1, for every --kernel-contexts x --kernel-budgets:
core.kernels.dense_decode_attention (flash-attn, else SDPA flash) once per context and
core.kernels.sparse_decode_attention (the Triton kernel core.attention's gather path runs) with random sorted
indices per budget. CUDA events, the L2 flushed before each call, median of --iters, replayed as CUDA graphs
(--eager: op by op). GB/s = bytes that must be read / time, next to a measured device-to-device copy (torch
`copy_` of a 1 GiB tensor, read + written bytes). First a check: sparse at budget == context vs dense.

Decode steps (`measure_decode`): a model from core.models (--model, repeatable: the embedded default
embedded:smollm2-135m-instruct, a hub id or local folder whose files are on the machine,
quick:tiny-random-llama (core.tiny), or random-llama: a random LlamaForCausalLM of --random-sizes, wrapped by
core.models.from_model, for contexts beyond the embedded model's 8192) and policies from
core.policies.make_policy (--policies; dense, tokenbutler, quest, streaming, h2o by default). For every
context a random prompt of that many tokens is prefilled by core.decode.generate (dense, as core does), then
--warmup + --steps tokens are decoded greedily under each policy and budget; ms/step is the median wall time
between consecutive tokens (generate syncs on each token's argmax). That is core's eager decode step as it
runs: Python and launch overhead, the policy's selection, transformers' DynamicCache growth and the kernel.
TokenButler uses the shipped predictor when its fingerprint matches the model, otherwise a freshly built,
untrained predictor of the same shape for this model (the same arithmetic, so the same speed; its choices
are not meaningful, and the row says "untrained"). A row that fails (out of memory, say) records its error.

Goals (issue 6), under "goals" in the JSON: the whole decode step at a 32k context with a 2048-token budget
>= 6x dense flash decode (tokenbutler's model row; the kernel-level ratio is reported beside it), and the
sparse kernel >= 70% of the measured copy bandwidth (32k, 2048). The JSON is rewritten after every part, so
a run cut short keeps what it measured.

    python benchmarks/bench_gpu_decode.py                      # embedded model, 1k and 4k; kernels 4k..128k
    python benchmarks/bench_gpu_decode.py --model random-llama --contexts 32768 --budgets 2048
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import kernels  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.decode import GenerationConfig, generate  # noqa: E402
from core.graphs import cuda_graph  # noqa: E402
from core.kernels import dense  # noqa: E402
from core.models import DEFAULT_MODEL, LoadedModel, from_model, load  # noqa: E402
from core.policies import Policy, make_policy  # noqa: E402
from core.predictor import Predictor, PredictorConfig  # noqa: E402
from core.tiny import QUICK_MODEL, tiny_model  # noqa: E402

OUT = ROOT / "assets" / "results" / "gpu_decode.json"
RANDOM_LLAMA = "random-llama"
POLICIES = ["dense", "tokenbutler", "quest", "streaming", "h2o"]
CONTEXTS = [1024, 4096]
BUDGETS = ["256", "1024"]
KERNEL_CONTEXTS = [4096, 32768, 131072]
KERNEL_BUDGETS = [256, 2048]
KERNEL_SHAPE = (32, 8, 128)  # query heads, KV heads, head dim
RANDOM_SIZES = {  # attention of Llama-3-8B, a thin rest: the steps stay attention-heavy at long contexts
    "layers": 8, "heads": 32, "kv_heads": 8, "head_dim": 128, "hidden": 2048, "intermediate": 5632,
    "vocab": 32000, "max_context": 135168,
}
GOAL_CONTEXT, GOAL_BUDGET, GOAL_SPEEDUP, GOAL_BANDWIDTH = 32768, 2048, 6.0, 0.70
NO_CUDA = (
    "No CUDA device here: bench_gpu_decode.py measures GPU decode speed and needs an NVIDIA GPU. "
    "Nothing was measured (see --help)."
)
Timer = Callable[[Callable[[], object]], float]


# ---------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_timer(device: torch.device, iters: int, eager: bool) -> Timer:
    """time_us(fn): median microseconds of one call. CUDA: events, L2 flushed, graph replay unless eager;
    elsewhere perf_counter around each call (the CPU dry run)."""
    if device.type != "cuda":

        def time_cpu(fn: Callable[[], object]) -> float:
            fn()
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1e6

        return time_cpu
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)  # several times an H100/H200's 50-60 MB L2

    def time_cuda(fn: Callable[[], object]) -> float:
        run = fn if eager else cuda_graph(fn)
        for _ in range(3):
            run()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends, strict=True):
            flush.zero_()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)) * 1e3

    return time_cuda


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device copy of one big tensor (torch copy_): bytes read + written per second, best of `repeats`."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize(device)
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            dst.copy_(src)
            times.append(time.perf_counter() - start)
    return 2 * nbytes / min(times) / 1e9


# ---------------------------------------------------------------- kernels


def layer_inputs(context: int, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> dict:
    hq, hkv, d = shape
    gen = torch.Generator(device=device).manual_seed(context)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device).to(dtype)

    return {"q": rand(1, hq, d), "k": rand(1, hkv, context, d), "v": rand(1, hkv, context, d)}


def random_indices(context: int, hkv: int, budget: int, device: torch.device) -> torch.Tensor:
    """[1, Hkv, budget] distinct ascending positions per KV head, the last one (current token) included."""
    picked = torch.rand(1, hkv, context - 1, device=device).argsort(dim=-1)[..., : budget - 1]
    last = torch.full((1, hkv, 1), context - 1, device=device)
    return torch.cat([picked, last], dim=-1).sort(dim=-1).values


def sparse_backend(device: torch.device) -> str:
    return "triton" if device.type == "cuda" and kernels.HAS_TRITON else "torch-reference"


def full_budget_check(context: int, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> float:
    """Max |sparse_decode_attention reading every position - dense_decode_attention| (bf16: ~1e-2 or less)."""
    x = layer_inputs(context, shape, dtype, device)
    every = torch.arange(context, device=device).expand(1, shape[1], context).contiguous()
    scale = shape[2] ** -0.5
    sparse = kernels.sparse_decode_attention(x["q"], x["k"], x["v"], every, scale)
    full = kernels.dense_decode_attention(x["q"], x["k"], x["v"], scale)
    return (sparse.float() - full.float()).abs().max().item()


def measure_kernels(
    contexts: list[int],
    budgets: list[int],
    time_us: Timer,
    bandwidth: float,
    shape: tuple[int, int, int] = KERNEL_SHAPE,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cuda",
) -> list[dict]:
    """Per context: core.kernels.dense_decode_attention, then core.kernels.sparse_decode_attention per budget."""
    device = torch.device(device)
    _, hkv, d = shape
    scale = d**-0.5
    width = torch.finfo(dtype).bits // 8
    rows = []
    for context in contexts:
        x = layer_inputs(context, shape, dtype, device)
        q, k, v = x["q"], x["k"], x["v"]

        def row(kernel: str, backend: str, budget: int | None, us: float, moved: int, context: int = context) -> dict:
            gbs = moved / (us * 1e-6) / 1e9
            return {"context": context, "budget": budget, "kernel": kernel, "backend": backend, "us": us,
                    "bytes": moved, "gb_per_s": gbs, "bandwidth_fraction": gbs / bandwidth}

        dense_row = row(
            "dense", dense.dense_backend(device.type, dtype), None,
            time_us(lambda q=q, k=k, v=v: kernels.dense_decode_attention(q, k, v, scale)),
            2 * hkv * context * d * width,
        )
        dense_row["speedup_vs_dense"] = 1.0
        rows.append(dense_row)
        for budget in (b for b in budgets if b <= context):
            indices = random_indices(context, hkv, budget, device)
            us = time_us(lambda q=q, k=k, v=v, i=indices: kernels.sparse_decode_attention(q, k, v, i, scale))
            sparse_row = row("sparse", sparse_backend(device), budget, us, hkv * budget * (2 * d * width + 8))
            sparse_row["speedup_vs_dense"] = dense_row["us"] / us
            rows.append(sparse_row)
        del x, q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- models and decode steps


class RandomTokenizer:
    """Enough of a tokenizer for generate() on a random model: ids are shown as numbers, no EOS, no chat."""

    chat_template = None
    eos_token_id = None

    def __call__(self, text: str, return_tensors: str = "pt") -> dict:
        return {"input_ids": torch.tensor([[ord(c) for c in text]])}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def parse_sizes(text: str) -> dict[str, int]:
    """'layers=4,hidden=1024' over RANDOM_SIZES' defaults."""
    sizes = dict(RANDOM_SIZES)
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in sizes or not value.isdigit():
            raise argparse.ArgumentTypeError(f"bad size {part!r}: give key=int with keys {', '.join(RANDOM_SIZES)}")
        sizes[key] = int(value)
    return sizes


def random_llama(sizes: dict[str, int], device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    """A random LlamaForCausalLM of explicit sizes, routed through core's attention by core.models.from_model."""
    config = LlamaConfig(
        num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"], num_key_value_heads=sizes["kv_heads"],
        head_dim=sizes["head_dim"], hidden_size=sizes["hidden"], intermediate_size=sizes["intermediate"],
        vocab_size=sizes["vocab"], max_position_embeddings=sizes["max_context"],
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = None
    name = f"{RANDOM_LLAMA}:" + ",".join(f"{k}={v}" for k, v in sizes.items())
    return from_model(model, RandomTokenizer(), name=name)


def load_model(source: str, device: torch.device, dtype: str | None, sizes: dict[str, int]) -> LoadedModel:
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if source == RANDOM_LLAMA:
        return random_llama(sizes, device, torch_dtype)
    if source == QUICK_MODEL:
        lm = tiny_model(max_positions=sizes["max_context"])
        lm.model.to(device=device, dtype=torch_dtype)
        return from_model(lm.model, lm.tokenizer, name=QUICK_MODEL)
    return load(source, device=str(device), dtype=dtype)


def build_policy(name: str, lm: LoadedModel) -> tuple[Policy, str | None]:
    """make_policy(name); for tokenbutler the shipped predictor if it was trained for this model, else an
    untrained one of this model's shape (speed only)."""
    if name != "tokenbutler":
        return make_policy(name), None
    try:
        shipped = make_policy("tokenbutler")
    except OSError:  # no shipped predictor files
        shipped = None
    if shipped is not None and shipped.predictor.config.fingerprint == lm.spec.fingerprint:
        return shipped, "shipped"
    predictor = Predictor(PredictorConfig.for_spec(lm.spec))
    why = "no shipped predictor" if shipped is None else f"shipped one is for {shipped.predictor.config.fingerprint}"
    note = f"untrained ({why}, model {lm.spec.fingerprint}): speed only"
    return make_policy("tokenbutler", predictor=predictor), note


def time_decode(lm: LoadedModel, policy: Policy, budget: Budget, ids: torch.Tensor, steps: int, warmup: int) -> dict:
    """Prefill `ids` and decode warmup + steps tokens with core.decode.generate; wall time between tokens."""
    config = GenerationConfig(max_new_tokens=warmup + steps + 1, stop_at_eos=False, chat=False)
    start = time.perf_counter()
    stamps, last = [], None
    for event in generate(lm, ids, policy, budget, config):
        sync(lm.device)
        stamps.append(time.perf_counter())
        last = event
    gaps = [b - a for a, b in itertools.pairwise(stamps)][warmup:]
    ms = statistics.median(gaps) * 1e3
    return {"prefill_s": stamps[0] - start, "ms_per_step": ms, "ms_min": min(gaps) * 1e3,
            "tokens_per_s": 1e3 / ms, "sparsity": last.sparsity}


def measure_decode(
    lm: LoadedModel,
    policies: list[str],
    contexts: list[int],
    budgets: list[str],
    steps: int,
    warmup: int,
    seed: int = 0,
) -> list[dict]:
    """One row per context x policy x budget (dense once per context); speedup = dense ms / policy ms."""
    rows = []
    new_tokens = warmup + steps + 1
    for context in contexts:
        base = {"model": lm.spec.name, "context": context}
        if context + new_tokens > lm.spec.max_context:
            rows.append({**base, "skipped": f"context + {new_tokens} new tokens > the model's {lm.spec.max_context}"})
            continue
        gen = torch.Generator().manual_seed(seed + context)
        ids = torch.randint(0, lm.spec.vocab_size, (1, context), generator=gen)
        dense_ms = None
        for name in policies:
            for text in ["100%"] if name == "dense" else budgets:
                budget = Budget.parse(text)
                row = {**base, "policy": name, "budget": budget.label, "kept": budget.keep(context)}
                try:
                    policy, predictor = build_policy(name, lm)
                    if predictor:
                        row["predictor"] = predictor
                    row.update(time_decode(lm, policy, budget, ids, steps, warmup))
                except (RuntimeError, ValueError) as err:  # torch.OutOfMemoryError is a RuntimeError
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                if lm.device.type == "cuda":
                    torch.cuda.empty_cache()
                if name == "dense" and "ms_per_step" in row:
                    dense_ms = row["ms_per_step"]
                if dense_ms and "ms_per_step" in row:
                    row["speedup"] = dense_ms / row["ms_per_step"]
                rows.append(row)
                print(format_decode_row(row), flush=True)
    return rows


# ---------------------------------------------------------------- report


def format_decode_row(r: dict) -> str:
    head = f"| {r['model'][:40]} | {r['context']} | {r.get('policy', '-')} | {r.get('budget', '-')} "
    if "ms_per_step" not in r:
        return head + f"| {r.get('error') or r.get('skipped')} |"
    speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
    return head + f"| {r['ms_per_step']:.2f} | {r['tokens_per_s']:.1f} | {r['sparsity']:.1%} | {speedup} |"


def print_kernel_table(rows: list[dict], bandwidth: float, shape: tuple[int, int, int]) -> None:
    hq, hkv, d = shape
    print(f"\nKernels: {hq} query heads, {hkv} KV heads, head dim {d}, batch 1; copy bandwidth {bandwidth:.0f} GB/s")
    print("| context | budget | kernel | backend | us | GB/s | % of copy bw | vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        budget = "-" if r["budget"] is None else r["budget"]
        print(f"| {r['context']} | {budget} | {r['kernel']} | {r['backend']} | {r['us']:.1f} | {r['gb_per_s']:.0f} "
              f"| {r['bandwidth_fraction']:.0%} | {r['speedup_vs_dense']:.2f}x |")


def goals(decode_rows: list[dict], kernel_rows: list[dict]) -> dict:
    """Issue 6's two goals at 32k context and a 2048-token budget; None where that cell was not measured."""
    step = [r for r in decode_rows if r.get("policy") == "tokenbutler" and r["context"] == GOAL_CONTEXT
            and r.get("kept") == GOAL_BUDGET and "speedup" in r]
    kernel = [r for r in kernel_rows if r["kernel"] == "sparse" and r["context"] == GOAL_CONTEXT
              and r["budget"] == GOAL_BUDGET]
    whole = max((r["speedup"] for r in step), default=None)
    fraction = kernel[0]["bandwidth_fraction"] if kernel else None
    return {
        "whole_step_speedup": {"goal": GOAL_SPEEDUP, "value": whole, "met": None if whole is None else whole >= 6,
                               "models": [r["model"] for r in step],
                               "kernel_level_speedup": kernel[0]["speedup_vs_dense"] if kernel else None},
        "sparse_kernel_bandwidth_fraction": {"goal": GOAL_BANDWIDTH, "value": fraction,
                                             "met": None if fraction is None else fraction >= GOAL_BANDWIDTH},
        "at": {"context": GOAL_CONTEXT, "budget": GOAL_BUDGET},
    }


def write(out: Path, result: dict) -> None:
    result["goals"] = goals([r for m in result["models"] for r in m["rows"]], result["kernels"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------- command line


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def str_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def shape_arg(text: str) -> tuple[int, int, int]:
    hq, hkv, d = int_list(text)
    return hq, hkv, d


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help=f"repeatable; default {DEFAULT_MODEL}; also {RANDOM_LLAMA}, "
                   f"{QUICK_MODEL}, a hub id or a local folder")
    p.add_argument("--random-sizes", type=parse_sizes, default=dict(RANDOM_SIZES),
                   help="sizes of random-llama, e.g. layers=4,hidden=1024 (default " +
                   ",".join(f"{k}={v}" for k, v in RANDOM_SIZES.items()) + ")")
    p.add_argument("--dtype", help="model dtype (default bfloat16)")
    p.add_argument("--policies", type=str_list, default=POLICIES, help=f"default {','.join(POLICIES)}")
    p.add_argument("--contexts", type=int_list, default=CONTEXTS, help=f"prompt lengths (default {CONTEXTS})")
    p.add_argument("--budgets", type=str_list, default=BUDGETS, help="token counts or ratios like 25%% (default "
                   f"{','.join(BUDGETS)})")
    p.add_argument("--steps", type=int, default=16, help="timed decode steps per row (default 16)")
    p.add_argument("--warmup", type=int, default=4, help="untimed decode steps first (default 4)")
    p.add_argument("--kernel-contexts", type=int_list, default=KERNEL_CONTEXTS, help=f"default {KERNEL_CONTEXTS}")
    p.add_argument("--kernel-budgets", type=int_list, default=KERNEL_BUDGETS, help=f"default {KERNEL_BUDGETS}")
    p.add_argument("--kernel-shape", type=shape_arg, default=KERNEL_SHAPE, help="query heads,KV heads,head dim "
                   "(default 32,8,128)")
    p.add_argument("--iters", type=int, default=100, help="timed calls per kernel measurement (median; default 100)")
    p.add_argument("--eager", action="store_true", help="kernels launched op by op instead of CUDA graph replays")
    p.add_argument("--no-kernels", action="store_true", help="skip the kernel microbenchmark")
    p.add_argument("--no-decode", action="store_true", help="skip the decode steps through core")
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT.relative_to(ROOT)})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    import triton

    device = torch.device("cuda")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth_gbs(device)
    result = {
        "meta": {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                 "dense_backend": dense.dense_backend("cuda"), "sparse_backend": sparse_backend(device),
                 "kernel_timing": "eager" if args.eager else "cuda-graph", "iters": args.iters,
                 "decode_timing": "core.decode.generate, eager, median wall ms between tokens",
                 "copy_bandwidth_gb_per_s": bandwidth, "argv": sys.argv[1:]},
        "kernels": [], "models": [],
    }
    print(f"{result['meta']['device']}: copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    if not args.no_kernels:
        shape = args.kernel_shape
        check = full_budget_check(min(args.kernel_contexts), shape, torch.bfloat16, device)
        result["meta"]["full_budget_max_abs_diff"] = check
        print(f"sparse at budget == context vs dense: max abs diff {check:.2e} (bf16)", flush=True)
        time_us = make_timer(device, args.iters, args.eager)
        result["kernels"] = measure_kernels(args.kernel_contexts, args.kernel_budgets, time_us, bandwidth, shape)
        print_kernel_table(result["kernels"], bandwidth, shape)
        write(args.out, result)
    if not args.no_decode:
        print("\nDecode steps through core.decode.generate (eager, batch 1)")
        print("| model | context | policy | budget | ms/step | tokens/s | sparsity | vs dense |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for source in args.model or [DEFAULT_MODEL]:
            lm = load_model(source, device, args.dtype, args.random_sizes)
            rows = measure_decode(lm, args.policies, args.contexts, args.budgets, args.steps, args.warmup)
            result["models"].append({"source": source, "spec": lm.spec.to_dict(), "rows": rows})
            write(args.out, result)
            del lm
            torch.cuda.empty_cache()
    write(args.out, result)
    print(f"\ngoals: {json.dumps(result['goals'])}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
