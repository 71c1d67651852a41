"""Issue 31's whole GPU measurement in one run (at most 8 minutes on one H100 or H200): JSON under $OUT.

Run it first thing when a device is lent. Every figure comes from this one run on one device, each section
written to the JSON as soon as it ends (a run cut short keeps what it measured; a section that fails
records its error and the others go on):

1. kernels: the Triton kernels compiled for the GPU against the torch references (tests/test_kernels.py's
   cases), then one 8B attention layer (32 query / 8 KV heads, head dim 128, bf16) at batch 4, 32k tokens,
   2,048 indices: the sparse kernel at each split count (default first) and each dense backend, timed as
   a CUDA graph of 32 layers on 32 caches (L2 flushed before each replay), us per layer, and the share of
   a measured device copy bandwidth its bytes are.
2. steps: the static decode step (core.static_step) captured as a CUDA graph (core.graphs), on random
   models of Llama-3-8B's shape (32 layers, bf16) at 32k batch 1, 32k batch 4, 128k batch 1 and of
   SmolLM2-135M's at 8k batch 16: TokenButler (an untrained predictor of the model's shape: the same
   arithmetic, so the same speed) at 2,048 rows against the fastest graph-captured dense over the live
   length (each dense backend core.kernels.dense offers, captured and timed). ms per step = the mean of
   back-to-back replays. The prompt's K/V rows are random rows written straight into the cache: a real
   prefill of 128k tokens costs minutes and 32 GB of captured queries that the step's speed does not
   depend on. At 32k batch 1 also: the same dense step eager (no graph, no sync: the best eager can do),
   sync-like calls and launches per captured step (torch.profiler over replays; profile_gpu_step.SYNCS).
   In every case, where an eager TokenButler step's GPU time goes (attention, top-k and sorts, the rest):
   whether scoring + top-k show up enough to fuse.
3. model: the real SmolLM2-135M-Instruct (the embedded GGUF, or --gguf) on CUDA through
   `core.decode.generate` with the shipped predictor (dense, and tokenbutler at 25%): greedy tokens
   against CPU's on one prompt (first divergence, and CUDA fp32's tokens to tell bf16's part), tokens/s
   eager, and the same decoded by the captured static step (`core.graphs.StepGraphs`).

`--dry-run` runs every code path on CPU with tiny shapes in well under a minute (eager: no CUDA graph;
the JSON says dry_run), which tests/test_gpu_script.py runs.

The embedded GGUF (98 MB) needs two calls of the device tool, each carrying one part (a call carries the
session's checkout, which must have this script, and its carried paths: at most 64 MiB together). The
tracked tree is ~72 MiB, so first park what this script does not read (nothing is committed; move it back
after); from the checkout's root:

    mkdir -p /tmp/parked && mv assets/training assets/eval_cache assets/shadow assets/shadow_combined \
        assets/shadow_cache /tmp/parked/                                        # the tree is now ~9 MB
    x="$(git rev-parse --git-common-dir)/info/exclude"; grep -qx '/.gguf/' "$x" || echo /.gguf/ >> "$x"
    g=$(python -c "from core.models import embedded_model_path as e; f, n = e(); print(f / n)")
    mkdir -p .gguf/1 .gguf/2 && split -n 2 -d "$g" .gguf/part. && mv .gguf/part.00 .gguf/1/ \
        && mv .gguf/part.01 .gguf/2/                                            # two parts of ~47 MiB
    sha256sum "$g" | awk '{print $1 "  /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"}' > .gguf/2/SHA256

Call 1, carry [".gguf/1"]:  mkdir -p /tmp/gguf && cp .gguf/1/part.00 /tmp/gguf/
Call 2 at once (the machine stays warm ~30 s; /tmp stays on it), carry [".gguf/2"], timeout_s 560:
    cat /tmp/gguf/part.00 .gguf/2/part.01 > /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
    && sha256sum -c .gguf/2/SHA256 && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_issue31.py \
    --gguf /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT/gpu_issue31.json
Then here: mv /tmp/parked/* assets/ (and rm -r .gguf). Peak GPU memory is about 50 GB (the random 8B at
128k: weights 16 GB, the prompt's K/V 17 GB and one decoder's copy 17 GB), so an H100 will do.

    python benchmarks/gpu_issue31.py --dry-run --out /tmp/gpu_issue31.json     # CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_gpu_decode as bench  # noqa: E402
import profile_gpu_step as profiling  # noqa: E402

from core import kernels  # noqa: E402
from core.budget import Budget  # noqa: E402
from core.decode import GenerationConfig, Prefilled, encode_prompt, generate  # noqa: E402
from core.graphs import CapturedStep, StepGraphs, capture, eager_replay  # noqa: E402
from core.kernels import dense  # noqa: E402
from core.models import DEFAULT_MODEL, LoadedModel  # noqa: E402
from core.policies import Policy  # noqa: E402
from core.policies.base import LayerView  # noqa: E402
from core.static_step import StaticDecoder  # noqa: E402
from core.tiny import QUICK_MODEL  # noqa: E402

OUT = Path(os.environ.get("OUT") or ROOT / "assets" / "results") / "gpu_issue31.json"  # $OUT on the device machine
LLAMA_8B = {"layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128, "hidden": 4096, "intermediate": 14336,
            "vocab": 128256, "max_context": 131072 + 512}
SMOLLM2 = {"layers": 30, "heads": 9, "kv_heads": 3, "head_dim": 64, "hidden": 576, "intermediate": 1536,
           "vocab": 49152, "max_context": 8192}
TINY = {"layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16, "hidden": 64, "intermediate": 128, "vocab": 128,
        "max_context": 1024}
PROMPT = "Explain in two sentences why the sky is blue."


@dataclass(frozen=True)
class Case:
    """One whole-step comparison: a model shape, a prompt length, a batch, and its goal (x dense)."""

    name: str
    shape: str  # "llama-8b" or "smollm2"
    context: int
    batch: int
    goal: float


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the device's, or the dry run's tiny ones."""

    shapes: dict[str, dict[str, int]]
    cases: list[Case]
    rows: int  # TokenButler's rows per KV head and step
    steps: int  # timed replays per measurement
    kernel: tuple[int, int, int, int, int, int, int]  # batch, query heads, KV heads, head dim, tokens, indices, layers
    splits: list[int | None]  # the sparse kernel's split counts (None: its heuristic)
    model: str
    new_tokens: int  # the real model's greedy tokens
    iters: int  # kernel timings (median)


