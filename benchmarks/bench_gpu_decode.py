"""GPU decode speed: dense attention vs our sparse kernels, per layer and end to end (needs CUDA; an H100 in mind).

Layer (Llama-3-8B shapes: 32 query heads, 8 KV heads, head dim 128, bf16, batch 1), for each context and
budget: microseconds per decode step (CUDA events around each call, warm-up, median of --iters; the L2 cache is
flushed before every timed call, since in a real step each layer's cache is cold) and achieved GB/s (bytes that
must be read / time) next to the device's copy bandwidth (a 2 GiB device-to-device copy, read + write):
  dense-sdpa        torch SDPA, flash backend          dense-flash-attn  flash_attn_with_kvcache, when installed
  sparse            our Triton kernel alone            score             Triton scoring, projected keys d=16
  topk              select_topk (torch.topk + sort)    step              score + top-k + sparse attention
Indices for "sparse" are random (sorted, distinct); a first check compares the kernel at budget == context with
dense attention.

End to end: decode tokens/s of an 8B-shaped Llama at a 32k context, dense vs sparse. The model is a minimal
standalone decoder written here (shapes from transformers' LlamaConfig, random bf16 weights): per layer RMSNorm,
fused QKV, RoPE, KV-cache write, attention, O projection, RMSNorm, SwiGLU MLP; then final norm and LM head. The
cache is full of random keys and every step decodes at position T-1 (the last slot is rewritten), i.e. a fixed
context. Sparse = TokenButler-shaped: layer 0 dense; every 4 layers from layer 1 a producer MLP (4096 -> 128 ->
4 layers x 32 heads x 16) predicts projected queries; each sparse layer keeps a [B, 8, T, 16] projected-key cache
(16 channels of the new key), scores it, takes the top-k and runs the sparse kernel. Steps are CUDA graphs
(--eager to launch op by op), so the numbers exclude Python launch overhead, as a serving engine would.

    python benchmarks/bench_gpu_decode.py [--quick] [--contexts 4096,16384] [--budgets 256,2048] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import kernels  # noqa: E402
from core.kernels import dense  # noqa: E402

OUT = ROOT / "assets" / "results" / "gpu_decode.json"
CONTEXTS = [4096, 16384, 32768, 65536, 131072]
BUDGETS = [256, 512, 1024, 2048, 4096, 8192]
HQ, HKV, HEAD_DIM, PROJ_DIM = 32, 8, 128, 16
DTYPE = torch.bfloat16
BF16 = 2  # bytes


def timer(eager: bool, iters: int, flush: torch.Tensor) -> Callable[[Callable[[], object]], float]:
    """Returns time_us(fn): median microseconds of one call, as a CUDA graph replay unless eager."""

    def time_us(fn: Callable[[], object]) -> float:
        run = fn if eager else as_graph(fn)
        for _ in range(3):
            run()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends, strict=True):
            flush.zero_()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)) * 1e3

    return time_us


def as_graph(fn: Callable[[], object]) -> Callable[[], None]:
    """Capture fn in a CUDA graph (after a warm-up on a side stream, which also compiles Triton kernels)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth_gbs(gib: int = 2) -> float:
    """Device-to-device copy, bytes read + written per second, best of 10."""
    src = torch.empty(gib << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / min(times) / 1e9


def layer_inputs(context: int) -> dict[str, torch.Tensor]:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", dtype=DTYPE)

    return {
        "q": rand(1, HQ, HEAD_DIM),
        "k": rand(1, HKV, context, HEAD_DIM),
        "v": rand(1, HKV, context, HEAD_DIM),
        "q_proj": rand(1, HQ, PROJ_DIM),
        "k_proj": rand(1, HKV, context, PROJ_DIM),
    }


def check_full_budget(context: int) -> float:
    """Max |sparse kernel at budget == context - dense SDPA| in bf16 (expect ~1e-2 or less)."""
    x = layer_inputs(context)
    every = torch.arange(context, device="cuda").expand(1, HKV, context).contiguous()
    scale = HEAD_DIM**-0.5
    sparse = kernels.sparse_decode_attention(x["q"], x["k"], x["v"], every, scale)
    reference = dense.sdpa_decode_attention(x["q"], x["k"], x["v"], scale)
    return (sparse.float() - reference.float()).abs().max().item()


def bench_layer(
    context: int, budgets: list[int], time_us: Callable[[Callable[[], object]], float], bandwidth: float
) -> list[dict]:
    """All rows for one context: dense once, scoring once, then sparse / top-k / whole step per budget."""
    x = layer_inputs(context)
    q, k, v, q_proj, k_proj = x["q"], x["k"], x["v"], x["q_proj"], x["k_proj"]
    scale = HEAD_DIM**-0.5
    kv_bytes = 2 * HKV * context * HEAD_DIM * BF16
    score_bytes = HKV * context * (PROJ_DIM * BF16 + 4)  # read projected keys, write fp32 scores
    rows = []

    def row(method: str, budget: int | None, us: float, moved: int) -> None:
        gbs = moved / (us * 1e-6) / 1e9
        rows.append(
            {"context": context, "budget": budget, "method": method, "us": us, "gb_per_s": gbs,
             "bandwidth_fraction": gbs / bandwidth}
        )

    row("dense-sdpa", None, time_us(lambda: dense.sdpa_decode_attention(q, k, v, scale)), kv_bytes)
    if dense.flash_attn_with_kvcache is not None:
        row("dense-flash-attn", None, time_us(lambda: kernels.dense_decode_attention(q, k, v, scale)), kv_bytes)
    row("score", None, time_us(lambda: kernels.score_projected_keys(q_proj, k_proj)), score_bytes)
    scores = kernels.score_projected_keys(q_proj, k_proj)
    for budget in (b for b in budgets if b <= context):
        indices = kernels.select_topk(torch.rand(1, HKV, context, device="cuda"), budget, always_keep_last=False)
        picked_bytes = HKV * budget * (2 * HEAD_DIM * BF16 + 8)  # K and V rows + int64 indices
        topk_bytes = HKV * context * 4

        def step(budget: int = budget) -> torch.Tensor:
            chosen = kernels.select_topk(kernels.score_projected_keys(q_proj, k_proj), budget)
            return kernels.sparse_decode_attention(q, k, v, chosen, scale)

        sparse_us = time_us(lambda i=indices: kernels.sparse_decode_attention(q, k, v, i, scale))
        row("sparse", budget, sparse_us, picked_bytes)
        row("topk", budget, time_us(lambda b=budget: kernels.select_topk(scores, b)), topk_bytes)
        row("step", budget, time_us(step), score_bytes + topk_bytes + picked_bytes)
    return rows


@dataclass(eq=False)
class Layer:
    """One decoder layer's random weights and caches; `producer` is set on predictor layers (1, 5, 9, ...)."""

    index: int
    norm1: torch.Tensor
    qkv: torch.Tensor
    out: torch.Tensor
    norm2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    k_proj: torch.Tensor | None
    producer: tuple[torch.Tensor, torch.Tensor] | None


class DecoderStack:
    """Random-weight Llama-shaped decoder (see the module docstring) decoding one token per step at position T-1."""

    PREDICTOR_GROUP = 4  # layers per producer, as in core.predictor
    PREDICTOR_INNER = 128

    def __init__(self, config: LlamaConfig, context: int, batch: int, device: torch.device | str = "cuda") -> None:
        self.hidden = config.hidden_size
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.batch, self.context = batch, context

        def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
            return torch.randn(*shape, device=device, dtype=DTYPE) * std

        def ones() -> torch.Tensor:
            return torch.ones(self.hidden, device=device, dtype=DTYPE)

        kv_width = self.kv_heads * self.head_dim
        cache = (batch, self.kv_heads, context, self.head_dim)
        predicted = self.PREDICTOR_GROUP * self.heads * PROJ_DIM
        self.layers = [
            Layer(
                index=i,
                norm1=ones(),
                qkv=rand(self.hidden + 2 * kv_width, self.hidden),
                out=rand(self.hidden, self.hidden),
                norm2=ones(),
                gate_up=rand(2 * config.intermediate_size, self.hidden),
                down=rand(self.hidden, config.intermediate_size),
                k_cache=rand(*cache, std=1.0),
                v_cache=rand(*cache, std=1.0),
                k_proj=rand(batch, self.kv_heads, context, PROJ_DIM, std=1.0) if i >= 1 else None,
                producer=(rand(self.PREDICTOR_INNER, self.hidden), rand(predicted, self.PREDICTOR_INNER))
                if i % self.PREDICTOR_GROUP == 1
                else None,
            )
            for i in range(config.num_hidden_layers)
        ]
        self.pred_queries = torch.zeros(batch, self.PREDICTOR_GROUP, self.heads, PROJ_DIM, device=device, dtype=DTYPE)
        self.embed = rand(config.vocab_size, self.hidden, std=1.0)
        self.final_norm = ones()
        self.lm_head = rand(config.vocab_size, self.hidden)
        self.position = torch.tensor([context - 1], device=device)
        self.token = torch.zeros(batch, dtype=torch.long, device=device)
        exponents = torch.arange(0, self.head_dim, 2, device=device) / self.head_dim
        inv_freq = 1.0 / config.rope_parameters["rope_theta"] ** exponents
        angles = (context - 1) * inv_freq.repeat(2)
        self.cos, self.sin = angles.cos().to(DTYPE), angles.sin().to(DTYPE)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos + rotated * self.sin

    def attention(
        self, layer: Layer, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor, budget: int | None
    ) -> torch.Tensor:
        """Dense, or TokenButler-shaped: predicted queries, projected-key cache write, score, top-k, sparse."""
        if budget is None or layer.k_proj is None:
            return kernels.dense_decode_attention(q, layer.k_cache, layer.v_cache, self.scale)
        if layer.producer is not None:
            w1, w2 = layer.producer
            self.pred_queries = (F.silu(h @ w1.T) @ w2.T).view(self.pred_queries.shape)
        q_proj = self.pred_queries[:, (layer.index - 1) % self.PREDICTOR_GROUP]
        layer.k_proj.index_copy_(2, self.position, k[..., :PROJ_DIM])
        chosen = kernels.select_topk(kernels.score_projected_keys(q_proj, layer.k_proj), budget)
        return kernels.sparse_decode_attention(q, layer.k_cache, layer.v_cache, chosen, self.scale)

    def step(self, budget: int | None) -> None:
        """One greedy decode step of every sequence in the batch; the argmax feeds the next step."""
        x = self.embed[self.token]
        kv_width = self.kv_heads * self.head_dim
        for layer in self.layers:
            h = F.rms_norm(x, (self.hidden,), layer.norm1, self.eps)
            q, k, v = (h @ layer.qkv.T).split([self.hidden, kv_width, kv_width], dim=-1)
            q = self.rope(q.view(self.batch, self.heads, self.head_dim))
            k = self.rope(k.view(self.batch, self.kv_heads, 1, self.head_dim))
            layer.k_cache.index_copy_(2, self.position, k)
            layer.v_cache.index_copy_(2, self.position, v.view(self.batch, self.kv_heads, 1, self.head_dim))
            x = x + self.attention(layer, h, q, k, budget).reshape(self.batch, self.hidden) @ layer.out.T
            h = F.rms_norm(x, (self.hidden,), layer.norm2, self.eps)
            gate, up = (h @ layer.gate_up.T).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer.down.T
        logits = F.rms_norm(x, (self.hidden,), self.final_norm, self.eps) @ self.lm_head.T
        self.token.copy_(logits.argmax(dim=-1))


def bench_end_to_end(context: int, budgets: list[int], batch: int, steps: int, eager: bool) -> list[dict]:
    """Tokens/s of DecoderStack, dense first, then one row per budget (speedup relative to dense)."""
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        vocab_size=128256,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
    )
    stack = DecoderStack(config, context, batch)
    rows = []
    for budget in [None, *budgets]:
        run = (lambda b=budget: stack.step(b)) if eager else as_graph(lambda b=budget: stack.step(b))
        for _ in range(3):
            run()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            run()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / steps
        attention = kernels.backend_name("dense") if budget is None else kernels.backend_name()
        rows.append(
            {"context": context, "batch": batch, "budget": budget, "attention": attention, "ms_per_step": ms,
             "tokens_per_s": batch * 1e3 / ms}
        )
    dense_ms = rows[0]["ms_per_step"]
    for row in rows:
        row["speedup"] = dense_ms / row["ms_per_step"]
    return rows


