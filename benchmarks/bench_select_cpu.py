"""The fused CPU selection against the torch path it replaced, on one producer group's shapes.

    python benchmarks/bench_select_cpu.py            # 12 rows (4 layers x 3 KV heads), 32 channels, 10% kept

Per context: the numba kernel over 8- and 4-bit codes (`core.kernels.select_cpu.select_topk`), and the
torch path TokenButler ran before it (an fp32 channel-major key cache, one matmul, max over the group,
`topk_sorted`), one thread, best of 5 rounds of 50 calls. Writes assets/results/select_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.args import split_ints
from core.kernels.select_cpu import backend, select_topk, warm_up
from core.keycodes import KeyCodes
from core.policies.base import topk_sorted

OUT = Path(__file__).resolve().parent.parent / "assets" / "results" / "select_cpu.json"
ROWS, HEADS, CHANNELS, SINKS, RECENT = 12, 3, 32, 4, 4


def best_ms(call: Callable[[], object], rounds: int = 5, calls: int = 50) -> float:
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - started) / calls * 1e3)
    return min(times)


def measure(tokens: int) -> dict[str, float]:
    values = torch.randn(ROWS, tokens, CHANNELS, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(ROWS, HEADS, CHANNELS, generator=torch.Generator().manual_seed(1))
    keep, stop, scale = tokens // 10, tokens - RECENT, CHANNELS**-0.5
    row = {"tokens": tokens}
    for bits in (8, 4):
        cache = KeyCodes(ROWS, CHANNELS, bits, tokens)
        cache.write(0, values)
        row[f"fused_{bits}bit_ms"] = best_ms(lambda c=cache: select_topk(c, queries, scale, keep, SINKS, stop, tokens))
    channel_major = KeyCodes(ROWS, CHANNELS, 8, tokens)
    channel_major.write(0, values)
    keys = channel_major.values().transpose(-1, -2).contiguous()  # [R, C, T] fp32, as the old cache held it

    def torch_path() -> torch.Tensor:
        pooled = (torch.matmul(queries, keys) * scale).amax(dim=1)
        return topk_sorted(pooled[:, SINKS:stop], keep) + SINKS

    row["torch_ms"] = best_ms(torch_path)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="1024,2048,4096,8192")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up()
    rows = [measure(tokens) for tokens in split_ints(args.contexts)]
    print(f"\nbackend: {backend()}, 1 thread, {ROWS} rows x {HEADS} heads x {CHANNELS} channels, 10% kept\n")
    print("| tokens | fused, 8-bit codes | fused, 4-bit codes | torch path (fp32 cache) | speed-up (8-bit) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']:,} | {r['fused_8bit_ms']:.3f} ms | {r['fused_4bit_ms']:.3f} ms | {r['torch_ms']:.3f} ms "
              f"| {r['torch_ms'] / r['fused_8bit_ms']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"backend": backend(), "threads": 1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