GPU_PLAN = Plan(
    shapes={"llama-8b": LLAMA_8B, "smollm2": SMOLLM2},
    cases=[Case("8b-32k-b1", "llama-8b", 32768, 1, 1.1), Case("8b-32k-b4", "llama-8b", 32768, 4, 1.5),
           Case("8b-128k-b1", "llama-8b", 131072, 1, 1.5), Case("smollm2-8k-b16", "smollm2", 8192 - 64, 16, 2.0)],
    rows=2048, steps=20, kernel=(4, 32, 8, 128, 32768, 2048, 32), splits=[None, 8, 16, 32, 64],
    model=DEFAULT_MODEL, new_tokens=32, iters=30,
)
DRY_PLAN = Plan(
    shapes={"llama-8b": TINY, "smollm2": {**TINY, "heads": 6, "kv_heads": 3, "hidden": 96}},
    cases=[Case("8b-32k-b1", "llama-8b", 300, 1, 1.1), Case("8b-32k-b4", "llama-8b", 300, 4, 1.5),
           Case("8b-128k-b1", "llama-8b", 700, 1, 1.5), Case("smollm2-8k-b16", "smollm2", 200, 16, 2.0)],
    rows=64, steps=2, kernel=(4, 4, 2, 16, 256, 64, 2), splits=[None], model=QUICK_MODEL, new_tokens=6, iters=2,
)
EAGER_CASE = "8b-32k-b1"  # where the eager dense step, the syncs and the GPU-time split are measured
SELECTION_KERNELS = ("topk", "sort", "radix", "gather_topk")


