"""The fused CPU selection kernel chooses what the plain-torch reference chooses."""

import pytest
import torch

from core.kernels import select_cpu
from core.kernels.select_cpu import select_reference, select_topk
from core.keycodes import KeyCodes, pack4, unpack4
from core.keysummary import quantize, stored


def filled(rows: int, tokens: int, channels: int, bits: int, seed: int = 0) -> tuple[KeyCodes, torch.Tensor]:
    values = torch.randn(rows, tokens, channels, generator=torch.Generator().manual_seed(seed))
    cache = KeyCodes(rows, channels, bits, capacity=8)  # small: the writes below make it grow
    cache.write(0, values[:, : tokens // 2])
    cache.write(tokens // 2, values[:, tokens // 2 :])
    return cache, values


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("channels", [32, 7])
def test_codes_read_back_what_the_key_summary_stores(bits: int, channels: int) -> None:
    cache, values = filled(3, 50, channels, bits)
    assert torch.equal(cache.values(), stored(values, bits))
    codes = quantize(values, 4)[0]
    assert torch.equal(unpack4(pack4(codes), channels), codes)


def test_the_kernel_is_built_here() -> None:
    assert select_cpu.backend() == "numba"


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("pool", ["max", "softmax-mean"])
@pytest.mark.parametrize("seed", range(4))
def test_kernel_equals_reference_on_random_cases(bits: int, pool: str, seed: int) -> None:
    cache, _ = filled(6, 300, 32, bits, seed)
    queries = torch.randn(6, 3, 32, generator=torch.Generator().manual_seed(100 + seed))
    for keep, start, stop, total in [(30, 4, 296, 300), (1, 0, 300, 300), (292, 4, 296, 300), (10, 4, 150, 151)]:
        got = select_topk(cache, queries, 0.125, keep, start, stop, total, pool)
        want = select_reference(cache, queries, 0.125, keep, start, stop, total, pool)
        assert got.shape == (6, keep)
        assert torch.equal(got, want), (keep, start, stop)
        assert bool((got.diff(dim=-1) > 0).all())


@pytest.mark.parametrize("bits", [8, 4])
def test_ties_at_the_cut_go_to_the_earlier_token(bits: int) -> None:
    """Page-constant scores (every token repeats in blocks of 5): exact integer sums, many ties at the cut."""
    base = torch.randint(-3, 4, (2, 8, 16), generator=torch.Generator().manual_seed(0)).float()
    values = base.repeat_interleave(5, dim=1)  # [2, 40, 16]
    values[..., 0] = 7.0  # every row's largest magnitude: scale 1 at 8 bits (7 / 7 at 4 bits), codes exact
    cache = KeyCodes(2, 16, bits)
    cache.write(0, values)
    queries = torch.randint(-2, 3, (2, 3, 16), generator=torch.Generator().manual_seed(1)).float()
    for keep in (3, 7, 12, 23):
        got = select_topk(cache, queries, 1.0, keep, 2, 38, 40, "max")
        want = select_reference(cache, queries, 1.0, keep, 2, 38, 40, "max")
        assert torch.equal(got, want)


def test_the_kernel_leaves_torch_threads_alone() -> None:
    """numba's OpenMP layer sets the process's thread count when it launches: one thread stays one thread."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        cache, _ = filled(4, 100, 16, 8)
        select_topk(cache, torch.randn(4, 3, 16), 0.25, 9, 4, 96, 100)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_torch_fallback_runs_when_the_kernel_cannot_build(monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _ = filled(4, 100, 16, 8)
    queries = torch.randn(4, 3, 16)
    want = select_topk(cache, queries, 0.25, 9, 4, 96, 100)
    monkeypatch.setattr(select_cpu, "_kernels", lambda: None)
    assert select_cpu.backend() == "torch"
    assert torch.equal(select_topk(cache, queries, 0.25, 9, 4, 96, 100), want)


def test_bad_arguments_are_refused() -> None:
    cache, _ = filled(2, 20, 8, 8)
    with pytest.raises(ValueError, match="keep="):
        select_topk(cache, torch.randn(2, 3, 8), 1.0, 0, 0, 20, 20)
    with pytest.raises(ValueError, match="keep="):
        select_topk(cache, torch.randn(2, 3, 8), 1.0, 5, 0, 21, 21)
    with pytest.raises(ValueError, match="pool"):
        select_topk(cache, torch.randn(2, 3, 8), 1.0, 5, 0, 20, 20, "mean")


def test_warm_up_compiles_every_variant() -> None:
    assert select_cpu.warm_up() == "numba"
