"""Dense decode steps: the decode kernel route (flash-attn / SDPA flash on CUDA, grouped SDPA on CPU)
gives the same logits as transformers' SDPA path, and takes only one unmasked query row."""

from __future__ import annotations

import torch

from core import attention
from core.budget import Budget
from core.decode import GenerationConfig, generate


def decode_logits(lm) -> torch.Tensor:
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(4))
    config = GenerationConfig(max_new_tokens=6, stop_at_eos=False)
    return torch.stack([e.logits for e in generate(lm, ids, "dense", Budget.dense(), config)])


def test_the_decode_kernel_takes_one_unmasked_row_only() -> None:
    assert attention.decode_kernel_applies(torch.zeros(1, 4, 1, 16), None)
    assert not attention.decode_kernel_applies(torch.zeros(1, 4, 2, 16), None)
    assert not attention.decode_kernel_applies(torch.zeros(1, 4, 1, 16), torch.tensor([[[[True, False]]]]))


def test_decode_kernel_route_matches_transformers_sdpa(tiny_lm, monkeypatch) -> None:
    used = []

    def route(query, mask):
        applies = real(query, mask)
        used.append(applies)
        return applies

    real = attention.decode_kernel_applies
    monkeypatch.setattr(attention, "decode_kernel_applies", route)
    routed = decode_logits(tiny_lm)
    assert any(used)
    monkeypatch.setattr(attention, "decode_kernel_applies", lambda query, mask: False)
    expected = decode_logits(tiny_lm)
    assert torch.allclose(routed, expected, atol=1e-5)