# ---------------------------------------------------------------- shared helpers


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def free(device: torch.device) -> None:
    if on_cuda(device):
        torch.cuda.empty_cache()


@contextlib.contextmanager
def section(result: dict, name: str, out: Path) -> Iterator[dict]:
    """A JSON section that records its own failure (the run goes on) and is written as soon as it ends."""
    part: dict = {}
    result[name] = part
    start = time.perf_counter()
    try:
        yield part
    except Exception as err:  # each section reports its own failure; the others still run
        part["error"] = f"{type(err).__name__}: {str(err)[:600]}"
        part["traceback"] = traceback.format_exc()[-2000:]
        print(f"{name}: {part['error']}", flush=True)
    part["seconds"] = round(time.perf_counter() - start, 1)
    write(out, result)


def write(out: Path, result: dict) -> None:
    result["goals"] = goals(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))


def ms_per_step(device: torch.device, run: Callable[[], object], steps: int) -> float:
    """Mean ms of `steps` back-to-back calls (CUDA events around them: the host never waits in between)."""
    bench.sync(device)
    if on_cuda(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            run()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / steps
    start_s = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - start_s) * 1e3 / steps


# ---------------------------------------------------------------- 1. kernels


def kernel_section(part: dict, plan: Plan, device: torch.device, bandwidth: float) -> None:
    """Correctness on the GPU, then the sparse kernel per split count and each dense backend, per layer."""
    if on_cuda(device):
        from tests import test_kernels

        part["checks"] = {}
        for name, spec in test_kernels.CASES.items():
            try:
                part["checks"][name] = {"ok": True, "max_err": test_kernels.check_case(spec, "cuda")}
            except Exception as err:  # each case reports its own failure
                part["checks"][name] = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}
    else:
        part["checks"] = "dry run: tests/test_kernels.py runs the Triton kernels under TRITON_INTERPRET=1"
    b, hq, hkv, d, t, k, layers = plan.kernel
    dtype = torch.bfloat16 if on_cuda(device) else torch.float32
    width = torch.finfo(dtype).bits // 8
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, hq, d, generator=gen, device=device).to(dtype)
    caches = [torch.randn(2, b, hkv, t, d, generator=gen, device=device).to(dtype) for _ in range(layers)]
    indices = torch.cat([bench.random_indices(t, hkv, k, device) for _ in range(b)]).contiguous()
    lengths = torch.full((b,), t, device=device)
    scale = d**-0.5
    time_us = bench.make_timer(device, plan.iters, eager=not on_cuda(device))
    part.update(batch=b, heads=hq, kv_heads=hkv, head_dim=d, tokens=t, indices=k, layers=layers,
                dtype=str(dtype), copy_bandwidth_gb_per_s=bandwidth, rows=[])

    def add(kernel: str, option: str, run: Callable[[torch.Tensor, torch.Tensor], object], moved: int) -> None:
        us = time_us(lambda: [run(kv[0], kv[1]) for kv in caches]) / layers
        gbs = moved / (us * 1e-6) / 1e9
        part["rows"].append({"kernel": kernel, "option": option, "us_per_layer": us, "gb_per_s": gbs,
                             "bandwidth_fraction": gbs / bandwidth})

    sparse_bytes = b * hkv * k * (2 * d * width + 8)
    for splits in plan.splits:
        if on_cuda(device):
            from core.kernels import sparse_attention

            def run(kc, vc, s=splits):
                return sparse_attention.sparse_decode_attention(q, kc, vc, indices, scale, None, s)
        else:
            def run(kc, vc):
                return kernels.sparse_decode_attention(q, kc, vc, indices, scale, padded=True)
        add("sparse", "default splits" if splits is None else f"{splits} splits", run, sparse_bytes)
    for backend in dense.available_backends(device.type, dtype):
        add("dense", backend, lambda kc, vc, be=backend: dense.dense_decode_attention(q, kc, vc, scale, lengths, be),
            2 * b * hkv * t * d * width)


# ---------------------------------------------------------------- 2. captured steps