def print_layer_table(rows: list[dict], bandwidth: float) -> None:
    print(
        f"\nLayer: {HQ} query heads, {HKV} KV heads, head dim {HEAD_DIM}, bf16, batch 1; "
        f"copy bandwidth {bandwidth:.0f} GB/s"
    )
    print("| context | budget | method | us/step | GB/s | % of copy bw | vs dense-sdpa |")
    print("|---|---|---|---|---|---|---|")
    dense_us = {r["context"]: r["us"] for r in rows if r["method"] == "dense-sdpa"}
    for r in rows:
        budget = "-" if r["budget"] is None else r["budget"]
        print(
            f"| {r['context']} | {budget} | {r['method']} | {r['us']:.1f} | {r['gb_per_s']:.0f} "
            f"| {r['bandwidth_fraction']:.0%} | {dense_us[r['context']] / r['us']:.2f}x |"
        )


def print_e2e_table(rows: list[dict]) -> None:
    print(f"\nEnd to end: 8B-shaped Llama (32 layers), context {rows[0]['context']}, batch {rows[0]['batch']}")
    print("| attention | budget | ms/step | tokens/s | speedup |\n|---|---|---|---|---|")
    for r in rows:
        budget = "dense" if r["budget"] is None else r["budget"]
        ms, tps = r["ms_per_step"], r["tokens_per_s"]
        print(f"| {r['attention']} | {budget} | {ms:.2f} | {tps:.1f} | {r['speedup']:.2f}x |")


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int_list, help=f"comma-separated context lengths (default {CONTEXTS})")
    parser.add_argument("--budgets", type=int_list, help=f"comma-separated token budgets (default {BUDGETS})")
    parser.add_argument("--quick", action="store_true", help="default contexts 4k,32k and budgets 256,2048; fewer runs")
    parser.add_argument("--iters", type=int, help="timed calls per measurement, median taken (default 200, quick 50)")
    parser.add_argument("--eager", action="store_true", help="launch op by op instead of replaying CUDA graphs")
    parser.add_argument("--e2e-context", type=int, default=32768)
    parser.add_argument("--e2e-budgets", type=int_list, help="default 1024,2048,4096 (quick: 2048)")
    parser.add_argument("--e2e-batch", type=int, default=1)
    parser.add_argument("--e2e-steps", type=int, help="timed decode steps per setting (default 64, quick 16)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end model")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device here: this benchmark needs an NVIDIA GPU (written for an H100). Nothing was measured.")
        return
    quick = args.quick
    contexts = args.contexts or ([4096, 32768] if quick else CONTEXTS)
    budgets = args.budgets or ([256, 2048] if quick else BUDGETS)
    iters = args.iters or (50 if quick else 200)
    e2e_budgets = args.e2e_budgets or ([2048] if quick else [1024, 2048, 4096])
    e2e_steps = args.e2e_steps or (16 if quick else 64)

    torch.manual_seed(0)
    bandwidth = copy_bandwidth_gbs()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # several times the 50 MB L2 of an H100
    time_us = timer(args.eager, iters, flush)
    check = check_full_budget(min(contexts))
    print(f"sparse kernel at budget == context vs dense SDPA: max abs diff {check:.2e} (bf16)")
    layer_rows = []
    for context in contexts:
        layer_rows += bench_layer(context, budgets, time_us, bandwidth)
        torch.cuda.empty_cache()
    print_layer_table(layer_rows, bandwidth)
    e2e_rows = []
    if not args.no_e2e:
        e2e_rows = bench_end_to_end(args.e2e_context, e2e_budgets, args.e2e_batch, e2e_steps, args.eager)
        print_e2e_table(e2e_rows)

    import triton

    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dense_backend": kernels.backend_name("dense"),
        "timing": "eager" if args.eager else "cuda-graph",
        "iters": iters,
        "copy_bandwidth_gb_per_s": bandwidth,
        "full_budget_max_abs_diff": check,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "layer": layer_rows, "end_to_end": e2e_rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
