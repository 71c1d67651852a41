"""The shared driver: a recurrence written once gets teacher forcing equal to real decoding for free,
and protection is one explicit rule, the same in both modes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from core.budget import Budget
from core.decode import GenerationConfig, forward_teacher, generate
from core.policies import UnknownPolicyError, make_policy
from core.policies.base import LayerView, Policy, ascending_positions, pool_group
from core.policies.driver import decode_selection, newest_rows, protection, scorer_ranks


@dataclass
class RunningMass:
    """The toy recurrence's state for one layer: attention mass each token has received so far, per KV head."""

    mass: torch.Tensor  # [B, Hkv, T]


@dataclass(eq=False)
class RunningMassPolicy(Policy):
    """Test-only stateful method: keep the tokens with the largest decayed running sum of attention.

    Unlike H2O nothing is evicted: a token that falls out of the kept set can come back. It is the
    whole of what docs/adding-a-method.md walks through: two methods, no teacher-forcing code.
    """

    name = "running-mass-test"
    decay: float = 0.9

    def prefill(self, view: LayerView, keep: int) -> RunningMass:
        return RunningMass(pool_group(view.true_probs(), view.group, "mean").sum(dim=2))

    def step(self, state: RunningMass, view: LayerView, keep: int) -> torch.Tensor:
        grown = view.context - state.mass.shape[-1]
        state.mass = torch.nn.functional.pad(state.mass, (0, grown)) * self.decay
        state.mass += pool_group(view.true_probs(), view.group, "mean")[:, :, -1, :]
        choice = state.mass.index_fill(-1, torch.tensor([view.context - 1]), float("inf"))  # the current token
        return torch.zeros_like(choice, dtype=torch.bool).scatter_(-1, choice.topk(keep, dim=-1).indices, True)


def _decode(lm, policy, budget, n=30, steps=10):
    ids = torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(3))
    config = GenerationConfig(max_new_tokens=steps, trace=True, stop_at_eos=False)
    return ids, list(generate(lm, ids, policy, budget, config))


def test_a_new_recurrence_gets_teacher_forcing_equal_to_decoding(tiny_lm) -> None:
    policy, budget, n = RunningMassPolicy(), Budget(ratio=0.4), 30
    assert not policy.stateless
    ids, events = _decode(tiny_lm, policy, budget, n=n)
    kept_layer2 = [e.trace.layers[2].kept for e in events[1:]]
    assert all(k.shape[-1] == budget.keep(e.trace.position + 1) for k, e in zip(kept_layer2, events[1:], strict=True))
    tokens = torch.cat([ids[0], torch.tensor([e.token_id for e in events[:-1]])])
    logits, _ = forward_teacher(tiny_lm, tokens, RunningMassPolicy(), budget, prompt_len=n)
    for i, event in enumerate(events):
        assert torch.allclose(logits[0, n - 1 + i], event.logits, atol=1e-4), f"step {i}"


def test_statelessness_follows_from_what_a_policy_implements() -> None:
    assert make_policy("oracle").stateless and make_policy("quest").stateless
    assert not make_policy("h2o").stateless and not make_policy("snapkv").stateless


def test_options_are_the_dataclass_fields_and_nothing_else() -> None:
    assert make_policy("h2o", recent_share=0.25).options() == {"recent_share": 0.25}
    assert make_policy("quest").options() == {"sinks": 4, "recent": 4, "page_size": 16}  # the one protection rule
    with pytest.raises(UnknownPolicyError, match=r"h2o has no option 'sinks'.*recent_share"):
        make_policy("h2o", sinks=4)  # H2O's protection is its recent share: a sinks option would be ignored


def _row_view(t: int, heads: int = 2, seed: int = 0) -> LayerView:
    g = torch.Generator().manual_seed(seed)
    return LayerView(1, torch.randn(1, heads, 1, 8, generator=g), torch.randn(1, 1, t, 8, generator=g), 1.0,
                     torch.tensor([t - 1]))


def test_protection_is_an_explicit_mask_current_sinks_recent() -> None:
    view = LayerView(1, torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 12, 4), 1.0, torch.tensor([3, 7, 11]))
    current, other = protection(make_policy("oracle", sinks=2, recent=3), view)
    assert current.nonzero()[:, 1].tolist() == [3, 7, 11]
    assert [row.nonzero().flatten().tolist() for row in other] == [[0, 1, 2], [0, 1, 5, 6], [0, 1, 9, 10]]


@pytest.mark.parametrize("keep", [1, 3, 5, 9])
def test_decode_step_keeps_what_the_teacher_ranks_keep(keep) -> None:
    """The decode fast path (slices + top-k) and the teacher ranks agree, also when protection exceeds the budget."""
    policy = make_policy("oracle", sinks=2, recent=4)
    view = _row_view(16)
    chosen = decode_selection(policy, None, view, keep).indices[0, 0].tolist()
    ranked = (scorer_ranks(policy, view)[1][0, 0, 0] < keep).nonzero().flatten().tolist()
    assert chosen == ranked
    assert 15 in chosen, "the current token is always read"
    if keep >= 6:
        assert {0, 1, 12, 13, 14, 15} <= set(chosen)


def test_protected_tokens_are_read_once_even_when_every_other_score_is_minus_infinity() -> None:
    policy = make_policy("oracle", sinks=2, recent=3)
    pooled = torch.full((1, 2, 12), float("-inf"))
    pooled[..., 5] = 1.0
    assert newest_rows(policy, pooled, 7).tolist() == [[[0, 1, 2, 5, 9, 10, 11]] * 2]


def test_ascending_positions_of_a_strided_mask() -> None:
    chosen = torch.tensor([[1, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 1]], dtype=torch.bool).T.contiguous().T
    assert not chosen.is_contiguous()
    assert ascending_positions(chosen, 3).tolist() == [[0, 2, 4], [1, 2, 5]]
