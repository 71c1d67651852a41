"""The Triton decode kernels compiled on a real GPU (not interpreted) against their torch references.

tests/test_kernels.py checks the same kernels under TRITON_INTERPRET=1 on CPU; this runs its cases (and
three at real model shapes: Llama-3-8B attention at 4k and 32k, SmolLM2-135M's at 4k) through the same
`check_case` with every tensor on CUDA, and writes one JSON result per case (ok, max error, seconds).
Needs CUDA: without it, it says so and exits with status 2.

    python benchmarks/gpu_kernel_check.py    # writes assets/results/gpu_kernel_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import test_kernels  # noqa: E402

OUT = ROOT / "assets" / "results" / "gpu_kernel_check.json"
MODEL_SHAPES = {
    "sparse-bf16-llama8b-32k-2048": dict(kind="sparse", dtype="bfloat16", b=1, hq=32, hkv=8, t=32768, d=128, k=2048),
    "sparse-fp16-smollm-4k-256-b2": dict(
        kind="sparse", dtype="float16", b=2, hq=9, hkv=3, t=4096, d=64, k=256, lengths=True
    ),
    "full-bf16-llama8b-4k": dict(kind="full", dtype="bfloat16", b=1, hq=32, hkv=8, t=4096, d=128),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA device here: gpu_kernel_check.py compiles the Triton kernels for a GPU.", file=sys.stderr)
        return 2
    import triton

    results: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                  "triton": triton.__version__}
    for name, spec in {**test_kernels.CASES, **MODEL_SHAPES}.items():
        start = time.perf_counter()
        try:
            row = {"ok": True, "max_err": test_kernels.check_case(spec, "cuda")}
        except Exception as exc:  # each case reports its own failure
            row = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:800]}"}
        row["s"] = round(time.perf_counter() - start, 2)
        results[name] = row
        print(name, row, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