def synthetic_prefill(lm: LoadedModel, batch: int, context: int, seed: int = 0) -> Prefilled:
    """A prompt's prefill with random K/V rows, a random last query and random logits: what the static step
    starts from, at any length, without running a prefill (the step's speed does not depend on the values)."""
    spec, device, dtype = lm.spec, lm.device, lm.dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    cache, views = DynamicCache(), {}
    for layer in range(spec.num_layers):
        keys, values = (torch.randn(batch, spec.num_kv_heads, context, spec.head_dim, generator=gen, device=device)
                        .to(dtype) for _ in range(2))
        cache.update(keys, values, layer)
        query = torch.randn(batch, spec.num_heads, 1, spec.head_dim, generator=gen, device=device).to(dtype)
        views[layer] = LayerView(layer, query, keys, spec.head_dim**-0.5, torch.tensor([context - 1], device=device))
    ids = torch.randint(0, spec.vocab_size, (batch, context), generator=gen, device=device)
    logits = torch.randn(batch, spec.vocab_size, generator=gen, device=device)
    return Prefilled(ids, logits, cache, views, 0.0)


def captured_step(lm: LoadedModel, shared: Prefilled, policy_name: str, rows: int, new: int,
                  dense_backend: str | None = None) -> CapturedStep:
    """The static step of `policy_name` (dense, or at `rows` rows) captured: a CUDA graph, else the CPU twin."""
    policy, _ = bench.build_policy(policy_name, lm)
    policy.reset()
    budget = Budget.dense() if policy_name == "dense" else Budget(tokens=rows)
    decoder = StaticDecoder(lm, shared, policy, budget, new, fused=False, dense_backend=dense_backend)
    return capture(decoder, shared, new, None if on_cuda(lm.device) else eager_replay)


# Each measurement below first loads the prompt back into the step's buffers (StaticDecoder.load), so it
# decodes at most 1 + steps < new tokens: every write stays inside the capacity.


def time_captured(step: CapturedStep, shared: Prefilled, new: int, device: torch.device, steps: int) -> float:
    """ms per replay, back to back (the decode loop without its bookkeeping)."""
    step.decoder.load(shared, new)
    with torch.no_grad(), step.decoder.attached():  # the CPU twin's replays run the hooks
        step(step.token)  # one untimed
        return ms_per_step(device, lambda: step(step.token), steps)


def time_eager(step: CapturedStep, shared: Prefilled, new: int, device: torch.device, steps: int) -> float:
    """ms per eager call of the same step on the same buffers (no graph, no host sync between steps)."""
    decoder = step.decoder
    decoder.load(shared, new)
    token = decoder.first_token.clone()
    with torch.no_grad(), decoder.attached():
        decoder.step(token)
        return ms_per_step(device, lambda: token.copy_(decoder.step(token)), steps)


def count_calls(step: CapturedStep, shared: Prefilled, new: int, device: torch.device, steps: int) -> dict:
    """Host calls per captured step under torch.profiler: sync-like ones (profile_gpu_step.SYNCS), kernel
    launches and graph launches."""
    step.decoder.load(shared, new)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda(device) else [])
    with torch.no_grad(), step.decoder.attached():
        step(step.token)
        bench.sync(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step(step.token)
            bench.sync(device)
    events = prof.key_averages()

    def per_step(names: tuple[str, ...]) -> float:
        return sum(e.count for e in events if e.key in names) / steps

    return {"sync_like_per_step": per_step(profiling.SYNCS) - (1 / steps if on_cuda(device) else 0),
            "kernel_launches_per_step": per_step(profiling.LAUNCHES),
            "graph_launches_per_step": per_step(("cudaGraphLaunch",)),
            "note": "the one cudaDeviceSynchronize after the replays is taken out" if on_cuda(device) else "CPU twin"}


def gpu_time_split(step: CapturedStep, shared: Prefilled, new: int, device: torch.device) -> dict:
    """Where one eager step's GPU time goes (kernel names): attention, top-k/sort, the rest."""
    decoder = step.decoder
    decoder.load(shared, new)
    token = decoder.first_token.clone()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda(device) else [])
    kind = DeviceType.CUDA if on_cuda(device) else DeviceType.CPU
    with torch.no_grad(), decoder.attached():
        decoder.step(token)
        bench.sync(device)
        with profile(activities=activities) as prof:
            decoder.step(token)
            bench.sync(device)
    events = [e for e in prof.key_averages() if e.device_type == kind]
    timed = [(e.key, e.self_device_time_total if on_cuda(device) else e.self_cpu_time_total) for e in events]
    total = sum(t for _, t in timed)

    def share(names: tuple[str, ...]) -> float:
        return sum(t for key, t in timed if any(n in key.lower() for n in names)) / 1e3

    attention = share((*profiling.ATTENTION_KERNELS, "attention", "fmha"))
    selection = share(SELECTION_KERNELS)
    return {"total_ms": total / 1e3, "attention_ms": attention, "topk_sort_ms": selection,
            "rest_ms": total / 1e3 - attention - selection,
            "top": [(key[:80], round(t / 1e3, 4)) for key, t in sorted(timed, key=lambda x: -x[1])[:10]]}


