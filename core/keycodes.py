"""A per-token key summary held as it is stored: 8- or 4-bit codes and one scale per token and KV head
(16 bits: the fp32 values themselves, scale 1).

The codes are what `core.keysummary.stored` reads back (symmetric per row, the scale rounded to fp16),
kept token-major: codes [R, capacity, C] int8 (4 bits: two channels a byte, [R, capacity, ceil(C / 2)]
uint8, low nibble first, offset by 8) and scales [R, capacity] fp32, R being every (layer, batch, KV
head) row a selection kernel scores at once. Token-major lets the kernel hold a token's codes and the
group's query heads in registers for one dot product each (measured ~2x faster on CPU than
channel-major streaming); the buffers grow by doubling, so appending a decode step's key writes one row.
"""

from __future__ import annotations

import torch

CODE_BITS = (16, 8, 4)


def quantize(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C] rows -> (codes [..., C], fp32 scales [...]) with codes * scale ==
    `core.keysummary.stored(values, bits)` in fp32: int8 codes in [-top, top] below 16 bits."""
    if bits not in CODE_BITS:
        raise ValueError(f"Key codes are stored at {CODE_BITS} bits, got {bits}.")
    if bits == 16:
        return values.float(), values.new_ones(values.shape[:-1], dtype=torch.float32)
    top = 2 ** (bits - 1) - 1
    wide = values.float()
    scale = (wide.abs().amax(dim=-1, keepdim=True) / top).half().float().clamp_min(torch.finfo(torch.float16).tiny)
    codes = (wide / scale).round().clamp(-top, top).to(torch.int8)
    return codes, scale.squeeze(-1)


def pack4(codes: torch.Tensor) -> torch.Tensor:
    """[..., C] int8 codes in [-7, 7] -> [..., ceil(C / 2)] uint8, channel 2i in the low nibble (an odd
    count is padded with a zero code)."""
    if codes.shape[-1] % 2:
        codes = torch.cat([codes, codes.new_zeros(*codes.shape[:-1], 1)], dim=-1)
    shifted = (codes.to(torch.int16) + 8).to(torch.uint8)
    return shifted[..., 0::2] | (shifted[..., 1::2] << 4)


def unpack4(packed: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of `pack4`: [..., ceil(C / 2)] uint8 -> [..., C] int8."""
    low = (packed & 15).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)[..., :channels]


class KeyCodes:
    """Growing channel-major code and scale buffers for `rows` rows of `channels` channels at `bits` bits."""

    def __init__(
        self, rows: int, channels: int, bits: int, capacity: int = 64, device: torch.device | str = "cpu"
    ) -> None:
        if bits not in CODE_BITS:
            raise ValueError(f"Key codes are stored at {CODE_BITS} bits, got {bits}.")
        self.rows, self.channels, self.bits = rows, channels, bits
        planes = (channels + 1) // 2 if bits == 4 else channels
        dtype = {16: torch.float32, 8: torch.int8, 4: torch.uint8}[bits]
        self.codes = torch.zeros(rows, capacity, planes, dtype=dtype, device=device)
        self.scales = torch.zeros(rows, capacity, device=device)
        self.length = 0  # tokens written in the longest row

    def write(self, start: int, values: torch.Tensor, rows: slice = slice(None)) -> None:
        """Store [r, n, C] values as tokens start .. start + n of `rows` (overwriting any held there, growing
        as needed)."""
        end = start + values.shape[1]
        if end > self.codes.shape[1]:
            grown = max(end, 2 * self.codes.shape[1])
            codes = self.codes.new_zeros(self.rows, grown, self.codes.shape[2])
            scales = self.scales.new_zeros(self.rows, grown)
            codes[:, : self.length] = self.codes[:, : self.length]
            scales[:, : self.length] = self.scales[:, : self.length]
            self.codes, self.scales = codes, scales
        codes, scales = quantize(values.to(self.scales.device), self.bits)
        self.codes[rows, start:end] = pack4(codes) if self.bits == 4 else codes
        self.scales[rows, start:end] = scales
        self.length = max(self.length, end)

    def holds(self, position: int, values: torch.Tensor) -> bool:
        """Whether token `position` of every row stores [R, 1, C] `values` (a cache left over from another
        sequence does not)."""
        if position >= self.length:
            return False
        codes, scales = quantize(values.to(self.scales.device), self.bits)
        return torch.equal(self.codes[:, position : position + 1], pack4(codes) if self.bits == 4 else codes) and \
            torch.equal(self.scales[:, position : position + 1], scales)

    def values(self, upto: int | None = None, rows: slice = slice(None)) -> torch.Tensor:
        """[r, upto, C] fp32: the stored values read back (for the unfused scoring paths and the tests)."""
        upto = self.length if upto is None else upto
        codes = self.codes[rows, :upto]
        if self.bits == 4:
            codes = unpack4(codes, self.channels)
        return codes.float() * self.scales[rows, :upto, None]
