"""Triton decode attention over selected token indices (split-K "flash-decoding", GQA-grouped), and the same
kernel over every live row (dense), the baseline a captured decode step compares against.

Stage 1, grid (B * Hkv, splits): one program takes a chunk of one KV head's rows (its selected indices, or
positions start.. for dense), gathers those K/V rows once for the whole GQA group (the group's query heads
are the rows of a tl.dot tile, padded to 16), and runs an online softmax in fp32; it writes a normalised
partial output and its log-sum-exp. Stage 2, grid (B * Hq,): merges the splits of one query head.
Splitting the rows over programs keeps the GPU busy at batch 1, where B * Hkv alone (8 for an 8B model)
would fill a few SMs out of 132. Each tile's gather needs its indices first, so the next tile's indices are
loaded before this tile's rows (a software prefetch): the index load no longer sits in front of every
gather. On an H200 the kernel moved 15% of copy bandwidth at 32k / 2,048 indices with that load in front;
benchmarks/gpu_issue31.py measures what the prefetch and the split count change (issue 31).
Padding (-1) and positions >= lengths[b] are masked out of the loads, so they are never read; dense splits
past the live length stop before their first load, so a fixed-capacity cache costs only its live rows.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

BLOCK_N = 32  # indices per inner step; with 4 warps: 113 registers, no spills (sm_90, D=128, bf16)
MIN_ROWS = 16  # tl.dot needs >= 16 rows; smaller GQA groups are padded with masked rows


@triton.jit
def _tile_rows(idx_base, offs_n, end, HAS_INDICES: tl.constexpr):
    """The cache rows of one tile: its selected indices, or (dense) the positions themselves; -1 past `end`."""
    if HAS_INDICES:
        return tl.load(idx_base + offs_n, mask=offs_n < end, other=-1)
    return tl.where(offs_n < end, offs_n, -1)


@triton.jit
def _sparse_decode_stage1(
    q_ptr, k_ptr, v_ptr, idx_ptr, len_ptr, mid_o_ptr, mid_lse_ptr,
    scale, num_idx, chunk,
    sq_b, sq_h, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, si_b, si_h, so_b, so_h, so_s, sl_b, sl_h,
    HKV: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    HAS_INDICES: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    kv = (pid % HKV).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kv * GROUP + offs_g

    q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0).to(k_ptr.dtype.element_ty)
    length = 2**62
    if HAS_LENGTHS:
        length = tl.load(len_ptr + b)
    k_base = k_ptr + b * sk_b + kv * sk_h
    v_base = v_ptr + b * sv_b + kv * sv_h
    idx_base = idx_ptr + b * si_b + kv * si_h

    m_i = tl.full([BLOCK_G], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    start = split * chunk
    end = tl.minimum(start + chunk, num_idx)
    if not HAS_INDICES:
        end = tl.minimum(end, length).to(tl.int32)  # dense: rows past the live length are never visited
    offs = tl.arange(0, BLOCK)
    upcoming = _tile_rows(idx_base, start + offs, end, HAS_INDICES)
    for n0 in range(start, end, BLOCK):
        idx = upcoming
        upcoming = _tile_rows(idx_base, n0 + BLOCK + offs, end, HAS_INDICES)  # in flight during this gather
        valid = (idx >= 0) & (idx < length)
        rows = tl.where(valid, idx, 0).to(tl.int32)  # int32 row offsets: half the registers of int64 pointers
        kv_mask = valid[:, None] & mask_d[None, :]
        k = tl.load(k_base + rows[:, None] * sk_t + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + rows[:, None] * sv_t + offs_d[None, :], mask=kv_mask, other=0.0)

        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        logits = tl.where(valid[None, :], logits, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a tile with nothing valid yet: no NaN
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(logits - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    has_mass = l_i > 0  # False only for a split whose indices are all padding or beyond the length
    l_safe = tl.where(has_mass, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_mass, m_i + tl.log(l_safe), -float("inf"))
    o_off = b * so_b + heads[:, None] * so_h + split * so_s + offs_d[None, :]
    tl.store(mid_o_ptr + o_off, out, mask=mask_g[:, None] & mask_d[None, :])
    tl.store(mid_lse_ptr + b * sl_b + heads * sl_h + split, lse, mask=mask_g)


@triton.jit
def _sparse_decode_stage2(
    mid_o_ptr, mid_lse_ptr, out_ptr, splits,
    so_b, so_h, so_s, sl_b, sl_h, sout_b, sout_h,
    HQ: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // HQ).to(tl.int64)
    h = (pid % HQ).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < splits
    mask_d = offs_d < HEAD_DIM

    lse = tl.load(mid_lse_ptr + b * sl_b + h * sl_h + offs_s, mask=mask_s, other=-float("inf"))
    top = tl.max(lse, axis=0)
    weight = tl.exp(lse - tl.where(top == -float("inf"), 0.0, top))
    parts = tl.load(mid_o_ptr + b * so_b + h * so_h + offs_s[:, None] * so_s + offs_d[None, :],
                    mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    total = tl.sum(weight, axis=0)
    out = tl.sum(parts * weight[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * sout_b + h * sout_h + offs_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(batch_kv_heads: int, num_idx: int, device: torch.device) -> int:
    """Enough splits for ~4 programs per SM, never a split smaller than one BLOCK_N tile."""
    sms = _sm_count(device) if device.type == "cuda" else 4  # off CUDA (the interpreter) any small number does
    wanted = triton.cdiv(4 * sms, batch_kv_heads)
    return max(1, min(wanted, triton.cdiv(num_idx, BLOCK_N)))


def sparse_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    lengths: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Triton path of core.kernels.sparse_decode_attention; `num_splits` overrides the split-K heuristic."""
    assert indices.stride(-1) == 1, "indices must be contiguous along K"
    return _split_k(q, k_cache, v_cache, indices, indices.shape[-1], scale, lengths, num_splits)


