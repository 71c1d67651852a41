"""The training-free rivals obey their papers' definitions: Double Sparsity, TOVA and KNorm, on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from core.budget import Budget
from core.calibrate import calibrate_channels, channel_importance
from core.checkpoint import PredictorMismatchError
from core.policies import make_policy
from core.policies.base import LayerView
from core.policies.double_sparsity import ChannelRanking
from core.policies.driver import prefill_state, teacher_mask
from tests.conftest import tiny_llama
from tests.test_policies import build, kept_sets, run


def hand_view(hq: int = 4, hkv: int = 2, t: int = 24, d: int = 8, seed: int = 0, layer: int = 1) -> LayerView:
    g = torch.Generator().manual_seed(seed)
    return LayerView(layer, torch.randn(1, hq, t, d, generator=g), torch.randn(1, hkv, t, d, generator=g),
                     d**-0.5, torch.arange(t))


@pytest.mark.parametrize("budget", [Budget(ratio=0.3), Budget(tokens=9)])
def test_double_sparsity_with_every_channel_is_the_oracle(tiny_lm, budget):
    """The definition at full precision (the default label cache is 8-bit: tests/test_keysummary.py)."""
    everything = build("double-sparsity", tiny_lm, channels=tiny_lm.spec.head_dim, bits=16)
    oracle, ds = run(tiny_lm, "oracle", budget, steps=10), run(tiny_lm, "double-sparsity", budget, steps=10,
                                                               ranking=everything.ranking, channels=everything.channels,
                                                               bits=16)
    for layer in range(1, tiny_lm.spec.num_layers):
        assert kept_sets(ds, layer) == kept_sets(oracle, layer)
    view = hand_view()
    full = ChannelRanking(2, 2, 8)
    exact = make_policy("double-sparsity", ranking=full, channels=8, bits=16)
    assert torch.equal(exact.scores(view), view.true_probs())


def test_double_sparsity_scores_only_its_calibrated_channels():
    view = hand_view()
    ranking = ChannelRanking(2, 2, 8)
    ranking.order[1, 0] = torch.tensor([5, 2, 0, 1, 3, 4, 6, 7])
    ranking.order[1, 1] = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    scores = make_policy("double-sparsity", ranking=ranking, channels=2, bits=16).scores(view)
    for head, channels in ((0, [2, 5]), (1, [2, 5]), (2, [6, 7]), (3, [6, 7])):  # two query heads per KV head
        q, k = view.query[0, head][:, channels], view.key[0, head // 2][:, channels]
        want = torch.softmax((q @ k.T * view.scale).masked_fill(~view.causal(), float("-inf")), dim=-1)
        assert torch.allclose(scores[0, head], want, atol=1e-6)
    policy = make_policy("double-sparsity", ranking=ranking, channels=2, bits=16)
    assert policy.side_reads(torch.tensor([10, 20]), torch.tensor([3, 3]), head_dim=8) == pytest.approx(30 * 2 / 16)


def test_calibration_ranks_the_channel_whose_products_dominate(tiny_lm):
    view = hand_view(t=16)
    view.query[0, :2, :, 6] = 10.0  # KV head 0's group: channel 6 dominates |q_i k_i|
    view.key[0, 0, :, 6] = -10.0  # the sign does not matter
    view.query[0, 2:, :, 1] = 10.0
    view.key[0, 1, :, 1] = 10.0
    importance = channel_importance(view)
    assert importance.shape == (2, 8)
    assert int(importance[0].argmax()) == 6 and int(importance[1].argmax()) == 1
    manual = (view.query[0, 2:] * view.key[0, 1][None]).abs().sum(dim=(0, 1))
    assert torch.allclose(importance[1], manual, atol=1e-4)
    ranking = calibrate_channels(tiny_lm, [torch.arange(40) % 128], progress=False)
    assert ranking.order.shape == (tiny_lm.spec.num_layers, tiny_lm.spec.num_kv_heads, tiny_lm.spec.head_dim)
    assert (ranking.order.sort(dim=-1).values == torch.arange(tiny_lm.spec.head_dim)).all(), "a permutation"


def test_a_saved_calibration_loads_and_refuses_another_model(tiny_lm, tmp_path):
    ranking = calibrate_channels(tiny_lm, [torch.arange(40) % 128], progress=False)
    ranking.save(tmp_path)
    loaded = ChannelRanking.load(tmp_path, tiny_lm.spec)
    assert torch.equal(loaded.order, ranking.order) and loaded.config == ranking.config
    assert make_policy("double-sparsity", ranking=tmp_path).attach(tiny_lm.model) == []
    other = tiny_llama(seed=3)
    with pytest.raises(PredictorMismatchError, match="calibrate"):
        make_policy("double-sparsity", ranking=tmp_path).attach(other.model)
    with pytest.raises(PredictorMismatchError):
        ChannelRanking.load(tmp_path, other.spec)
    with pytest.raises(ValueError, match="at least one channel"):
        make_policy("double-sparsity", ranking=ranking, channels=0)


def test_knorm_keeps_the_lowest_key_norms_beyond_its_protection():
    view = hand_view(hq=2, hkv=1, t=32)
    norms = torch.rand(32, generator=torch.Generator().manual_seed(2)) + 0.5
    view.key[0, 0] = view.key[0, 0] / view.key[0, 0].norm(dim=-1, keepdim=True) * norms[:, None]
    mask = teacher_mask(make_policy("knorm"), view, Budget(tokens=12), prompt_len=1)[0, 0, -1]
    protected = set(range(4)) | set(range(28, 32))
    free = sorted(set(range(32)) - protected, key=lambda i: float(norms[i]))
    assert set(mask.nonzero().flatten().tolist()) == protected | set(free[:4])


def test_tova_evicts_what_the_last_query_attended_to_least_averaged_over_heads():
    policy = make_policy("tova")
    view = hand_view(hq=4, hkv=2, t=20)
    prompt = view.rows(slice(0, 16), 16)
    state = prefill_state(policy, prompt, Budget(tokens=10))
    attention = torch.softmax(prompt.true_logits()[0, :, -1, :], dim=-1).mean(dim=0)  # every query head
    kept = policy.step(state, view.rows(slice(16, 17), 17), keep=10)
    assert torch.equal(kept[0, 0], kept[0, 1]), "one choice per layer"
    survivors = set(attention.topk(9).indices.tolist()) | {16}  # the current token is always read
    assert set(kept[0, 0].nonzero().flatten().tolist()) == survivors
    again = policy.step(state, view.rows(slice(17, 18), 18), keep=10)
    assert int(again[0, 0].sum()) == 10 and bool(again[0, 0, 17])
    assert not (again[0, 0, :17] & ~kept[0, 0, :17]).any(), "no evicted token returns"


def test_double_sparsity_label_cache_follows_the_sequence_even_without_a_reset():
    policy = make_policy("double-sparsity", ranking=ChannelRanking(2, 2, 8), channels=8, bits=16)
    for seed in (0, 1):  # a second sequence of the same length, scored step by step with no reset between
        whole = hand_view(seed=seed)
        for t in range(1, 25):
            step = whole.rows(slice(t - 1, t), t)
            assert torch.equal(policy.scores(step), step.true_probs())


def test_double_sparsity_reads_as_many_bytes_as_the_shipped_predictor():
    """The default label cache is the rival at equal bytes: the same per-token side reads as TokenButler's."""
    past = torch.tensor([100, 1000])
    rival, learned = make_policy("double-sparsity"), make_policy("tokenbutler")
    assert rival.side_reads(past, past, head_dim=64) == learned.side_reads(past, past, head_dim=64)
