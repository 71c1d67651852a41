"""The static decode step (core.static_step): one fullgraph compile with no graph break for each method, the
same tokens compiled, eager and as `core.decode.generate`; padded rows masked; selections equal to the dynamic
path's (tiny random Llama)."""

from __future__ import annotations

import pytest
import torch

from core.budget import Budget
from core.decode import GenerationConfig, PromptError, generate, prefill_prompt
from core.kernels import sparse_decode_attention
from core.kernels.select_cpu import CodeQuery
from core.keycodes import KeyCodes
from core.policies.base import topk_padded, topk_sorted
from core.static_step import ROW_BUCKET, StaticDecoder, StaticStepError, compiled, generate_static
from tests.conftest import tiny_llama
from tests.test_policies import build, prompt_ids

METHODS = ["dense", "tokenbutler", "double-sparsity", "quest", "streaming"]
NEW = 10
BUDGET = Budget(ratio=0.3)  # 77 tokens at the 256-token capacity: 128 rows a step, most of them padding


def decoder(lm, name: str, budget: Budget = BUDGET, fused: bool = True) -> StaticDecoder:
    policy = build(name, lm)
    policy.reset()
    shared = prefill_prompt(lm, prompt_ids(40), GenerationConfig(max_new_tokens=NEW))
    return StaticDecoder(lm, shared, policy, budget, NEW, fused)


def generated(lm, name: str, budget: Budget) -> tuple[list[int], float]:
    config = GenerationConfig(max_new_tokens=NEW, stop_at_eos=False)
    events = list(generate(lm, prompt_ids(40), build(name, lm), budget, config))
    return [e.token_id for e in events], events[-1].sparsity


def test_keep_on_device_equals_keep() -> None:
    past = torch.arange(1, 3000)
    for budget in (Budget(ratio=0.1), Budget(ratio=0.3), Budget(ratio=1 / 3), Budget(ratio=1.0), Budget(tokens=77)):
        assert budget.keep_on_device(past).tolist() == [budget.keep(int(p)) for p in past]


@pytest.mark.parametrize("seed", range(3))
def test_padded_topk_chooses_what_topk_sorted_chooses(seed: int) -> None:
    """Random scores and page-constant ones (ties at the cut go to the earlier token in both)."""
    generator = torch.Generator().manual_seed(seed)
    random = torch.randn(2, 3, 96, generator=generator)
    pages = torch.randint(0, 4, (2, 3, 12), generator=generator).float().repeat_interleave(8, dim=-1)
    for scores in (random, pages):
        for count, stop in [(0, 50), (1, 50), (7, 50), (20, 90), (46, 50)]:
            got = topk_padded(scores, 4, torch.tensor([stop]), torch.tensor([count]), 48)
            assert got.shape == (2, 3, 48)
            assert bool((got[..., count:] == -1).all())
            if count:
                assert torch.equal(got[..., :count], topk_sorted(scores[..., 4:stop], count) + 4)


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("pool", ["max", "softmax-mean"])
def test_fused_static_selection_equals_the_torch_path(bits: int, pool: str) -> None:
    generator = torch.Generator().manual_seed(bits)
    cache = KeyCodes(6, 16, bits, capacity=256)
    cache.write(0, torch.randn(6, 200, 16, generator=generator))
    query = CodeQuery(cache, torch.randn(6, 3, 16, generator=generator), 0.25, pool)
    for count, total in [(0, 120), (1, 120), (30, 120), (100, 200), (112, 120)]:
        stop, length = torch.tensor([total - 4]), torch.tensor([total])
        fused = query.select(torch.tensor([count]), 4, stop, length, 112)
        plain = topk_padded(query.scores(length), 4, stop, torch.tensor([count]), 112)
        assert torch.equal(fused, plain), (count, total)