def dense_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    lengths: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Every row < lengths[b] of the cache, split-K (the "triton" backend of core.kernels.dense): a device-side
    length and a fixed grid, so a captured step reads its live rows only, which SDPA with a mask cannot."""
    return _split_k(q, k_cache, v_cache, None, k_cache.shape[2], scale, lengths, num_splits)


def _split_k(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indices: torch.Tensor | None,
    num_idx: int,
    scale: float,
    lengths: torch.Tensor | None,
    num_splits: int | None,
) -> torch.Tensor:
    """Both stages over `num_idx` rows per KV head: `indices`' entries, or positions 0.. when None."""
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and q.stride(-1) == 1, "head dim must be contiguous"
    assert k_cache.shape[2] * max(k_cache.stride(2), v_cache.stride(2)) < 2**31, "row offsets are int32"
    splits = num_splits or default_splits(b * hkv, num_idx, q.device)
    chunk = triton.cdiv(triton.cdiv(num_idx, splits), BLOCK_N) * BLOCK_N
    splits = max(1, triton.cdiv(num_idx, chunk))
    mid_o = torch.empty(b, hq, splits, d, device=q.device, dtype=torch.float32)
    mid_lse = torch.empty(b, hq, splits, device=q.device, dtype=torch.float32)
    out = torch.empty(b, hq, d, device=q.device, dtype=q.dtype)
    idx_arg = k_cache if indices is None else indices  # never read without indices
    idx_strides = (0, 0) if indices is None else (indices.stride(0), indices.stride(1))
    # read at len_ptr + b: one per row, so an expanded length (the static step's) is laid out first
    len_arg = lengths.contiguous() if lengths is not None else idx_arg  # never read without lengths
    block_d = triton.next_power_of_2(d)
    _sparse_decode_stage1[(b * hkv, splits)](
        q, k_cache, v_cache, idx_arg, len_arg, mid_o, mid_lse,
        scale, num_idx, chunk,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), *idx_strides,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        HKV=hkv, GROUP=hq // hkv, HEAD_DIM=d, HAS_LENGTHS=lengths is not None, HAS_INDICES=indices is not None,
        BLOCK_G=max(MIN_ROWS, triton.next_power_of_2(hq // hkv)), BLOCK_D=block_d, BLOCK=BLOCK_N,
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",  # no TF32 rounding of fp32 caches
        num_warps=4, num_stages=2,
    )
    _sparse_decode_stage2[(b * hq,)](
        mid_o, mid_lse, out, splits,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        HQ=hq, HEAD_DIM=d, BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d,
        num_warps=4,
    )
    return out
