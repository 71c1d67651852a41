"""The TokenButler predictor: training lowers the loss, checkpoints round-trip, resume, refusal of other models."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import pytest
import torch

from core import attention
from core.budget import Budget
from core.checkpoint import PredictorMismatchError
from core.decode import forward_teacher
from core.policies import make_policy
from core.predictor import Predictor, PredictorConfig
from core.train import TrainConfig, capture_pass, row_logits, train
from tests.conftest import tiny_llama

CONFIG = TrainConfig(
    steps=12, seq_len=64, rows=16, min_row=4, lr=1e-2, dim=8, inner=32, group_layers=2, calib_chunks=2, save_every=6
)


def chunks(n: int = 8, length: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 128, (length,), generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("predictor")
    predictor, history = train(tiny_lm, chunks(), out, CONFIG, progress=False)
    return out, predictor, history


def test_training_lowers_the_loss(trained):
    _, _, history = trained
    first = sum(h["loss"] for h in history[:3]) / 3
    last = sum(h["loss"] for h in history[-3:]) / 3
    assert last < first


def test_save_load_round_trip_gives_identical_scores(tiny_lm, trained):
    out, predictor, _ = trained
    loaded = Predictor.load(out, tiny_lm.spec)
    cap = capture_pass(tiny_lm, chunks()[0], predictor.config.producer_layers)
    rows = torch.arange(10, 64)
    for (_, a, _, _), (_, b, _, _) in zip(row_logits(predictor, cap, rows), row_logits(loaded, cap, rows), strict=True):
        assert torch.equal(a, b)
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["fingerprint"] == tiny_lm.spec.fingerprint
    assert meta["overheads"]["parameters"] == predictor.parameter_count()


def test_a_predictor_for_another_model_is_refused(trained):
    out, _, _ = trained
    other = tiny_llama(seed=5)
    with pytest.raises(PredictorMismatchError, match="trained for"):
        Predictor.load(out, other.spec)
    policy = make_policy("tokenbutler", predictor=Predictor.load(out))
    with pytest.raises(PredictorMismatchError, match="fingerprint"):
        forward_teacher(other, chunks()[0], policy, Budget(ratio=0.5))
    assert attention._ACTIVE.get() is None, "a refused model must not leave the session driving attention"


def test_resume_continues_from_the_saved_step(tiny_lm, tmp_path):
    train(tiny_lm, chunks(), tmp_path, CONFIG, progress=False, until=5)
    _, history = train(tiny_lm, chunks(), tmp_path, CONFIG, progress=False)
    assert [h["step"] for h in history] == list(range(1, 13))
    fresh = train(tiny_lm, chunks(), tmp_path / "fresh", CONFIG, progress=False)[1]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in fresh], rel=1e-5)
    with pytest.raises(ValueError, match="key_bits"):
        train(tiny_lm, chunks(), tmp_path, replace(CONFIG, key_bits=8), progress=False)


def test_overheads_are_within_the_design_limits(tiny_lm):
    predictor = Predictor(PredictorConfig.for_spec(tiny_lm.spec, dim=8, inner=16, group_layers=2))
    over = predictor.overheads(tiny_lm.spec, 10**9)
    assert over["cache_values_per_token"] == (tiny_lm.spec.num_layers - 1) * tiny_lm.spec.num_kv_heads * 8


def test_missing_predictor_says_how_to_train_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m core train"):
        Predictor.load(tmp_path)


def small_predictor(num_heads: int) -> Predictor:
    """A 4-layer predictor over 2 KV heads of dim 16 (dim 8, a producer every 2 layers), not tied to a model."""
    return Predictor(PredictorConfig(num_layers=4, num_heads=num_heads, num_kv_heads=2, head_dim=16, hidden_size=32,
                                     fingerprint="x", base_model="x", dim=8, inner=16, group_layers=2))


def test_group_key_cache_grows_to_exactly_the_full_projection_of_each_layer() -> None:
    from core.kernels.select_cpu import select_topk
    from core.policies.base import topk_sorted
    from core.policies.tokenbutler import GroupKeys

    torch.manual_seed(0)
    predictor = small_predictor(num_heads=4)
    keys = {2: torch.randn(1, 2, 150, 16), 3: torch.randn(1, 2, 150, 16)}
    cache = GroupKeys(2)
    for length in (10, 11, 12, 80, 81, 150):  # a prefill, decode steps, then jumps past the buffer
        for slot, layer in enumerate((2, 3)):
            got = cache.update(slot, predictor, layer, keys[layer][:, :, :length])
            assert torch.equal(got, predictor.project_keys(layer, keys[layer][:, :, :length]))
    assert torch.equal(cache.update(0, predictor, 2, keys[2]), predictor.project_keys(2, keys[2]))
    shorter = cache.update(0, predictor, 2, keys[2][:, :, :5] * 2)  # a new, shorter sequence starts over
    assert torch.equal(shorter, predictor.project_keys(2, keys[2][:, :, :5] * 2))
    query = torch.randn(2, 1, 4, 8)  # one row per layer of the group
    cache.update(1, predictor, 3, keys[3][:, :, :5])
    chosen = select_topk(cache.codes, query.reshape(4, 2, 8), 8**-0.5, 2, 0, 5, 5).view(2, 1, 2, 2)
    for slot, layer in enumerate((2, 3)):
        head = predictor.score_projected(
            query[slot][:, :, None, :], cache.update(slot, predictor, layer, keys[layer][:, :, :5] * (2 - slot))
        )
        assert torch.equal(chosen[slot], topk_sorted(head.view(1, 2, 2, 5).amax(dim=2), 2))


def test_grouped_scores_equal_per_head_products() -> None:
    torch.manual_seed(1)
    predictor = small_predictor(num_heads=6)
    query, keys = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 40, 8)
    expected = query @ keys.repeat_interleave(3, dim=1).transpose(-1, -2) / 8**0.5
    assert torch.allclose(predictor.score_projected(query, keys), expected, atol=1e-6)


def test_a_schedule_trains_each_phase_on_chunks_of_its_length(tiny_lm, tmp_path):
    config = replace(CONFIG, schedule="32x4,64x3", save_every=100)
    assert config.phases() == [(32, 4), (64, 3)] and config.total_steps == 7
    data = chunks(4, 32) + chunks(4, 64)
    _, history = train(tiny_lm, data, tmp_path, config, progress=False)
    assert [h["seq_len"] for h in history] == [32] * 4 + [64] * 3
    assert history[-1]["tokens_seen"] == 4 * 32 + 3 * 64
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["tokens_seen"] == 4 * 32 + 3 * 64 and meta["wall_s"] > 0
    with pytest.raises(ValueError, match="No training chunks of length"):
        train(tiny_lm, chunks(4, 32), tmp_path / "x", replace(config, schedule="48x2"), progress=False)
    with pytest.raises(ValueError, match="schedule must look like"):
        replace(CONFIG, schedule="512:100").phases()


def test_queries_rotate_each_head_by_its_own_pairs_and_follow_new_pairs(tmp_path) -> None:
    """The producer's queries are its output rotated, per head, by the RoPE angles of that head's KV
    pairs; the index tables follow `set_pairs` and a save/load round trip."""
    torch.manual_seed(2)
    predictor = small_predictor(num_heads=4)
    cfg = predictor.config
    pairs = torch.stack([torch.randperm(cfg.head_dim // 2)[: cfg.dim // 2].sort().values for _ in range(8)])
    predictor.set_pairs(pairs.view(cfg.num_layers, cfg.num_kv_heads, -1))
    hidden = torch.randn(1, 3, cfg.hidden_size)
    cos, sin = torch.randn(1, 3, cfg.head_dim), torch.randn(1, 3, cfg.head_dim)
    producer = cfg.producer_layers[0]
    out = predictor.producers[str(producer)](hidden).view(1, 3, -1, cfg.num_heads, cfg.dim)
    half, group = cfg.dim // 2, cfg.num_heads // cfg.num_kv_heads
    for i, (layer, got) in enumerate(predictor.queries(producer, hidden, cos, sin).items()):
        first = predictor.pairs[layer]
        assert torch.equal(predictor.key_channels(layer), torch.cat([first, first + cfg.head_dim // 2], -1))
        for head in range(cfg.num_heads):
            cols = predictor.pairs[layer, head // group]
            x, y = out[0, :, i, head, :half], out[0, :, i, head, half:]
            c, s = cos[0][:, cols], sin[0][:, cols]
            assert torch.allclose(got[0, head], torch.cat([x * c - y * s, y * c + x * s], -1), atol=1e-6)
    loaded = Predictor.load(predictor.save(tmp_path / "p"))
    copied = pickle.loads(pickle.dumps(predictor))  # e.g. to another process
    for layer in range(cfg.num_layers):
        assert torch.equal(loaded.key_channels(layer), predictor.key_channels(layer))
        assert torch.equal(copied.key_channels(layer), predictor.key_channels(layer))


def test_key_channels_stored_at_8_bits_are_what_training_and_decoding_score(tiny_lm) -> None:
    from core.keysummary import stored

    config = PredictorConfig.for_spec(tiny_lm.spec, dim=8, inner=16, group_layers=2, key_bits=8)
    predictor = Predictor(config)
    key = torch.randn(1, tiny_lm.spec.num_kv_heads, 12, tiny_lm.spec.head_dim)
    picked = torch.gather(key, -1, predictor.key_channels(1)[None, :, None, :].expand(1, -1, 12, -1))
    assert torch.equal(predictor.project_keys(1, key), stored(picked, 8))
    over = predictor.overheads(tiny_lm.spec, 10**6)
    assert over["cache_values_per_token"] == (tiny_lm.spec.num_layers - 1) * tiny_lm.spec.num_kv_heads * (8 / 2 + 1)
    with pytest.raises(ValueError, match="bits"):
        Predictor(replace(config, key_bits=5))


def test_the_layers_own_query_starts_as_its_real_query_at_the_calibrated_channels(tiny_lm) -> None:
    """query="own" at initialisation is Double Sparsity at the predictor's channels: the true logit over them."""
    config = PredictorConfig.for_spec(tiny_lm.spec, dim=8, inner=16, group_layers=2, query="own")
    predictor = Predictor(config)
    cap = capture_pass(tiny_lm, chunks()[0], config.producer_layers)
    rows = torch.arange(10, 64)
    group = config.num_heads // config.num_kv_heads
    seen = 0
    for layer, pred, _, _ in row_logits(predictor, cap, rows):
        query, key = cap.qk[layer]
        channels = predictor.key_channels(layer)
        per_head = channels.repeat_interleave(group, 0)[None, :, None, :]
        q = torch.gather(query[:, :, rows], -1, per_head.expand(1, -1, rows.numel(), -1))
        k = torch.gather(key, -1, channels[None, :, None, :].expand(1, -1, 64, -1)).repeat_interleave(group, 1)
        partial = torch.matmul(q, k.transpose(-1, -2)) / config.head_dim**0.5
        assert torch.allclose(pred, partial, atol=1e-5)
        seen += 1
    assert seen == len(config.predicted_layers)


