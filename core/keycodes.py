"""A per-token key summary held as it is stored: 8- or 4-bit codes and one scale per token and KV head
(16 bits: the fp32 values themselves, scale 1).

The codes are `core.keysummary.quantize`'s, what `stored` reads back (symmetric per row, scale in fp16),
kept token-major: codes [R, capacity, C] int8 (4 bits: two channels a byte, [R, capacity, ceil(C / 2)]
uint8, low nibble first, offset by 8) and scales [R, capacity] fp32, R being every (layer, batch, KV
head) row a selection kernel scores at once. Token-major lets the kernel hold a token's codes and the
group's query heads in registers for one dot product each (measured ~2x faster on CPU than
channel-major streaming); the buffers grow by doubling, so appending a decode step's key writes one row.
"""

from __future__ import annotations

import torch

from core.keysummary import check_bits, quantize


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
    """Growing token-major code and scale buffers for `rows` rows of `channels` channels at `bits` bits."""

    def __init__(
        self, rows: int, channels: int, bits: int, capacity: int = 64, device: torch.device | str = "cpu"
    ) -> None:
        self.rows, self.channels, self.bits = rows, channels, check_bits(bits)
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
        self.codes[rows, start:end], self.scales[rows, start:end] = self._encode(values)
        self.length = max(self.length, end)

    def write_at(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Store [R, n, C] values as tokens `positions` ([n], a device tensor) of every row, within the capacity:
        the static decode step's write, with no host sync and no growth."""
        codes, scales = self._encode(values)
        self.codes.index_copy_(1, positions, codes)
        self.scales.index_copy_(1, positions, scales)

    @classmethod
    def over(cls, codes: torch.Tensor, scales: torch.Tensor, bits: int, channels: int) -> KeyCodes:
        """Buffers held elsewhere, seen as a full KeyCodes (an opaque op receives the static step's as tensors)."""
        cache = cls.__new__(cls)
        cache.rows, cache.channels, cache.bits = codes.shape[0], channels, check_bits(bits)
        cache.codes, cache.scales, cache.length = codes, scales, codes.shape[1]
        return cache

    def _encode(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[r, n, C] values -> (codes as the buffer holds them, scales)."""
        codes, scales = quantize(values.to(self.scales.device), self.bits)
        return pack4(codes) if self.bits == 4 else codes, scales

    def holds(self, position: int, values: torch.Tensor) -> bool:
        """Whether token `position` of every row stores [R, 1, C] `values` (a cache left over from another
        sequence does not)."""
        if position >= self.length:
            return False
        codes, scales = self._encode(values)
        return torch.equal(self.codes[:, position : position + 1], codes) and \
            torch.equal(self.scales[:, position : position + 1], scales)

    def values(self, upto: int | None = None, rows: slice = slice(None)) -> torch.Tensor:
        """[r, upto, C] fp32: the stored values read back (for the unfused scoring paths and the tests)."""
        upto = self.length if upto is None else upto
        codes = self.codes[rows, :upto]
        if self.bits == 4:
            codes = unpack4(codes, self.channels)
        return codes.float() * self.scales[rows, :upto, None]