def step_case(lm: LoadedModel, case: Case, plan: Plan) -> dict:
    """Dense (each backend, graph-captured) and TokenButler at plan.rows, captured; speedup over the fastest dense."""
    device, new = lm.device, plan.steps + 8
    shared = synthetic_prefill(lm, case.batch, case.context)
    row: dict = {"case": case.name, "model": case.shape, "context": case.context, "batch": case.batch,
                 "rows": plan.rows, "goal_speedup": case.goal, "dense_ms": {}}
    for backend in dense.available_backends(device.type, lm.dtype):  # one decoder (a cache copy) at a time
        try:
            step = captured_step(lm, shared, "dense", plan.rows, new, backend)
            row["dense_ms"][backend] = time_captured(step, shared, new, device, plan.steps)
        except Exception as err:  # a backend that cannot run this shape says why; the others still count
            row["dense_ms"][backend] = f"{type(err).__name__}: {str(err)[:300]}"
        step = None
        free(device)
    timed = {backend: ms for backend, ms in row["dense_ms"].items() if isinstance(ms, float)}
    if not timed:
        raise RuntimeError(f"no dense backend ran: {row['dense_ms']}")
    row["dense_backend"], row["dense_best_ms"] = min(timed.items(), key=lambda item: item[1])
    if case.name == EAGER_CASE:  # the fastest dense again: its eager twin and its host calls
        step = captured_step(lm, shared, "dense", plan.rows, new, row["dense_backend"])
        row["eager_dense_ms"] = time_eager(step, shared, new, device, plan.steps)
        row["graph_vs_eager_dense"] = row["eager_dense_ms"] / row["dense_best_ms"]
        row["dense_calls"] = count_calls(step, shared, new, device, plan.steps)
        step = None
        free(device)
    sparse = captured_step(lm, shared, "tokenbutler", plan.rows, new)
    row["tokenbutler_ms"] = time_captured(sparse, shared, new, device, plan.steps)
    row["speedup"] = row["dense_best_ms"] / row["tokenbutler_ms"]
    row["tokenbutler_gpu_split"] = gpu_time_split(sparse, shared, new, device)  # does selection show up?
    if case.name == EAGER_CASE:
        row["tokenbutler_calls"] = count_calls(sparse, shared, new, device, plan.steps)
    return row


def steps_section(part: dict, plan: Plan, device: torch.device, out: Path, result: dict) -> None:
    dtype = torch.bfloat16 if on_cuda(device) else torch.float32
    part["rows"] = []
    for shape in dict.fromkeys(c.shape for c in plan.cases):
        lm = bench.random_llama(plan.shapes[shape], device, dtype)
        for case in (c for c in plan.cases if c.shape == shape):
            try:
                row = step_case(lm, case, plan)
            except Exception as err:  # out of memory, say: the row says so, the next case runs
                row = {"case": case.name, "error": f"{type(err).__name__}: {str(err)[:600]}"}
            part["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("tokenbutler_gpu_split",)}, default=str),
                  flush=True)
            free(device)
            write(out, result)
        del lm
        free(device)


