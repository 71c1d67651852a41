"""Experimental Triton scoring: q'.k' for every past token, max-pooled over the GQA group, in one pass.

Not used by core (TokenButler scores with core.predictor in plain torch); its torch reference and the
device dispatch are in `benchmarks.experimental.scoring`, its CPU tests in tests/test_kernels.py.

Grid (B * Hkv, T / BLOCK_T): each program reads one tile of one KV head's projected keys (d = 16 values
per token, 1/8 of the bytes of K alone at head dim 128) and dots it with all of the group's projected
queries at once (a [16, d] x [d, BLOCK_T] tl.dot, group padded to 16 rows), then keeps the max over the
group. The fusion means the [B, Hq, T] per-query-head scores never reach memory: only [B, Hkv, T] fp32
is written, and the tiles split a long context over every SM like split-K decoding. Top-k stays with
torch.topk (a multi-block radix select on CUDA), see benchmarks.experimental.scoring.select_topk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T = 256  # tokens per program: 256 x 16 dims x 2 bytes = 8 KiB of projected keys
MIN_ROWS = 16  # tl.dot needs >= 16 rows and a reduction dim >= 16


@triton.jit
def _score_kernel(
    q_ptr, k_ptr, len_ptr, out_ptr, num_tokens,
    sq_b, sq_h, sk_b, sk_h, sk_t, so_b, so_h,
    HKV: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_DIM: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // HKV).to(tl.int64)
    kv = (pid % HKV).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_DIM)
    offs_t = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask_g = offs_g < GROUP
    mask_d = offs_d < DIM
    in_cache = offs_t < num_tokens

    q = tl.load(q_ptr + b * sq_b + (kv * GROUP + offs_g)[:, None] * sq_h + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0).to(k_ptr.dtype.element_ty)
    k = tl.load(k_ptr + b * sk_b + kv * sk_h + offs_t[:, None] * sk_t + offs_d[None, :],
                mask=in_cache[:, None] & mask_d[None, :], other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    best = tl.max(tl.where(mask_g[:, None], scores, -float("inf")), axis=0)
    if HAS_LENGTHS:
        best = tl.where(offs_t < tl.load(len_ptr + b), best, -float("inf"))
    tl.store(out_ptr + b * so_b + kv * so_h + offs_t, best, mask=in_cache)


def score_projected_keys(
    q_proj: torch.Tensor, k_proj: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Triton path of benchmarks.experimental.scoring.score_projected_keys.

    [B, Hq, d] x [B, Hkv, T, d] -> [B, Hkv, T] fp32.

    q_proj is rounded to k_proj's dtype for the tensor-core dot; products accumulate in fp32.
    """
    b, hq, dim = q_proj.shape
    hkv, t = k_proj.shape[1], k_proj.shape[2]
    assert q_proj.stride(-1) == 1 and k_proj.stride(-1) == 1, "the projected dim must be contiguous"
    out = torch.empty(b, hkv, t, device=k_proj.device, dtype=torch.float32)
    _score_kernel[(b * hkv, triton.cdiv(t, BLOCK_T))](
        q_proj, k_proj, lengths if lengths is not None else out, out, t,
        q_proj.stride(0), q_proj.stride(1), k_proj.stride(0), k_proj.stride(1), k_proj.stride(2),
        out.stride(0), out.stride(1),
        HKV=hkv, GROUP=hq // hkv, DIM=dim, HAS_LENGTHS=lengths is not None,
        BLOCK_G=max(MIN_ROWS, triton.next_power_of_2(hq // hkv)),
        BLOCK_DIM=max(MIN_ROWS, triton.next_power_of_2(dim)), BLOCK=BLOCK_T,
        PRECISION="ieee" if k_proj.dtype == torch.float32 else "tf32",
        num_warps=4,
    )
    return out
