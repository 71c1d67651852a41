"""How a per-token key summary (a label cache, a predictor's key channels) is stored: as is at 16 bits, or
at 8 or 4 bits with one 16-bit scale per token and KV head, so more channels fit in the same bytes.

Quantization is symmetric per row (one token of one KV head): the row's largest magnitude maps to the
largest code, the scale is kept in fp16, and the codes are formed in fp32 whatever the input's dtype,
so training and decoding store a key the same way. Scoring reads the dequantized values, exactly what
a kernel over the codes would compute.
"""

from __future__ import annotations

import torch

SUMMARY_BITS = (16, 8, 4)


def check_bits(bits: int) -> int:
    if bits not in SUMMARY_BITS:
        raise ValueError(f"A key summary is stored at {', '.join(map(str, SUMMARY_BITS))} bits, got {bits}.")
    return bits


def quantize(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., r] summary rows -> (codes [..., r], fp32 scales [...]) as they are stored: int8 codes in
    [-top, top] below 16 bits, the fp32 values with scale 1 at 16 bits."""
    if check_bits(bits) == 16:
        return values.float(), values.new_ones(values.shape[:-1], dtype=torch.float32)
    top = 2 ** (bits - 1) - 1
    wide = values.float()
    scale = (wide.abs().amax(dim=-1, keepdim=True) / top).half().float().clamp_min(torch.finfo(torch.float16).tiny)
    return (wide / scale).round().clamp(-top, top).to(torch.int8), scale.squeeze(-1)


def stored(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., r] summary rows -> the values read back after storing them at `bits` (16: unchanged)."""
    if check_bits(bits) == 16:
        return values
    codes, scale = quantize(values, bits)
    return (codes.float() * scale[..., None]).to(values.dtype)


def values_per_token(channels: int, bits: int) -> float:
    """16-bit values' worth of storage per token and KV head: the codes, and the scale below 16 bits."""
    return channels * check_bits(bits) / 16 + (bits < 16)
