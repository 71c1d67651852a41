"""Decode kernels for query-aware KV-cache sparsity: the public API and its device dispatch.

At each decode step every KV head reads only its selected past tokens; the cache itself stays whole.
CUDA tensors go to the Triton kernel (`sparse_attention`), everything else to the plain-torch reference
in `reference`, which is the CPU production path too. Dense attention lives in `dense`. These are what
core.attention runs; the experimental scoring / top-k kernels live in benchmarks/experimental/. See
docs/kernels.md.
"""

from __future__ import annotations

from typing import Literal

import torch

from core.kernels import reference
from core.kernels.dense import HAS_TRITON, dense_backend, dense_decode_attention
from core.kernels.reference import gather_kv

__all__ = [
    "backend_name",
    "dense_decode_attention",
    "gather_kv",
    "sparse_decode_attention",
]


def _on_triton(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and HAS_TRITON


def sparse_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    lengths: torch.Tensor | None = None,
    padded: bool | None = None,
) -> torch.Tensor:
    """Decode attention over each KV head's selected rows.

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T, D]; indices: int64 [B, Hkv, K], selected positions per KV
    head (ascending; -1 = padding, ignored). Query head h reads KV head h // (Hq // Hkv) (transformers'
    repeat_kv convention). lengths: optional int [B]; positions >= lengths[b] are never read. Every row needs
    at least one valid index. Returns [B, Hq, D] in q's dtype; softmax in fp32. `padded`: whether `indices`
    may hold -1 (None: look, a host sync off Triton; the static decode step says True).
    """
    if _on_triton(q):
        from core.kernels import sparse_attention

        return sparse_attention.sparse_decode_attention(q, k_cache, v_cache, indices, scale, lengths)
    return reference.sparse_decode_attention(q, k_cache, v_cache, indices, scale, lengths, padded)


def backend_name(kind: Literal["sparse", "dense"] = "sparse") -> str:
    """What runs on this machine's preferred device: "triton" or "torch-reference" for the sparse kernels,
    "flash-attn", "sdpa" or "torch-reference" for dense attention (bf16)."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "dense":
        return dense_backend(device_type)
    return "triton" if device_type == "cuda" and HAS_TRITON else "torch-reference"