# ---------------------------------------------------------------- 3. the real model


def greedy(lm: LoadedModel, policy: Policy, budget: Budget, ids: torch.Tensor, new: int) -> list[int]:
    config = GenerationConfig(max_new_tokens=new, stop_at_eos=False, chat=False)
    return [event.token_id for event in generate(lm, ids, policy, budget, config)]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def model_section(part: dict, plan: Plan, source: str, device: torch.device) -> None:
    """Greedy tokens on the device vs CPU (and device fp32), tokens/s eager and by captured static steps."""
    sizes = dict(bench.RANDOM_SIZES)
    cpu = bench.load_model(source, torch.device("cpu"), "float32", sizes)
    ids = encode_prompt(cpu, PROMPT)
    part.update(source=source, prompt=PROMPT, prompt_tokens=ids.shape[1], new_tokens=plan.new_tokens, rows=[])
    runs = {"cpu-fp32": cpu}
    if on_cuda(device):
        runs["cuda-bf16"] = bench.load_model(source, device, "bfloat16", sizes)
        runs["cuda-fp32"] = bench.load_model(source, device, "float32", sizes)
    target = runs["cuda-bf16"] if on_cuda(device) else cpu
    for name, budget in [("dense", Budget.dense()), ("tokenbutler", Budget.parse("25%"))]:
        policy, note = bench.build_policy(name, target)  # one policy for every run: an untrained one is random
        row: dict = {"policy": name, "budget": budget.label}
        if name == "tokenbutler":
            row["predictor"] = note or "shipped"
        row["tokens"] = {run: greedy(lm, policy, budget, ids, plan.new_tokens) for run, lm in runs.items()}
        for run, tokens in row["tokens"].items():
            row[f"first_divergence_{run}_vs_cpu"] = first_divergence(tokens, row["tokens"]["cpu-fp32"])
        warmup = 2
        row["eager"] = bench.time_decode(target, policy, budget, ids, plan.new_tokens - warmup - 1, warmup)
        pool = StepGraphs(target, policy, budget, record=None if on_cuda(device) else eager_replay,
                          fused=not on_cuda(device))
        pool.generate(ids, plan.new_tokens)  # the capture
        static = pool.generate(ids, plan.new_tokens)  # the same bucket: replays only
        eager_tokens = row["tokens"]["cuda-bf16" if on_cuda(device) else "cpu-fp32"]
        row["captured"] = {"tokens": static.tokens, "tokens_per_s": (plan.new_tokens - 2) / static.seconds,
                           "first_divergence_vs_eager_same_device": first_divergence(static.tokens, eager_tokens)}
        part["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tokens"}, default=str), flush=True)


# ---------------------------------------------------------------- goals and the table


def goals(result: dict) -> list[dict]:
    """Issue 31's goals from what was measured (value None: not measured, or its section failed; met None
    in a dry run too: tiny shapes on a CPU measure nothing)."""
    listed = measured_goals(result)
    if result["meta"]["dry_run"]:
        for goal in listed:
            goal["met"] = None
    return listed


