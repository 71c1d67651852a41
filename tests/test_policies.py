"""Each policy keeps exactly its budget and obeys its own definition (tiny random Llama, real decoding)."""

from __future__ import annotations

import pytest
import torch

from core.budget import Budget
from core.calibrate import calibrate_channels
from core.decode import GenerationConfig, forward_teacher, generate
from core.policies import UnknownPolicyError, make_policy, policy_names
from core.policies.base import LayerView
from core.policies.quest import QuestPolicy, page_bounds
from core.policies.snapkv import compress_prompt
from core.predictor import Predictor, PredictorConfig

EVERY_METHOD = ["dense", "oracle", "random", "streaming", "quest", "tokenbutler", "h2o", "snapkv", "knorm", "tova",
                "double-sparsity"]


def build(name: str, lm, **options):
    if name == "tokenbutler":
        torch.manual_seed(1)
        options.setdefault("predictor", Predictor(PredictorConfig.for_spec(lm.spec, dim=8, inner=16, group_layers=2)))
    if name == "double-sparsity":  # calibrated on other text than any test decodes; half the channels
        options.setdefault("ranking", calibrate_channels(lm, [prompt_ids(64, seed=9)[0]], progress=False))
        options.setdefault("channels", lm.spec.head_dim // 2)
    return make_policy(name, **options)


def prompt_ids(n: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def run(lm, name, budget, steps=12, n=40, **options):
    config = GenerationConfig(max_new_tokens=steps, trace=True, stop_at_eos=False)
    return list(generate(lm, prompt_ids(n), build(name, lm, **options), budget, config))


def kept_sets(events, layer):
    return [e.trace.layers[layer].kept[0].tolist() for e in events if e.trace is not None]


def test_registry_lists_every_method():
    assert set(policy_names()) >= {"dense", "oracle", "random", "streaming", "h2o", "snapkv", "quest", "tokenbutler"}


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(UnknownPolicyError, match=r"Unknown policy 'nope'.*dense"):
        make_policy("nope")


@pytest.mark.parametrize("name", [n for n in EVERY_METHOD if n != "dense"])
def test_huge_budget_equals_dense_bit_for_bit(tiny_lm, name):
    dense = run(tiny_lm, "dense", Budget.dense())
    sparse = run(tiny_lm, name, Budget(tokens=10_000))
    for a, b in zip(dense, sparse, strict=True):
        assert torch.equal(a.logits, b.logits)
        assert a.token_id == b.token_id


@pytest.mark.parametrize("name", [n for n in EVERY_METHOD if n not in ("dense", "snapkv")])
def test_each_policy_keeps_exactly_its_budget(tiny_lm, name):
    budget = Budget(ratio=0.3)
    events = run(tiny_lm, name, budget)
    layer = 2
    for event in events[1:]:
        kept = event.trace.layers[layer].kept
        past = event.trace.position + 1
        assert kept.shape == (tiny_lm.spec.num_kv_heads, budget.keep(past))
        assert (kept.diff(dim=-1) > 0).all(), "indices ascending and distinct"
        assert int(kept.max()) == past - 1, "the current token is always read"
    dense_layers, layers = build(name, tiny_lm).first_sparse_layer, tiny_lm.spec.num_layers
    pasts = [event.trace.position + 1 for event in events[1:]]
    read = sum(dense_layers * p + (layers - dense_layers) * budget.keep(p) for p in pasts)
    expected = 1.0 - read / (layers * sum(pasts))  # the dense first layers read everything
    assert events[-1].sparsity == pytest.approx(expected, abs=1e-9)


def test_streaming_keeps_sinks_plus_recent(tiny_lm):
    budget = Budget(tokens=10)
    for event in run(tiny_lm, "streaming", budget)[1:]:
        past = event.trace.position + 1
        expected = list(range(4)) + list(range(past - 6, past))
        for head in event.trace.layers[1].kept.tolist():
            assert head == expected


@pytest.mark.parametrize("name", ["h2o", "tova"])
def test_permanent_eviction_never_brings_back_an_evicted_token(tiny_lm, name):
    events = run(tiny_lm, name, Budget(tokens=12), steps=20)
    for layer in (1, 3):
        evicted: set[int] = set()
        previous: set[int] | None = None
        for kept in kept_sets(events, layer):
            now = set(kept)
            assert not (now & evicted), "an evicted token came back"
            if previous is not None:
                evicted |= previous - now
            previous = now
        assert evicted, "the budget forced evictions"


def test_snapkv_keeps_its_window_and_generated_tokens(tiny_lm):
    n, window = 40, 8
    events = run(tiny_lm, "snapkv", Budget(tokens=16), n=n, window=window)
    for event in events[1:]:
        past = event.trace.position + 1
        for head in event.trace.layers[2].kept.tolist():
            assert set(range(n - window, past)) <= set(head)
            assert len([i for i in head if i < n]) == 16


def test_snapkv_window_leaves_half_the_budget_to_its_selection() -> None:
    """At a budget smaller than twice the window, the window takes half and the sink (most attended) stays."""
    probs = torch.full((1, 2, 32, 64), 0.01)
    probs[..., 0] = 0.5  # the sink
    probs[..., 10] = 0.3
    kept = compress_prompt(probs, keep=8, group=2, kernel=1)[0, 0]
    assert kept.sum() == 8 and kept[60:].all() and kept[0] and kept[10]
    assert compress_prompt(probs, keep=64, group=2, kernel=1).all()


def test_every_scorer_protects_the_same_sinks_and_recent_tokens() -> None:
    scorers = [n for n in policy_names() if make_policy(n).stateless and not make_policy(n).is_dense]
    assert {n: (make_policy(n).sinks, make_policy(n).recent) for n in scorers} == dict.fromkeys(scorers, (4, 4))


def test_quest_bound_is_an_upper_bound_of_every_key_in_its_page():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 3, 16)
    k = torch.randn(1, 2, 64, 16)
    pages = k.view(1, 2, 4, 16, 16)
    bound = page_bounds(q, pages.amin(dim=3), pages.amax(dim=3))  # [1, 2, 3, 4]
    true = torch.matmul(q, k.transpose(-1, -2)).view(1, 2, 3, 4, 16).amax(-1)
    assert (bound >= true - 1e-5).all()


def test_quest_partial_page_uses_only_visible_keys():
    torch.manual_seed(0)
    q = torch.randn(1, 1, 1, 8)
    k = torch.randn(1, 1, 20, 8)
    view = LayerView(2, q, k, 1.0, torch.tensor([17]))
    scores = QuestPolicy(page_size=16).scores(view)[0, 0, 0]
    visible = torch.matmul(q[0, 0], k[0, 0, 16:18].T).max()
    assert scores[16] >= visible - 1e-5
    k_future = k.clone()
    k_future[:, :, 18:] = 100.0
    assert torch.equal(
        QuestPolicy(page_size=16).scores(LayerView(2, q, k_future, 1.0, torch.tensor([17])))[0, 0, 0, 16:18],
        scores[16:18],
    )


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_teacher_row_equals_decode_step(tiny_lm, name):
    assert_teacher_rows_equal_decode_steps(tiny_lm, name, steps=10)


@pytest.mark.parametrize(("query", "keys"), [("own", "pairs"), ("ahead", "learned"), ("own", "learned")])
def test_teacher_row_equals_decode_step_with_own_queries_and_learned_keys(tiny_lm, query, keys):
    torch.manual_seed(2)
    config = PredictorConfig.for_spec(tiny_lm.spec, dim=8, inner=16, group_layers=2, query=query, keys=keys)
    predictor = Predictor(config)
    with torch.no_grad():  # trained weights, not the initial ones (which pick the calibrated pairs)
        for producer in predictor.producers.values():
            producer.down.weight.normal_(std=0.3)
        if query == "own":
            predictor.own_weight.uniform_(0.2, 1.5)
        if keys == "learned":
            predictor.key_projection.add_(0.3 * torch.randn_like(predictor.key_projection))
    assert_teacher_rows_equal_decode_steps(tiny_lm, "tokenbutler", steps=10, predictor=predictor)


def assert_teacher_rows_equal_decode_steps(lm, name: str, steps: int, n: int = 30, **options) -> None:
    """Decode `steps` tokens at 40%, then teacher-force the same tokens: row t must equal step t."""
    budget = Budget(ratio=0.4)
    events = run(lm, name, budget, steps=steps, n=n, **options)
    ids = torch.cat([prompt_ids(n)[0], torch.tensor([e.token_id for e in events[:-1]])])
    logits, _ = forward_teacher(lm, ids, build(name, lm, **options), budget, prompt_len=n)
    for i, event in enumerate(events):
        assert torch.allclose(logits[0, n - 1 + i], event.logits, atol=1e-4), f"step {i}"


def test_topk_ties_go_to_the_earlier_token_like_the_teacher_mask() -> None:
    from core.policies.base import descending_ranks, topk_sorted

    scores = torch.tensor([[[1.0, 3.0, 2.0, 3.0, 3.0, 0.5]]])  # three-way tie across the cut at keep=2
    assert topk_sorted(scores, 2).tolist() == [[[1, 3]]]
    assert (descending_ranks(scores)[0, 0] < 2).nonzero().flatten().tolist() == [1, 3]
    assert topk_sorted(scores, 4).tolist() == [[[1, 2, 3, 4]]]  # no tie at the cut: the fast path


@pytest.mark.parametrize("seed", range(4))
def test_fast_topk_picks_what_a_stable_sort_picks(seed) -> None:
    from core.policies.base import topk_sorted

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 3, 300, generator=g)
    if seed % 2:  # page-constant scores: ties straddle the cut, the stable path decides
        scores = scores[..., ::10].repeat_interleave(10, dim=-1)
    scores[..., :4] = float("-inf")
    want = scores.argsort(dim=-1, descending=True, stable=True)[..., :37].sort(dim=-1).values
    assert torch.equal(topk_sorted(scores, 37), want)


