"""Where a GPU decode step's time goes: torch.profiler over core.decode.generate's steps.

For the random Llama with 8B-shaped attention (bench_gpu_decode.py's random-llama) at each --contexts,
under dense and each --policies at --budget: after 6 untimed steps, 8 steps are profiled. Per step it
reports the profiled wall time, the GPU's busy time (the sum of its kernels' times) and the attention
kernels' share of it, kernel launches, host-sync calls (cudaStreamSynchronize, item(), device-to-host
copies) and the ops that take the most GPU and CPU time. Wall time under the profiler is inflated by its
own overhead; compare it with bench_gpu_decode.py's unprofiled ms/step. Needs CUDA (exits 2 without it).

    python benchmarks/profile_gpu_step.py    # writes assets/results/gpu_step_profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_gpu_decode as bench  # noqa: E402

from core.budget import Budget  # noqa: E402
from core.decode import GenerationConfig, generate  # noqa: E402

OUT = ROOT / "assets" / "results" / "gpu_step_profile.json"
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "aten::item", "aten::_local_scalar_dense")
UNTIMED, PROFILED = 6, 8
ATTENTION_KERNELS = ("flash", "_sparse_decode_stage")  # SDPA flash (dense) and core's Triton sparse kernel


def profile_steps(lm: bench.LoadedModel, policy_name: str, budget: str, ids: torch.Tensor) -> dict:
    """Profile PROFILED decode steps after UNTIMED ones; per-step figures."""
    policy, _ = bench.build_policy(policy_name, lm)
    config = GenerationConfig(max_new_tokens=UNTIMED + PROFILED, stop_at_eos=False, chat=False)
    steps = generate(lm, ids, policy, Budget.parse(budget), config)
    for _ in range(UNTIMED):
        next(steps)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        n = sum(1 for _ in steps)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / n
    events = prof.key_averages()

    def per_step(names: tuple[str, ...]) -> float:
        return sum(e.count for e in events if e.key in names) / n

    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    attention = [e for e in kernels if any(name in e.key for name in ATTENTION_KERNELS)]
    ops = [e for e in events if e.device_type == DeviceType.CPU]
    by_gpu = sorted(ops, key=lambda e: -e.self_device_time_total)[:8]
    by_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {
        "wall_ms_per_step_profiled": wall * 1e3,
        "gpu_ms_per_step": sum(e.self_device_time_total for e in kernels) / n / 1e3,
        "attention_gpu_ms_per_step": sum(e.self_device_time_total for e in attention) / n / 1e3,
        "launches_per_step": per_step(LAUNCHES),
        "sync_like_per_step": per_step(SYNCS),
        "top_gpu_ms": [(e.key[:80], round(e.self_device_time_total / n / 1e3, 4)) for e in by_gpu],
        "top_cpu_ms": [(e.key[:80], round(e.self_cpu_time_total / n / 1e3, 4)) for e in by_cpu],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=bench.int_list, default=[4096, 32768])
    p.add_argument("--policies", type=bench.str_list, default=["tokenbutler", "streaming", "quest"])
    p.add_argument("--budget", default="2048", help="token count or ratio (default 2048)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA device here: profile_gpu_step.py profiles GPU decode steps.", file=sys.stderr)
        return 2
    lm = bench.load_model(bench.RANDOM_LLAMA, torch.device("cuda"), None, dict(bench.RANDOM_SIZES))
    result: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                 "model": lm.spec.name}
    for context in args.contexts:
        ids = torch.randint(0, lm.spec.vocab_size, (1, context), generator=torch.Generator().manual_seed(context))
        for name, budget in [("dense", "100%"), *((policy, args.budget) for policy in args.policies)]:
            key = f"{context}/{name}/{budget}"
            result[key] = profile_steps(lm, name, budget, ids)
            print(key, json.dumps(result[key]), flush=True)
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
