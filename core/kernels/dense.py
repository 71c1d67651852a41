"""Dense decode attention, the baseline the sparse kernels must beat: flash-attn when installed, else SDPA.

On CUDA, flash-attn's `flash_attn_with_kvcache` reads our [B, Hkv, T, D] cache through a transposed view
(it only needs the head dim contiguous), handles GQA natively and takes `lengths` as `cache_seqlens`.
Without it, torch SDPA with `enable_gqa` and the flash backend tried first; SDPA's flash backend takes no
mask, so `lengths` pushes SDPA onto a backend that does not split the keys at decode (one program per
head: 32 of 132 SMs for an 8B model at batch 1); there the Triton split-K kernel over the live rows
(`core.kernels.sparse_attention.dense_decode_attention`, "triton") runs instead, as the captured static
step needs (a device-side length, a fixed grid). Off CUDA the plain-torch reference runs (one SDPA per GQA
group, reading the cache in place), the same math as the CPU sparse path over gathered rows.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.kernels import reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
try:
    from flash_attn import flash_attn_with_kvcache
except ImportError:
    flash_attn_with_kvcache = None

SDPA_PRIORITY = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


DENSE_BACKENDS = ("flash-attn", "triton", "sdpa", "torch-reference")


def dense_backend(device_type: str, dtype: torch.dtype = torch.bfloat16, masked: bool = False) -> str:
    """Which implementation `dense_decode_attention` uses for tensors of this device type and dtype, with
    (`masked`) or without lengths."""
    if device_type != "cuda":
        return "torch-reference"
    if flash_attn_with_kvcache is not None and dtype in (torch.float16, torch.bfloat16):
        return "flash-attn"
    return "triton" if masked and HAS_TRITON else "sdpa"


def available_backends(device_type: str, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """Every backend that can run here (a benchmark times them all and compares against the fastest)."""
    if device_type != "cuda":
        return ["torch-reference"]
    usable = {"flash-attn": flash_attn_with_kvcache is not None and dtype in (torch.float16, torch.bfloat16),
              "triton": HAS_TRITON, "sdpa": True, "torch-reference": False}
    return [name for name in DENSE_BACKENDS if usable[name]]


def sdpa_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """torch SDPA over the whole cache, flash backend first (on CUDA it needs no mask, fp16/bf16, D <= 256)."""
    mask = None
    if lengths is not None:
        positions = torch.arange(k_cache.shape[2], device=k_cache.device)
        mask = (positions < lengths.to(k_cache.device)[:, None])[:, None, None, :]
    with sdpa_kernel(SDPA_PRIORITY, set_priority=True):
        out = F.scaled_dot_product_attention(
            q[:, :, None, :], k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=True
        )
    return out[:, :, 0, :]


def _flash_attn_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float, lengths: torch.Tensor | None
) -> torch.Tensor:
    seqlens = None if lengths is None else lengths.to(device=q.device, dtype=torch.int32)
    out = flash_attn_with_kvcache(
        q[:, None], k_cache.transpose(1, 2), v_cache.transpose(1, 2), cache_seqlens=seqlens, softmax_scale=scale
    )
    return out[:, 0]


def dense_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    lengths: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """q [B, Hq, D] over every cached position of k/v [B, Hkv, T, D] (< lengths[b] if given) -> [B, Hq, D];
    `backend` (one of `available_backends`) overrides the choice of `dense_backend`."""
    backend = backend or dense_backend(q.device.type, q.dtype, masked=lengths is not None)
    if backend == "flash-attn":
        return _flash_attn_decode(q, k_cache, v_cache, scale, lengths)
    if backend == "triton":
        from core.kernels import sparse_attention

        return sparse_attention.dense_decode_attention(q, k_cache, v_cache, scale, lengths)
    if backend == "sdpa":
        return sdpa_decode_attention(q, k_cache, v_cache, scale, lengths)
    return reference.dense_decode_attention(q, k_cache, v_cache, scale, lengths)