def test_a_trained_own_query_predictor_learns_and_round_trips(tiny_lm, tmp_path) -> None:
    predictor, _ = train(tiny_lm, chunks(), tmp_path, replace(CONFIG, query="own", steps=8), progress=False)
    start = (config := predictor.config).dim / config.head_dim
    assert not torch.allclose(predictor.own_weight, torch.full_like(predictor.own_weight, start**0.5))
    loaded = Predictor.load(tmp_path, tiny_lm.spec)
    assert loaded.config.query == "own" and torch.equal(loaded.own_weight, predictor.own_weight)
    cap = capture_pass(tiny_lm, chunks()[1], config.producer_layers)
    rows = torch.arange(10, 64)
    for (_, a, _, _), (_, b, _, _) in zip(row_logits(predictor, cap, rows), row_logits(loaded, cap, rows), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="query"):
        Predictor(replace(config, query="behind"))


def rope_tables(lm, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own RoPE tables (cos, sin [1, T, head_dim]) at `positions`."""
    return lm.model.model.rotary_emb(torch.zeros(1), positions[None])


def test_a_learned_key_code_starts_as_the_calibrated_pairs_and_stays_relative_to_position(tiny_lm) -> None:
    spec = tiny_lm.spec
    torch.manual_seed(3)
    pairs = Predictor(PredictorConfig.for_spec(spec, dim=8, inner=16, group_layers=2))
    learned = Predictor(PredictorConfig.for_spec(spec, dim=8, inner=16, group_layers=2, keys="learned"))
    heads = spec.num_layers * spec.num_kv_heads
    calibrated = torch.stack([torch.randperm(spec.head_dim // 2)[:4].sort().values for _ in range(heads)])
    for predictor in (pairs, learned):
        predictor.set_pairs(calibrated.view(spec.num_layers, spec.num_kv_heads, 4))
    key = torch.randn(1, spec.num_kv_heads, 12, spec.head_dim)
    rope = rope_tables(tiny_lm, torch.arange(12))
    assert torch.allclose(learned.pick_keys(1, key, rope), pairs.pick_keys(1, key), atol=1e-5)
    with pytest.raises(ValueError, match="RoPE"):
        learned.pick_keys(1, key)
    with torch.no_grad():
        learned.key_projection.add_(torch.randn_like(learned.key_projection))

    def rotated(vectors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = rope_tables(tiny_lm, positions)
        return apply_rotary_pos_emb(vectors, vectors, cos, sin)[0]

    plain_key = torch.randn(1, spec.num_kv_heads, 3, spec.head_dim)
    query = torch.randn(1, spec.num_heads, 1, 8)  # an importance query before its rotation at position p
    scores = []
    for shift in (0, 37):
        keys_at = torch.tensor([2, 5, 9]) + shift
        code = learned.pick_keys(2, rotated(plain_key, keys_at), rope_tables(tiny_lm, keys_at))
        cos, sin = rope_tables(tiny_lm, torch.tensor([11 + shift]))
        columns = learned.rope_columns[2]  # rotate the query at its head's pairs, as `queries` does
        c, s = cos[0, 0][columns][None, :, None, :], sin[0, 0][columns][None, :, None, :]
        x, y = query[..., :4], query[..., 4:]
        scores.append(learned.score_projected(torch.cat([x * c - y * s, y * c + x * s], dim=-1), code))
    assert torch.allclose(scores[0], scores[1], atol=1e-4)  # only the distance between positions matters


def test_a_trained_learned_key_code_round_trips_and_decodes_from_its_cache(tiny_lm, tmp_path) -> None:
    from core.policies.tokenbutler import GroupKeys

    predictor, _ = train(tiny_lm, chunks(), tmp_path, replace(CONFIG, keys="learned", steps=6), progress=False)
    loaded = Predictor.load(tmp_path, tiny_lm.spec)
    assert loaded.config.keys == "learned" and torch.equal(loaded.key_projection, predictor.key_projection)
    assert loaded.overheads(tiny_lm.spec, 10**6)["parameters"] == predictor.parameter_count()
    key = torch.randn(1, tiny_lm.spec.num_kv_heads, 40, tiny_lm.spec.head_dim)
    cache = GroupKeys(1, lambda start, stop, like: rope_tables(tiny_lm, torch.arange(start, stop)))
    for length in (10, 11, 40):  # a prefill, then steps: each appended code is its own token's
        got = cache.update(0, loaded, 3, key[:, :, :length])
    assert torch.allclose(got, loaded.project_keys(3, key, rope_tables(tiny_lm, torch.arange(40))), atol=1e-5)