@pytest.mark.parametrize("name", ["dense", "tokenbutler", "h2o", "snapkv", "quest", "tova", "double-sparsity"])
def test_decoding_from_a_shared_prefill_equals_decoding_from_the_prompt(tiny_lm, name):
    from core.decode import prefill_prompt

    config = GenerationConfig(max_new_tokens=8, stop_at_eos=False)
    shared = prefill_prompt(tiny_lm, prompt_ids(40), config)
    for _ in range(2):  # each run decodes from its own copy: the shared cache is never written
        forked = list(generate(tiny_lm, shared, build(name, tiny_lm), Budget(ratio=0.3), config))
        fresh = list(generate(tiny_lm, prompt_ids(40), build(name, tiny_lm), Budget(ratio=0.3), config))
        assert [e.token_id for e in forked] == [e.token_id for e in fresh]
        assert all(torch.allclose(a.logits, b.logits, atol=1e-5) for a, b in zip(forked, fresh, strict=True))
    assert shared.cache.get_seq_length() == 40


def test_a_chunked_prefill_equals_one_pass_and_reports_progress(tiny_lm, monkeypatch):
    from core import decode

    config = GenerationConfig(max_new_tokens=6, stop_at_eos=False)
    whole = decode.prefill_prompt(tiny_lm, prompt_ids(45), config)
    monkeypatch.setattr(decode, "PREFILL_CHUNK", 16)
    seen = []
    chunked = decode.prefill_prompt(tiny_lm, prompt_ids(45), config, on_progress=lambda done, total: seen.append(done))
    assert seen == [16, 32, 45]
    assert torch.allclose(whole.logits, chunked.logits, atol=1e-5)
    for layer, view in whole.views.items():
        assert torch.allclose(view.query, chunked.views[layer].query, atol=1e-5)
        assert torch.allclose(view.key, chunked.views[layer].key, atol=1e-5)
    for name in ("h2o", "tokenbutler"):
        a = [e.token_id for e in generate(tiny_lm, whole, build(name, tiny_lm), Budget(ratio=0.3), config)]
        assert a == [e.token_id for e in generate(tiny_lm, chunked, build(name, tiny_lm), Budget(ratio=0.3), config)]


