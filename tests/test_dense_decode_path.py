"""Dense decode steps: the decode kernel route (flash-attn / SDPA flash on CUDA) gives the same logits
as transformers' SDPA path, and off CUDA the SDPA path is kept (bit-exact with transformers)."""

from __future__ import annotations

import torch

from core import attention
from core.budget import Budget
from core.decode import GenerationConfig, generate


def decode_logits(lm) -> torch.Tensor:
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(4))
    config = GenerationConfig(max_new_tokens=6, stop_at_eos=False)
    return torch.stack([e.logits for e in generate(lm, ids, "dense", Budget.dense(), config)])


def test_cpu_keeps_the_sdpa_path() -> None:
    assert not attention.decode_kernel_applies(torch.zeros(1, 4, 1, 16), None)


def test_decode_kernel_route_matches_sdpa(tiny_lm, monkeypatch) -> None:
    expected = decode_logits(tiny_lm)
    used = []

    def route_always(query, mask):
        used.append(query.shape[2])
        return query.shape[2] == 1

    monkeypatch.setattr(attention, "decode_kernel_applies", route_always)
    routed = decode_logits(tiny_lm)
    assert 1 in used
    assert torch.allclose(routed, expected, atol=1e-5)

