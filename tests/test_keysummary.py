"""A key summary stored below 16 bits: integral codes within half a step of the values, one scale per row,
and the bytes a method reading it is charged."""

from __future__ import annotations

import pytest
import torch

from core.keysummary import stored, values_per_token
from core.policies import make_policy
from core.policies.double_sparsity import ChannelRanking
from tests.test_rivals import hand_view


@pytest.mark.parametrize("bits", [8, 4])
def test_stored_rows_are_integral_codes_of_one_scale_within_half_a_step(bits):
    values = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(bits))
    back = stored(values, bits)
    step = (values.abs().amax(dim=-1, keepdim=True) / (2 ** (bits - 1) - 1)).half().float()  # a 16-bit scale
    codes = back / step
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.abs().max() <= 2 ** (bits - 1) - 1 + 1e-4
    assert ((back - values).abs() <= step / 2 + 1e-6).all()
    assert torch.allclose(stored(back, bits), back, atol=1e-6), "storing stored values changes nothing"
    assert torch.equal(stored(values, 16), values)


def test_storage_counts_codes_and_the_scale():
    assert values_per_token(16, 16) == 16
    assert values_per_token(32, 8) == 17  # 32 bytes of codes and a 2-byte scale
    assert values_per_token(64, 4) == 17
    with pytest.raises(ValueError, match="bits"):
        values_per_token(16, 3)


def test_double_sparsity_scores_against_its_stored_label_cache():
    view = hand_view()
    ranking = ChannelRanking(2, 2, 8)
    policy = make_policy("double-sparsity", ranking=ranking, channels=4, bits=4)
    scores = policy.scores(view)
    channels = [0, 1, 2, 3]
    for head in range(4):
        q, k = view.query[0, head][:, channels], stored(view.key[0, head // 2][:, channels], 4)
        want = torch.softmax((q @ k.T * view.scale).masked_fill(~view.causal(), float("-inf")), dim=-1)
        assert torch.allclose(scores[0, head], want, atol=1e-6)
    charged = policy.side_reads(torch.tensor([10, 20]), torch.tensor([3, 3]), head_dim=8)
    assert charged == pytest.approx(30 * (4 * 4 / 16 + 1) / 16)  # 30 tokens' codes and scales, over K+V rows
    with pytest.raises(ValueError, match="bits"):
        make_policy("double-sparsity", ranking=ranking, bits=2)


def test_a_key_is_stored_alike_whatever_dtype_it_arrives_in():
    values = torch.randn(4, 32, generator=torch.Generator().manual_seed(1)).bfloat16()
    assert torch.equal(stored(values, 8), stored(values.float(), 8).bfloat16())