def test_padded_rows_are_masked() -> None:
    """Attention over the exact rows equals attention over them padded to a bucket with -1."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, 16, generator=generator), *torch.randn(2, 1, 2, 100, 16, generator=generator)
    exact = torch.stack([torch.randperm(100, generator=generator)[:13].sort().values for _ in range(2)])[None]
    padded = torch.cat([exact, torch.full((1, 2, ROW_BUCKET - 13), -1)], dim=-1)
    want = sparse_decode_attention(q, k, v, exact, 0.25)
    assert torch.allclose(sparse_decode_attention(q, k, v, padded, 0.25, padded=True), want, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("budget", [BUDGET, Budget(tokens=20)])
def test_eager_static_step_decodes_what_generate_decodes(tiny_lm, name: str, budget: Budget) -> None:
    """Each step keeps the budget's exact count (padded to a bucket), so tokens and reads equal generate's."""
    tokens, sparsity = generated(tiny_lm, name, budget)
    result = decoder(tiny_lm, name, budget).run(NEW)
    assert result.tokens == tokens
    assert result.stats.sparsity == pytest.approx(sparsity)


@pytest.mark.parametrize("name", METHODS)
def test_the_step_compiles_whole_and_decodes_as_eager(tiny_lm, name: str) -> None:
    """No graph break (a host read such as `.item()` would be one: capture_scalar_outputs is off), one compile
    for every step, and the compiled step (dynamo + AOT autograd's functionalised graph) gives eager's tokens
    and reads."""
    assert not torch._dynamo.config.capture_scalar_outputs
    probe = decoder(tiny_lm, name)
    with torch.no_grad(), probe.attached():
        explained = torch._dynamo.explain(probe.step)(probe.first_token)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    eager = decoder(tiny_lm, name).run(NEW)
    compiled_decoder = decoder(tiny_lm, name)
    torch._dynamo.reset()  # then one compile serves every step: the guards hold from step to step
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = compiled_decoder.run(NEW, compiled(compiled_decoder, backend="aot_eager"))
    assert result.tokens == eager.tokens
    assert result.layer_reads == eager.layer_reads


@pytest.mark.parametrize("name", ["oracle", "knorm", "random"])
def test_the_other_scorers_run_the_step_as_they_are(tiny_lm, name: str) -> None:
    """A scorer whose `scores` is tensor-only needs nothing of its own for the static step."""
    assert decoder(tiny_lm, name).run(NEW).tokens == generated(tiny_lm, name, BUDGET)[0]
    probe = decoder(tiny_lm, name)
    assert torch._dynamo.explain(probe.step)(probe.first_token).graph_break_count == 0


def test_inductor_compiled_tokenbutler_decodes_as_eager() -> None:
    """The real compile (inductor's C++), through the producer hooks and the fused selection's custom op, on a
    two-layer model (layer 1 sparse): inductor's C++ compile takes most of this file's time on a cold cache."""
    lm = tiny_llama(layers=2)
    eager = generate_static(lm, prompt_ids(40), build("tokenbutler", lm), BUDGET, NEW, compile=False)
    result = generate_static(lm, prompt_ids(40), build("tokenbutler", lm), BUDGET, NEW, compile=True)
    assert result.tokens == eager.tokens
    assert result.stats == eager.stats


@pytest.mark.parametrize("name", ["tokenbutler", "double-sparsity"])
def test_the_torch_selection_decodes_what_the_fused_one_does(tiny_lm, name: str) -> None:
    fused = decoder(tiny_lm, name).run(NEW)
    plain = decoder(tiny_lm, name, fused=False).run(NEW)
    assert plain.tokens == fused.tokens
    assert plain.layer_reads == fused.layer_reads


def test_what_the_step_cannot_run_is_refused(tiny_lm) -> None:
    with pytest.raises(StaticStepError, match="recurrence"):
        decoder(tiny_lm, "h2o")
    with pytest.raises(StaticStepError, match="protected"):
        decoder(tiny_lm, "streaming", Budget(tokens=5))


def test_a_prompt_past_the_context_is_refused(tiny_lm) -> None:
    shared = prefill_prompt(tiny_lm, prompt_ids(40), GenerationConfig(max_new_tokens=NEW))
    with pytest.raises(PromptError, match="exceed the context"):
        StaticDecoder(tiny_lm, shared, build("quest", tiny_lm), BUDGET, 250)


def test_shapes_are_fixed_per_bucket(tiny_lm) -> None:
    step = decoder(tiny_lm, "quest")
    assert (step.capacity, step.rows) == (256, 128)
    assert step.cache.layers[0].keys.shape[2] == 256


@pytest.mark.parametrize(("query", "keys"), [("own", "pairs"), ("ahead", "learned"), ("own", "learned")])
def test_own_queries_and_learned_key_codes_run_the_step(tiny_lm, query: str, keys: str) -> None:
    """The predictor's other query source and key code: the static step decodes generate's tokens, unbroken."""
    from core.predictor import Predictor, PredictorConfig

    def predictor() -> Predictor:
        torch.manual_seed(2)
        made = Predictor(PredictorConfig.for_spec(tiny_lm.spec, dim=8, inner=16, group_layers=2, query=query,
                                                  keys=keys))
        with torch.no_grad():  # trained weights, not the initial ones (which pick the calibrated pairs)
            for producer in made.producers.values():
                producer.down.weight.normal_(std=0.3)
            if keys == "learned":
                made.key_projection.add_(0.3 * torch.randn_like(made.key_projection))
        return made

    config = GenerationConfig(max_new_tokens=NEW, stop_at_eos=False)
    events = list(generate(tiny_lm, prompt_ids(40), build("tokenbutler", tiny_lm, predictor=predictor()), BUDGET,
                           config))
    policy = build("tokenbutler", tiny_lm, predictor=predictor())
    policy.reset()
    shared = prefill_prompt(tiny_lm, prompt_ids(40), GenerationConfig(max_new_tokens=NEW))
    probe = StaticDecoder(tiny_lm, shared, policy, BUDGET, NEW)
    assert probe.run(NEW).tokens == [e.token_id for e in events]
    policy.reset()
    probe = StaticDecoder(tiny_lm, shared, policy, BUDGET, NEW)
    with torch.no_grad(), probe.attached():
        assert torch._dynamo.explain(probe.step)(probe.first_token).graph_break_count == 0