@pytest.mark.parametrize(("name", "budget"), [(n, "30%") for n in EVERY_METHOD] + [("h2o", "9"), ("quest", "9")])
def test_a_teacher_pass_after_a_shared_prefill_equals_the_whole_pass(tiny_lm, name, budget):
    """The long-prompt protocol's pass: rows after a shared dense prefill, as the whole teacher pass has them."""
    from core.decode import forward_teacher_after, prefill_prompt

    ids, prompt_len = prompt_ids(50, seed=6)[0], 30
    whole, whole_stats = forward_teacher(tiny_lm, ids, build(name, tiny_lm), Budget.parse(budget), prompt_len)
    shared = prefill_prompt(tiny_lm, ids[:prompt_len], GenerationConfig(max_new_tokens=20))
    for _ in range(2):  # the shared prefill is left as it was
        tail, stats = forward_teacher_after(tiny_lm, shared, ids[prompt_len:], build(name, tiny_lm),
                                            Budget.parse(budget))
        assert torch.allclose(whole[0, prompt_len:], tail[0], atol=1e-4)
        assert (whole_stats.read, whole_stats.total) == (stats.read, stats.total)
        assert whole_stats.side == pytest.approx(stats.side)


@pytest.mark.parametrize("name", ["tokenbutler", "double-sparsity"])
@pytest.mark.parametrize(("budget", "fits"), [(Budget(ratio=0.3), True), (Budget(tokens=9), True),
                                             (Budget(tokens=4), False)])  # 4: protection alone exceeds it