def measured_goals(result: dict) -> list[dict]:
    rows = {r["case"]: r for r in result.get("steps", {}).get("rows", []) if "speedup" in r}
    listed = [{"goal": f"tokenbutler {c} vs graph-captured dense", "target": f">= {goal}x",
               "value": rows.get(c, {}).get("speedup"), "met": None if c not in rows else rows[c]["speedup"] >= goal}
              for c, goal in [("8b-128k-b1", 1.5), ("8b-32k-b4", 1.5), ("8b-32k-b1", 1.1), ("smollm2-8k-b16", 2.0)]]
    probe = rows.get(EAGER_CASE, {})
    syncs = probe.get("tokenbutler_calls", {}).get("sync_like_per_step")
    listed.append({"goal": "sync-like calls per captured step (tokenbutler)", "target": "<= 2", "value": syncs,
                   "met": None if syncs is None else syncs <= 2})
    ratio = probe.get("graph_vs_eager_dense")
    listed.append({"goal": "graph-captured dense vs eager dense, 32k batch 1", "target": ">= 2x", "value": ratio,
                   "met": None if ratio is None else ratio >= 2})
    kernel = [r for r in result.get("kernels", {}).get("rows", []) if r["kernel"] == "sparse"]
    best = max((r["bandwidth_fraction"] for r in kernel), default=None)
    listed.append({"goal": "sparse kernel share of copy bandwidth, 2,048 indices, batch 4, 32k (best split)",
                   "target": ">= 50%", "value": best, "met": None if best is None else best >= 0.5})
    model = result.get("model", {}).get("rows", [])
    equal = [r["policy"] for r in model if len(set(map(tuple, r["tokens"].values()))) == 1]
    listed.append({"goal": "real model on CUDA: tokens/s recorded, greedy tokens equal CPU's",
                   "target": "equal, or divergence explained",
                   "value": {r["policy"]: r["eager"]["tokens_per_s"] for r in model} or None,
                   "met": None if not model else len(equal) == len(model), "equal": equal})
    return listed


def print_table(result: dict) -> None:
    steps = result.get("steps", {}).get("rows", [])
    print("\n| case | dense (fastest, captured) | tokenbutler (captured) | speedup | goal "
          "| eager tokenbutler GPU ms: attention / top-k, sort / rest |")
    print("|---|---|---|---|---|---|")
    for r in steps:
        if "speedup" in r:
            split = r["tokenbutler_gpu_split"]
            print(f"| {r['case']} | {r['dense_best_ms']:.3f} ms ({r['dense_backend']}) | {r['tokenbutler_ms']:.3f} ms "
                  f"| {r['speedup']:.2f}x | {r['goal_speedup']}x | {split['attention_ms']:.3f} / "
                  f"{split['topk_sort_ms']:.3f} / {split['rest_ms']:.3f} |")
        else:
            print(f"| {r['case']} | {r.get('error')} | | | | |")
    kernel = result.get("kernels", {}).get("rows", [])
    if kernel:
        print("\n| kernel | option | us / layer | GB/s | share of copy bandwidth |\n|---|---|---|---|---|")
        for r in kernel:
            print(f"| {r['kernel']} | {r['option']} | {r['us_per_layer']:.1f} | {r['gb_per_s']:.0f} "
                  f"| {r['bandwidth_fraction']:.0%} |")
    print("\n| goal | target | value | met |\n|---|---|---|---|")
    for g in result["goals"]:
        value = g["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else json.dumps(value, default=str)
        print(f"| {g['goal']} | {g['target']} | {shown} | {g['met']} |")


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every code path on CPU, tiny shapes, eager")
    p.add_argument("--gguf", help=f"the real model's GGUF file (default: {DEFAULT_MODEL})")
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT})")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("No CUDA device here: gpu_issue31.py measures a GPU (use --dry-run on CPU).", file=sys.stderr)
        return 2
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    device = torch.device("cpu" if args.dry_run else "cuda")
    torch.manual_seed(0)
    bandwidth = bench.copy_bandwidth_gbs(device, 1 << (20 if args.dry_run else 30), repeats=3 if args.dry_run else 10)
    import transformers
    import triton

    result: dict = {"meta": {
        "dry_run": args.dry_run, "device": torch.cuda.get_device_name() if on_cuda(device) else "cpu",
        "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
        "copy_bandwidth_gb_per_s": bandwidth, "graphs": "torch.cuda.CUDAGraph" if on_cuda(device) else
        "none (dry run: core.graphs.eager_replay, the CPU twin)", "argv": sys.argv[1:]}}
    print(json.dumps(result["meta"]), flush=True)
    with section(result, "kernels", args.out) as part:
        kernel_section(part, plan, device, bandwidth)
    free(device)
    with section(result, "steps", args.out) as part:
        steps_section(part, plan, device, args.out, result)
    with section(result, "model", args.out) as part:
        model_section(part, plan, args.gguf or plan.model, device)
    write(args.out, result)
    print_table(result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
