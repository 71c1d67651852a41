"""Decode kernels: the plain-torch references in-process, the Triton kernels under TRITON_INTERPRET=1.

Covers core.kernels (sparse and dense decode attention, what core.attention runs) and the experimental
scoring / top-k kernels kept beside the GPU benchmark (benchmarks/experimental/scoring*.py).

Triton reads TRITON_INTERPRET when a kernel is decorated, and other test modules may import torch (and with
it triton) first, so the Triton checks run once in a subprocess (this file executed as a script with the
variable set) that reports one JSON result per case; `test_triton_kernel[case]` asserts each.
Triton 3.9's interpreter multiplies bf16 operands of tl.dot as raw uint16 bit patterns, so the subprocess
patches its dot to upcast bf16 operands to fp32 first (exact); everything else in the bf16 path, the
bf16 rounding of the softmax weights included, runs as written.

Tolerances (atol = rtol), Triton vs reference outputs in the inputs' dtype: fp32 1e-5; fp16 2e-3 and bf16
2e-2 (the kernel rounds the softmax weights to the input dtype for the P.V tensor-core dot and both round
the output: a few ulps). Scores are fp32 from exact products: 1e-5 in every dtype.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from benchmarks.experimental import scoring
from core import kernels
from core.kernels import dense, reference

ROOT = Path(__file__).resolve().parent.parent
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
SCORE_TOL = 1e-5

# name -> shape and options; kind: sparse (vs reference sparse), full (budget == context, vs dense), dense
# (the split-K kernel over the live rows, vs reference dense),
# score (vs reference scores), step (score + top-k + attention, vs the reference pipeline).
CASES: dict[str, dict] = {
    "sparse-fp16-gqa4-ragged": dict(kind="sparse", dtype="float16", b=2, hq=8, hkv=2, t=96, d=32, k=40),
    "sparse-bf16-gqa3-ragged-lengths-3splits": dict(
        kind="sparse", dtype="bfloat16", b=2, hq=6, hkv=2, t=80, d=64, k=70, lengths="int32", splits=3
    ),
    "sparse-fp32-gqa4-lengths-1split": dict(
        kind="sparse", dtype="float32", b=3, hq=8, hkv=2, t=70, d=16, k=30, lengths=True, splits=1
    ),
    "sparse-bf16-gqa4-static-padding-multitile-2splits": dict(  # split 0: 4 tiles, split 1: 3, nearly all -1
        kind="sparse", dtype="bfloat16", b=2, hq=8, hkv=2, t=300, d=32, k=200, count=37, splits=2
    ),
    "sparse-fp32-gqa4-one-valid-row-4splits": dict(  # chunks of 64, 64, 64 and 8 rows; three only padding
        kind="sparse", dtype="float32", b=1, hq=4, hkv=1, t=64, d=16, k=200, count=1, splits=4
    ),
    "dense-bf16-gqa4-lengths-3splits": dict(kind="dense", dtype="bfloat16", b=3, hq=8, hkv=2, t=150, d=32,
                                            lengths=True, splits=3),
    "dense-fp32-gqa3-whole-cache": dict(kind="dense", dtype="float32", b=2, hq=6, hkv=2, t=70, d=16),
    "dense-fp16-gqa4-shared-expanded-length": dict(kind="dense", dtype="float16", b=3, hq=8, hkv=2, t=90, d=16,
                                                  lengths="shared"),
    "full-fp32-gqa4-equals-dense": dict(kind="full", dtype="float32", b=2, hq=12, hkv=3, t=100, d=32),
    "full-bf16-gqa3-lengths-equals-dense": dict(
        kind="full", dtype="bfloat16", b=2, hq=6, hkv=2, t=72, d=32, lengths=True
    ),
    "score-fp32-gqa4": dict(kind="score", dtype="float32", b=2, hq=8, hkv=2, t=300, d=16),
    "score-bf16-gqa3-lengths": dict(kind="score", dtype="bfloat16", b=3, hq=6, hkv=2, t=260, d=16, lengths="int32"),
    "score-fp16-gqa4-dim8": dict(kind="score", dtype="float16", b=1, hq=4, hkv=1, t=64, d=8),
    "step-fp32-gqa4-tensor-budgets": dict(kind="step", dtype="float32", b=2, hq=8, hkv=2, t=300, d=32, lengths=True),
}


def make_inputs(spec: dict, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor | None]:
    """Random q/k/v, optional lengths in [T/2, T] (int64; int32 if spec["lengths"] == "int32"; "shared": one
    length expanded over the batch), and sorted indices with per-head ragged budgets (or spec["count"] each,
    then -1 padding: the static step's layout).

    Indices are drawn over the whole cache, so some fall beyond a request's length (must be ignored);
    position 0 is always selected so every row has a valid index.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, spec["dtype"])
    b, hq, hkv, t, d = spec["b"], spec["hq"], spec["hkv"], spec["t"], spec["d"]
    lengths = None
    if spec.get("lengths"):
        lengths_dtype = torch.int32 if spec["lengths"] == "int32" else torch.int64
        lengths = torch.randint(t // 2, t + 1, (b,), generator=gen).to(lengths_dtype)
        if spec["lengths"] == "shared":  # one length expanded over the batch (stride 0): the static step's
            lengths = lengths[:1].expand(b)
    k = spec.get("k", t)
    indices = torch.full((b, hkv, k), -1, dtype=torch.long)
    for i in range(b):
        for h in range(hkv):
            n = spec.get("count") or int(torch.randint(1, k + 1, (1,), generator=gen))
            rest = torch.randperm(t - 1, generator=gen)[: min(n, t) - 1] + 1
            indices[i, h, : len(rest) + 1] = torch.cat([torch.zeros(1, dtype=torch.long), rest]).sort().values
    made = {
        "q": torch.randn(b, hq, d, generator=gen).to(dtype),
        "k": torch.randn(b, hkv, t, d, generator=gen).to(dtype),
        "v": torch.randn(b, hkv, t, d, generator=gen).to(dtype),
        "indices": indices,
        "lengths": lengths,
    }
    return {name: None if x is None else x.to(device) for name, x in made.items()}


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float, lengths=None
) -> torch.Tensor:
    """Loop-per-head float64 softmax attention over the valid selected positions."""
    b, hq, _ = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i in range(b):
        limit = k.shape[2] if lengths is None else int(lengths[i])
        for h in range(hq):
            rows = [int(j) for j in indices[i, h // group] if 0 <= j < limit]
            logits = k[i, h // group, rows].double() @ q[i, h].double() * scale
            out[i, h] = torch.softmax(logits, dim=0) @ v[i, h // group, rows].double()
    return out


def all_positions(b: int, hkv: int, t: int, device: str = "cpu") -> torch.Tensor:
    return torch.arange(t, device=device).expand(b, hkv, t).contiguous()


# ---------------------------------------------------------------- references (in-process, CPU)


@pytest.mark.parametrize("hq,hkv", [(8, 2), (6, 2)])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("sliced", [False, True], ids=["contiguous", "sliced-cache"])
def test_reference_sparse_with_every_position_is_bit_identical_to_dense(hq, hkv, with_lengths, sliced):
    x = make_inputs(dict(dtype="float32", b=2, hq=hq, hkv=hkv, t=60, d=16, lengths=with_lengths))
    k, v, t = x["k"], x["v"], 60
    if sliced:  # a view into a longer (static) cache: take_rows' advanced-indexing branch
        k, v, t = k[:, :, :50], v[:, :, :50], 50
    indices = all_positions(2, hkv, t)
    sparse = kernels.sparse_decode_attention(x["q"], k, v, indices, 0.25, x["lengths"])
    full = kernels.dense_decode_attention(x["q"], k, v, 0.25, x["lengths"])
    assert torch.equal(sparse, full)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reference_sparse_matches_naive_with_padding_and_lengths(dtype):
    x = make_inputs(dict(dtype=dtype, b=2, hq=6, hkv=2, t=40, d=16, k=12, lengths=True))
    out = reference.sparse_decode_attention(x["q"], x["k"], x["v"], x["indices"], 0.3, x["lengths"])
    want = naive_attention(x["q"], x["k"], x["v"], x["indices"], 0.3, x["lengths"])
    tol = TOL[getattr(torch, dtype)]
    assert out.dtype == x["q"].dtype
    torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)


def test_gather_kv_masks_padding_and_lengths():
    k = torch.arange(2 * 1 * 6 * 2, dtype=torch.float32).view(2, 1, 6, 2)
    indices = torch.tensor([[[1, 4, -1]], [[0, 5, -1]]])
    keys, values, mask = reference.gather_kv(k, k + 100, indices, torch.tensor([6, 3]))
    assert torch.equal(keys[0, 0, :2], k[0, 0, [1, 4]]) and torch.equal(values[1, 0, 0], k[1, 0, 0] + 100)
    inf = float("-inf")
    assert torch.equal(mask, torch.tensor([[[0.0, 0.0, inf]], [[0.0, inf, inf]]]))


def test_score_reference_is_group_max_with_lengths():
    x = make_inputs(dict(dtype="float32", b=2, hq=6, hkv=2, t=20, d=8, lengths=True))
    scores = scoring.score_projected_keys(x["q"], x["k"], x["lengths"])
    per_head = torch.einsum("bhd,bhtd->bht", x["q"], x["k"].repeat_interleave(3, dim=1))
    want = per_head.view(2, 2, 3, 20).amax(dim=2)
    for i, n in enumerate(x["lengths"].tolist()):
        torch.testing.assert_close(scores[i, :, :n], want[i, :, :n], atol=SCORE_TOL, rtol=SCORE_TOL)
        assert torch.isneginf(scores[i, :, n:]).all()


def test_select_topk_int_budget_keeps_last_and_sorts():
    scores = torch.tensor([[[5.0, 1.0, 4.0, 3.0, 0.5, 2.0]]])
    assert scoring.select_topk(scores, 3).tolist() == [[[0, 2, 5]]]
    assert scoring.select_topk(scores, 3, always_keep_last=False).tolist() == [[[0, 2, 3]]]
    assert scoring.select_topk(scores, 10).tolist() == [[[0, 1, 2, 3, 4, 5]]]


def test_select_topk_tensor_budgets_pad_and_skip_masked_positions():
    inf = float("-inf")
    scores = torch.tensor([[[1.0, 9.0, 8.0, 7.0, 0.0]], [[3.0, 2.0, 1.0, inf, inf]]])
    out = scoring.select_topk(scores, torch.tensor([2, 4]))
    assert out.dtype == torch.int64
    assert out.tolist() == [[[1, 4, -1, -1]], [[0, 1, 2, -1]]]  # batch 1: last valid (2) kept, -inf never


def test_dense_sdpa_fallback_matches_naive(monkeypatch):
    monkeypatch.setattr(dense, "flash_attn_with_kvcache", None)
    assert dense.dense_backend("cuda", torch.bfloat16) == "sdpa"
    for dtype, with_lengths in [("float32", False), ("float32", True), ("bfloat16", True)]:
        x = make_inputs(dict(dtype=dtype, b=2, hq=8, hkv=2, t=33, d=16, lengths=with_lengths))
        out = dense.sdpa_decode_attention(x["q"], x["k"], x["v"], 0.25, x["lengths"])
        want = naive_attention(x["q"], x["k"], x["v"], all_positions(2, 2, 33), 0.25, x["lengths"])
        tol = TOL[getattr(torch, dtype)]
        torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)


def test_dense_backend_choice(monkeypatch):
    monkeypatch.setattr(dense, "flash_attn_with_kvcache", object())
    assert dense.dense_backend("cuda", torch.bfloat16) == "flash-attn"
    assert dense.dense_backend("cuda", torch.bfloat16, masked=True) == "flash-attn"
    assert dense.dense_backend("cuda", torch.float32) == "sdpa"
    assert dense.dense_backend("cpu") == "torch-reference"
    assert dense.available_backends("cuda") == ["flash-attn", "triton", "sdpa"]
    monkeypatch.setattr(dense, "flash_attn_with_kvcache", None)
    assert dense.dense_backend("cuda", torch.bfloat16, masked=True) == "triton"  # SDPA with a mask: no split-K
    assert dense.available_backends("cpu") == ["torch-reference"]
    if not torch.cuda.is_available():
        assert kernels.backend_name() == "torch-reference"
        assert kernels.backend_name("dense") == "torch-reference"


# ---------------------------------------------------------------- the GPU benchmark on CPU

BENCH = ROOT / "benchmarks" / "bench_gpu_decode.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_decode", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str, script: Path = BENCH, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=120,
    )


def test_gpu_bench_help_works_on_cpu():
    proc = run_bench("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in ("--model", "--contexts", "--budgets", "--kernel-contexts", "--random-sizes", "--out"):
        assert flag in proc.stdout


def test_gpu_bench_refuses_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run_bench("--out", str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    assert "No CUDA device" in proc.stderr and "Nothing was measured" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("script", ["gpu_kernel_check.py", "profile_gpu_step.py"])
def test_gpu_companions_refuse_without_cuda(tmp_path, script):
    out = tmp_path / "gpu.json"
    proc = run_bench("--out", str(out), script=BENCH.parent / script, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    assert "No CUDA device" in proc.stderr
    assert not out.exists()


def test_gpu_bench_measures_through_core_on_cpu(tmp_path):
    """The benchmark's measuring functions on CPU at toy sizes: every row measured, none failed."""
    bench = load_bench()
    cpu = torch.device("cpu")
    bandwidth = bench.copy_bandwidth_gbs(cpu, 1 << 20, repeats=2)
    time_us = bench.make_timer(cpu, iters=2, eager=True)
    kernel_rows = bench.measure_kernels([64], [16, 64], time_us, bandwidth, (4, 2, 16), torch.float32, cpu)
    assert [(r["kernel"], r["budget"]) for r in kernel_rows] == [("dense", None), ("sparse", 16), ("sparse", 64)]
    assert all(r["us"] > 0 and r["bandwidth_fraction"] > 0 for r in kernel_rows)
    assert bench.full_budget_check(64, (4, 2, 16), torch.float32, cpu) < 1e-5

    sizes = bench.parse_sizes("layers=3,heads=4,kv_heads=2,head_dim=16,hidden=64,intermediate=128,vocab=128,"
                              "max_context=256")
    lm = bench.random_llama(sizes, cpu, torch.float32)
    rows = bench.measure_decode(lm, bench.POLICIES, [48, 253], ["16"], steps=2, warmup=1)
    measured = [r for r in rows if "ms_per_step" in r]
    assert [r.get("error") for r in rows if "skipped" not in r] == [None] * len(bench.POLICIES)
    assert [r["policy"] for r in measured] == bench.POLICIES and rows[-1]["context"] == 253 and "skipped" in rows[-1]
    assert all(r["speedup"] > 0 for r in measured)
    assert all(r["sparsity"] > 0 for r in measured if r["policy"] != "dense")
    assert next(r for r in measured if r["policy"] == "tokenbutler")["predictor"].startswith("untrained")

    out = tmp_path / "gpu.json"
    bench.write(out, {"meta": {}, "kernels": kernel_rows, "models": [{"rows": rows}]})
    assert set(json.loads(out.read_text())["goals"]) == {"whole_step_speedup", "sparse_kernel_bandwidth_fraction", "at"}


# ---------------------------------------------------------------- Triton kernels (interpreted, subprocess)


def check_case(spec: dict, device: str = "cpu") -> float:
    """Run one case through the Triton kernel and its reference on `device` (the interpreter on CPU, the
    compiled kernel on CUDA: benchmarks/gpu_kernel_check.py); raise on mismatch, return the max error."""
    from benchmarks.experimental import scoring_kernel
    from core.kernels import sparse_attention

    x = make_inputs(spec, device=device)
    dtype = getattr(torch, spec["dtype"])
    tol = TOL[dtype]
    scale = spec["d"] ** -0.5
    q, k, v, lengths = x["q"], x["k"], x["v"], x["lengths"]
    if spec["kind"] == "dense":
        got = sparse_attention.dense_decode_attention(q, k, v, scale, lengths, spec.get("splits"))
        want = reference.dense_decode_attention(q, k, v, scale, lengths)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        return (got.float() - want.float()).abs().max().item()
    if spec["kind"] in ("sparse", "full"):
        indices = x["indices"] if spec["kind"] == "sparse" else all_positions(spec["b"], spec["hkv"], spec["t"], device)
        got = sparse_attention.sparse_decode_attention(q, k, v, indices, scale, lengths, spec.get("splits"))
        if spec["kind"] == "sparse":
            want = reference.sparse_decode_attention(q, k, v, indices, scale, lengths)
        else:
            want = reference.dense_decode_attention(q, k, v, scale, lengths)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        return (got.float() - want.float()).abs().max().item()
    got = scoring_kernel.score_projected_keys(q, k, lengths)
    want = scoring.reference_score_projected_keys(q, k, lengths)
    torch.testing.assert_close(got, want, atol=SCORE_TOL, rtol=SCORE_TOL)
    err = (got - want).nan_to_num(posinf=0.0, neginf=0.0).abs().max().item()
    if spec["kind"] == "step":
        budgets = torch.tensor([40, 7])
        picked = scoring.select_topk(got, budgets)
        assert torch.equal(picked, scoring.select_topk(want, budgets))
        out = sparse_attention.sparse_decode_attention(q, k, v, picked, scale, lengths)
        want_out = reference.sparse_decode_attention(q, k, v, picked, scale, lengths)
        torch.testing.assert_close(out, want_out, atol=tol, rtol=tol)
    return err


def patch_interpreter_bf16_dot() -> None:
    """Make the interpreter's tl.dot upcast bf16 operands (stored as uint16) to fp32 before np.matmul."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    dot = interpreter.InterpreterBuilder.create_dot

    def upcast(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, *args):
        return dot(self, upcast(a), upcast(b), d, *args)

    interpreter.InterpreterBuilder.create_dot = create_dot


def run_interpreted_cases() -> dict[str, dict]:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    patch_interpreter_bf16_dot()
    results = {}
    for name, spec in CASES.items():
        try:
            results[name] = {"ok": True, "max_err": check_case(spec)}
        except Exception as exc:  # reported per case by the parent test
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    if find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernel(interpreted, case):
    result = interpreted[case]
    assert result["ok"], result.get("error")


if __name__ == "__main__":
    print(json.dumps(run_interpreted_cases()))


def test_take_rows_reads_a_buffer_view_and_other_layouts_like_indexing():
    buffer = torch.randn(2, 3, 40, 8)
    filled = buffer[:, :, :25]  # the filled part of a preallocated cache
    positions = torch.randint(0, 25, (2, 3, 7))
    want = torch.stack([torch.stack([filled[b, h, positions[b, h]] for h in range(3)]) for b in range(2)])
    assert torch.equal(reference.take_rows(filled, positions), want)
    permuted = torch.randn(2, 40, 3, 8).permute(0, 2, 1, 3)[:, :, :25]  # token-major: the indexing fallback
    want = torch.stack([torch.stack([permuted[b, h, positions[b, h]] for h in range(3)]) for b in range(2)])
    assert torch.equal(reference.take_rows(permuted, positions), want)