def test_fused_decoding_equals_the_per_layer_path(tiny_lm, name, budget, fits, monkeypatch):
    """Untraced decoding takes the fused selection (TokenButler's batched over a producer group); traced
    decoding scores per layer in plain torch."""
    policy_class = type(build(name, tiny_lm))
    batched, real = [], policy_class.decode_indices
    monkeypatch.setattr(policy_class, "decode_indices",
                        lambda self, view, keep: batched.append(real(self, view, keep)) or batched[-1])
    config = GenerationConfig(max_new_tokens=10, stop_at_eos=False)
    fast = list(generate(tiny_lm, prompt_ids(40), build(name, tiny_lm), budget, config))
    assert (sum(chosen is not None for chosen in batched) >= len(batched) // 2) == fits
    traced = run(tiny_lm, name, budget, steps=10)
    assert [e.token_id for e in fast] == [e.token_id for e in traced]
    assert all(torch.equal(a.logits, b.logits) for a, b in zip(fast, traced, strict=True))
    assert fast[-1].sparsity == traced[-1].sparsity


@pytest.mark.parametrize("name", ["tokenbutler", "h2o", "dense"])
def test_a_traced_replay_records_what_a_traced_generation_records(tiny_lm, name):
    """The page decodes untraced, then replays the same tokens traced for Inspect: the replay's traces are
    the traced generation's, step for step (a recurrence's state and a scorer's selection alike)."""
    from core.decode import prefill_prompt, trace_replay

    budget, config = Budget(ratio=0.3), GenerationConfig(max_new_tokens=8, stop_at_eos=False)
    shared = prefill_prompt(tiny_lm, prompt_ids(40), config)
    untraced = [e.token_id for e in generate(tiny_lm, shared, build(name, tiny_lm), budget, config)]
    traced = [e.trace for e in run(tiny_lm, name, budget, steps=8)][1:]
    replayed = list(trace_replay(tiny_lm, shared, build(name, tiny_lm), budget, untraced))
    assert len(replayed) == len(traced) == 7
    for mine, want in zip(replayed, traced, strict=True):
        assert mine.position == want.position and set(mine.layers) == set(want.layers)
        for layer, trace in want.layers.items():
            assert torch.equal(mine.layers[layer].true_probs, trace.true_probs)
            kept = mine.layers[layer].kept
            assert (kept is None) == (trace.kept is None) and (kept is None or torch.equal(kept, trace.kept))
