"""Fused selection on CPU: score stored key codes against a step's queries and keep each row's top-k.

A decode step of a summary-scoring method (TokenButler's key channels, Double Sparsity's label cache)
reads one code per channel and token, scores it against every query head of the KV head's group, pools
the heads and keeps the best `keep` tokens. Unfused, torch converts the whole code cache to fp32, runs a
matmul, pools, and runs a top-k: four passes over context-sized tensors and a dozen small ops per
group. Here one numba kernel (parallel over rows) does it in a single pass over the codes, in their
stored 8 or 4 bits, accumulating in fp32 registers, then a partial selection (np.partition) finds the
cut and one more pass writes the chosen indices in cache order.

Rows R are every (layer, batch, KV head) scored at once. Pools:
- "max": max over the group's heads of the logits (TokenButler);
- "softmax-mean": mean over the heads of each head's softmax over tokens [0, total) (Double Sparsity).
Ties at the cut go to the earlier token, exactly as `core.policies.base.topk_sorted`. Where numba is
missing or cannot compile, `select_topk` runs the plain-torch `select_reference` (tested equal).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.keycodes import KeyCodes
from core.keysummary import SUMMARY_BITS

POOLS = ("max", "softmax-mean")
log = logging.getLogger(__name__)


def pooled_scores(
    cache: KeyCodes, queries: torch.Tensor, multiplier: float, upto: int, total: int | torch.Tensor, pool: str = "max"
) -> torch.Tensor:
    """Plain torch: [R, H, C] queries against the first `upto` stored tokens -> [R, upto] pooled scores, the
    softmax pool normalised over tokens [0, total) (`total` may be a device tensor: the static step's length)."""
    values = cache.values(upto)  # [R, upto, C]
    logits = torch.matmul(queries.float(), values.transpose(-1, -2)) * multiplier  # [R, H, upto]
    if pool == "max":
        return logits.amax(dim=1)
    if pool == "softmax-mean":
        beyond = torch.arange(upto, device=logits.device) >= total
        return torch.softmax(logits.masked_fill(beyond, float("-inf")), dim=-1).mean(dim=1)
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")


def select_reference(
    cache: KeyCodes, queries: torch.Tensor, multiplier: float, keep: int, start: int, stop: int, total: int,
    pool: str = "max",
) -> torch.Tensor:
    """Plain torch: [R, H, C] fp32 queries -> [R, keep] ascending token indices in [start, stop)."""
    span = pooled_scores(cache, queries, multiplier, total, total, pool)[:, start:stop]
    return span.argsort(dim=-1, descending=True, stable=True)[:, :keep].sort(dim=-1).values + start


@functools.cache
def _kernels() -> tuple[Callable, Callable, Callable] | None:
    """The compiled numba kernels (scoring one code a channel, scoring packed 4-bit codes, taking),
    compiled on first use and cached on disk, or None where they cannot build."""
    try:
        import numba
    except ImportError:
        log.info("numba is not installed: selection runs in plain torch")
        return None

    def scorer(packed: bool) -> Callable:
        """The scoring kernel for packed 4-bit codes or for one code a channel (8-bit ints, 16-bit floats);
        `packed` is a compile-time constant, so each kernel holds only its own branch."""

        @numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
        def score(codes, scales, queries, multiplier, start, stop, total, softmax, out):
            """out [R, stop - start] pooled scores; queries [R, H, C'] with C' = 2 * planes when packed."""
            rows, heads, _ = queries.shape
            planes = codes.shape[2]
            for r in numba.prange(rows):
                lo = 0 if softmax else start
                hi = total if softmax else stop
                logits = np.empty((heads, hi - lo), np.float32)
                for t in range(lo, hi):  # one token's codes meet every head of the group while in registers
                    code = codes[r, t]
                    for h in range(heads):
                        q = queries[r, h]
                        acc = np.float32(0.0)
                        if packed:
                            for c in range(planes):
                                low, high = np.float32((code[c] & 15) - 8), np.float32((code[c] >> 4) - 8)
                                acc += q[2 * c] * low + q[2 * c + 1] * high
                        else:
                            for c in range(planes):
                                acc += q[c] * np.float32(code[c])
                        logits[h, t - lo] = acc * (scales[r, t] * multiplier)
                if softmax:
                    out[r] = 0.0
                    for h in range(heads):
                        top = logits[h].max()
                        lse = top + np.log(np.exp(logits[h] - top).sum())
                        for t in range(start, stop):
                            out[r, t - start] += np.exp(logits[h, t] - lse) / heads
                else:
                    for t in range(stop - start):
                        best = logits[0, t]
                        for h in range(1, heads):
                            best = max(best, logits[h, t])
                        out[r, t] = best

        return score

    @numba.njit(parallel=True, cache=True, nogil=True)
    def take(scores, cuts, keep, start, out):
        """out [R, keep]: each row's tokens above its cut, then those at the cut, earliest first, in cache order."""
        rows, m = scores.shape
        for r in numba.prange(rows):
            cut = cuts[r]
            ties = keep
            for i in range(m):
                if scores[r, i] > cut:
                    ties -= 1
            j = 0
            for i in range(m):
                s = scores[r, i]
                if j < keep and (s > cut or (s == cut and ties > 0)):  # j < keep: never past `out`, even for NaN
                    if s == cut:
                        ties -= 1
                    out[r, j] = start + i
                    j += 1

    return scorer(False), scorer(True), take


def backend() -> str:
    """"numba" when the fused kernel is built here, "torch" otherwise."""
    return "numba" if _kernels() is not None else "torch"


def select_topk(
    cache: KeyCodes, queries: torch.Tensor, multiplier: float, keep: int, start: int, stop: int, total: int,
    pool: str = "max",
) -> torch.Tensor:
    """[R, keep] ascending indices in [start, stop) of the best pooled scores of `queries` [R, H, C] against
    the codes of tokens [0, total) (`total` matters to the softmax pool only), scaled by `multiplier`.

    `keep` must be in [1, stop - start]."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")
    if not 1 <= keep <= stop - start or not 0 <= start < stop <= total <= cache.length:
        raise ValueError(f"keep={keep}, start={start}, stop={stop}, total={total} for {cache.length} stored tokens.")
    kernels = _kernels()
    if kernels is None or queries.device.type != "cpu":
        return select_reference(cache, queries, multiplier, keep, start, stop, total, pool)
    import numba

    score = kernels[1] if cache.bits == 4 else kernels[0]
    take = kernels[2]
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    wanted = cache.codes.shape[2] * (2 if cache.bits == 4 else 1)  # padded to whole bytes at 4 bits
    queries = queries.float()
    if queries.shape[-1] < wanted:
        queries = torch.nn.functional.pad(queries, (0, wanted - queries.shape[-1]))
    m = stop - start
    scores = np.empty((cache.rows, m), np.float32)
    score(cache.codes.numpy(), cache.scales.numpy(), np.ascontiguousarray(queries.numpy()), np.float32(multiplier),
          start, stop, total, pool == "softmax-mean", scores)
    cuts = np.partition(scores, m - keep, axis=-1)[:, m - keep]  # numpy's introselect: one call for every row
    out = np.empty((cache.rows, keep), np.int64)
    take(scores, cuts, keep, start, out)
    if torch.get_num_threads() != threads:  # numba's OpenMP layer resets the process's count: torch's too
        torch.set_num_threads(threads)
    return torch.from_numpy(out)


def warm_up() -> str:
    """Compile every kernel variant on a tiny case (numba loads them from its disk cache after the first
    run), so a page or CLI compiles before its first visitor, not during a generation; returns `backend()`."""
    queries = torch.ones(2, 3, 8)
    for bits in SUMMARY_BITS:
        cache = KeyCodes(2, 8, bits)
        cache.write(0, torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0)))
        for pool in POOLS:
            select_topk(cache, queries, 1.0, 4, 2, 14, 16, pool)
    return backend()


@torch.library.custom_op("tokenbutler_studio::select_padded", mutates_args=())
def _select_padded(
    codes: torch.Tensor, scales: torch.Tensor, queries: torch.Tensor, multiplier: float, bits: int,
    count: torch.Tensor, start: int, stop: torch.Tensor, total: torch.Tensor, width: int, pool: str,
) -> torch.Tensor:
    """`select_topk` for the static decode step, an opaque op to torch.compile: the device-side `count`,
    `stop` and `total` are read here, outside the traced graph (on CPU a read, not a device sync)."""
    keep, stop_at, total_at = int(count), int(stop), int(total)
    out = torch.full((codes.shape[0], width), -1, dtype=torch.long)
    if keep > 0:
        cache = KeyCodes.over(codes, scales, bits, queries.shape[-1])
        out[:, :keep] = select_topk(cache, queries, multiplier, keep, start, stop_at, total_at, pool)
    return out.to(codes.device)


@_select_padded.register_fake
def _(codes, scales, queries, multiplier, bits, count, start, stop, total, width, pool) -> torch.Tensor:
    return codes.new_empty((codes.shape[0], width), dtype=torch.long)


@dataclass
class CodeQuery:
    """One static decode step's scoring of stored codes: `queries` [R, H, C] against the R rows of `cache`
    (its whole capacity), scaled by `multiplier` and pooled over the H heads."""

    cache: KeyCodes
    queries: torch.Tensor
    multiplier: float
    pool: str

    def scores(self, total: torch.Tensor) -> torch.Tensor:
        """[R, capacity] pooled scores in plain torch (the softmax over the `total` live tokens)."""
        return pooled_scores(self.cache, self.queries, self.multiplier, self.cache.codes.shape[1], total, self.pool)

    def select(
        self, count: torch.Tensor, start: int, stop: torch.Tensor, total: torch.Tensor, width: int
    ) -> torch.Tensor:
        """The fused selection: [R, width] indices, the best `count` (a device tensor, <= width) in [start, stop)
        ascending and -1 after them; what `select_topk` chooses (numba, or its torch fallback)."""
        cache = self.cache
        return _select_padded(cache.codes, cache.scales, self.queries.float(), self.multiplier, cache.bits, count,
                              start, stop, total, width, self.pool)
