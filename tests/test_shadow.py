"""ShadowLLM: masks really change the forward pass, importance is the true gradient, the predictor trains,
round-trips and refuses other models, bad inputs fail clearly, and the evaluation and page run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.checkpoint import PredictorMismatchError
from core.cli import main
from core.decode import PromptError
from core.shadow import (
    DEFAULT_DIR,
    ShadowConfig,
    ShadowMask,
    ShadowPredictor,
    SparsityError,
    UnitScores,
    capture,
    choose_mask,
    masked,
)
from core.shadow.analysis import analyze_prompt, neuron_blocks
from core.shadow.dataset import collect_targets
from core.shadow.evaluate import ShadowEvalConfig, run_shadow_evaluation
from core.shadow.ranking import overall_spearman, rank_agreement
from core.shadow.report import markdown_report, write_results
from core.shadow.sweep import masked_nll
from core.shadow.train import ShadowTrainConfig, train_predictor
from tests.conftest import tiny_llama

TRAIN = ShadowTrainConfig(epochs=30, lr=3e-3, batch_size=8, val_share=0.25)


def token_ids(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(lm, ids: torch.Tensor, mask: ShadowMask | None = None) -> torch.Tensor:
    if mask is None:
        return lm.model(ids).logits
    with masked(lm, mask):
        return lm.model(ids).logits


def small_predictor(lm) -> ShadowPredictor:
    torch.manual_seed(0)
    return ShadowPredictor(ShadowConfig.for_spec(lm.spec, width=32, neuron_rank=4))


@pytest.fixture(scope="module")
def trained(tiny_lm, tmp_path_factory):
    data = collect_targets(tiny_lm, list(token_ids(24, 24)), progress=False)
    predictor = small_predictor(tiny_lm)
    history = train_predictor(predictor, data, TRAIN, progress=False)
    out = predictor.save(tmp_path_factory.mktemp("shadow"), {"history": history})
    return out, predictor, history, data


def test_zero_sparsity_equals_dense_exactly(tiny_lm):
    ids = token_ids(2, 20)
    scores = capture(tiny_lm, ids).scores["plainact"].normalized()
    mask = choose_mask(scores, 0.0, 0.0)
    assert mask.heads.eq(1).all() and mask.neurons.eq(1).all()
    assert torch.equal(logits(tiny_lm, ids, mask), logits(tiny_lm, ids))


@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_removing_a_unit_changes_the_output_and_removing_nothing_does_not(tiny_lm, unit):
    ids = token_ids(1, 16)
    dense = logits(tiny_lm, ids)
    keep_all = ShadowMask.dense(tiny_lm.spec)
    assert torch.equal(logits(tiny_lm, ids, keep_all), dense)
    drop_one = ShadowMask.dense(tiny_lm.spec)
    getattr(drop_one, unit)[2, 1] = 0.0
    assert (logits(tiny_lm, ids, drop_one) - dense).abs().max() > 1e-4
    assert torch.equal(logits(tiny_lm, ids), dense), "hooks must be removed when the block ends"


def test_plainact_is_the_true_gradient_of_a_unit_gate(tiny_lm):
    """With 2 tokens only the first is scored, so plainact = |dL/d(gate)| of a per-unit scale on the mask."""
    ids = token_ids(1, 2, seed=3)
    gates = ShadowMask(torch.ones(4, 4, requires_grad=True), torch.ones(4, 128, requires_grad=True))
    with masked(tiny_lm, gates):
        out = tiny_lm.model(ids).logits
    torch.nn.functional.cross_entropy(out[0, :-1], ids[0, 1:]).backward()
    true = capture(tiny_lm, ids, ["plainact"]).scores["plainact"]
    torch.testing.assert_close(true.heads[0], gates.heads.grad.abs(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(true.neurons[0], gates.neurons.grad.abs(), rtol=1e-4, atol=1e-7)


def test_global_and_per_layer_ranking_keep_layer_zero_dense():
    torch.manual_seed(0)
    scores = UnitScores(torch.rand(4, 8), torch.rand(4, 16))
    per_layer = choose_mask(scores, 0.5, 0.25, scope="layer")
    assert per_layer.heads[0].all() and per_layer.neurons[0].all()
    assert (per_layer.heads[1:].sum(-1) == 4).all() and (per_layer.neurons[1:].sum(-1) == 12).all()
    overall = choose_mask(scores, 0.5, 0.25)
    assert overall.sparsity() == {"heads": 0.5, "neurons": 0.25}
    kept, removed = scores.heads[1:][overall.heads[1:] == 1], scores.heads[1:][overall.heads[1:] == 0]
    assert kept.min() > removed.max()


def test_batched_masks_give_the_losses_of_single_runs(tiny_lm):
    ids = token_ids(1, 24, seed=1)[0]
    scores = capture(tiny_lm, ids).scores["magnitude"].normalized()[0]
    masks = [ShadowMask.dense(tiny_lm.spec), choose_mask(scores, 0.5, 0.0), choose_mask(scores, 0.0, 0.5)]
    batched = masked_nll(tiny_lm, ids, masks, start=8)
    single = [masked_nll(tiny_lm, ids, [m], start=8)[0] for m in masks]
    assert batched == pytest.approx(single, rel=1e-5)
    assert batched[1] != batched[0] and batched[2] != batched[0]


def test_a_few_training_steps_lower_the_loss(trained):
    _, _, history, _ = trained
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"val_loss", "heads_within_layer", "neurons_overall"} <= set(history[-1])


def test_save_load_round_trip_gives_identical_outputs(tiny_lm, trained):
    out, predictor, _, data = trained
    loaded = ShadowPredictor.load(out, tiny_lm.spec)
    a, b = predictor.predict(data.features), loaded.predict(data.features)
    assert torch.equal(a.heads, b.heads) and torch.equal(a.neurons, b.neurons)
    assert torch.equal(predictor.static().heads, loaded.static().heads)
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["fingerprint"] == tiny_lm.spec.fingerprint


def test_a_predictor_for_another_model_is_refused(trained):
    out, _, _, _ = trained
    other = tiny_llama(seed=5)
    with pytest.raises(PredictorMismatchError, match="trained for 'tiny-llama-0'"):
        ShadowPredictor.load(out, other.spec)


def test_a_missing_predictor_says_how_to_train_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="shadow-train"):
        ShadowPredictor.load(tmp_path)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "0.5", None])
def test_bad_sparsities_are_refused(tiny_lm, trained, sparsity):
    scores = capture(tiny_lm, token_ids(1, 8)).scores["plainact"].normalized()
    with pytest.raises(SparsityError, match=r"in \[0, 1\)"):
        choose_mask(scores, sparsity, 0.0)
    with pytest.raises(SparsityError, match="neuron sparsity"):
        analyze_prompt(tiny_lm, trained[1], "some text", 0.5, sparsity)


@pytest.mark.parametrize("prompt", ["", "   ", "x"])
def test_empty_or_one_token_prompts_are_refused(tiny_lm, trained, prompt):
    with pytest.raises(PromptError):
        analyze_prompt(tiny_lm, trained[1], prompt, 0.5, 0.0)
    with pytest.raises(PromptError, match="at least 2 tokens"):
        capture(tiny_lm, torch.tensor([[5]]))


def test_a_bad_scope_or_mask_shape_is_refused(tiny_lm):
    with pytest.raises(SparsityError, match="scope"):
        choose_mask(capture(tiny_lm, token_ids(1, 8)).scores["plainact"], 0.5, 0.0, scope="row")
    wrong = ShadowMask(torch.ones(3, 4), torch.ones(3, 128))
    with pytest.raises(ValueError, match="does not fit"), masked(tiny_lm, wrong):
        pass


def test_prompt_analysis_shapes_and_consistency(tiny_lm, trained):
    result = analyze_prompt(tiny_lm, trained[1], "The quick brown fox jumps over the lazy dog.", 0.5, 0.25)
    assert result.scores["plainact"].heads.shape == (4, 4) and result.masks["predicted"].neurons.shape == (4, 128)
    assert result.masks["plainact"].sparsity() == {"heads": 0.5, "neurons": 0.25}
    assert set(result.curves) == {"heads", "neurons"} and all(len(v) == 3 for v in result.curves["heads"].values())
    assert len(result.departure["predicted_heads_rho_by_layer"]) == 3
    assert neuron_blocks(result.scores["plainact"].neurons, 32).shape == (4, 4)
    assert neuron_blocks(torch.ones(2, 10), 4).shape == (2, 3)


def test_evaluation_runs_end_to_end_and_writes_its_reports(tiny_lm, trained, tmp_path):
    config = ShadowEvalConfig(windows=2, window_len=32, prompt_len=16, sparsities=(0.5,), out=str(tmp_path),
                              cache_dir="")
    doc = run_shadow_evaluation(tiny_lm, config, trained[1], list(token_ids(2, 32, seed=9)), progress=False)
    ppl = doc["perplexity"]
    assert set(ppl["global"]["heads"]) == set(config.methods) and "predicted" in ppl["layer"]["heads"]
    assert doc["rank_correlation"]["static"]["heads_within_layer"] <= 1.0
    assert set(ppl["paired_over"]["predicted"]["heads"]) == set(config.methods) - {"predicted"}
    assert set(ppl["paired_over"]) == {"predicted", "magnitude", "direct"} & set(config.methods)
    paths = write_results(doc, tmp_path)
    assert "| predicted |" in paths["md"].read_text() and paths["html"].stat().st_size > 0
    assert "predicted mask's perplexity over each other mask's, heads" in paths["md"].read_text()
    assert "magnitude mask's perplexity over each other mask's, neurons" in paths["md"].read_text()


def test_the_paired_ratio_follows_every_window_difference():
    from core.eval.intervals import resample_indices
    from core.shadow.evaluate import paired_over
    from core.shadow.masking import Setting

    draws = resample_indices(3, 500, 0)
    losses = {Setting("predicted", "heads", 0.5): [1.0, 2.0, 3.0], Setting("static", "heads", 0.5): [1.5, 2.5, 3.5],
              Setting("magnitude", "heads", 0.5): [0.0, 2.0, 4.0],
              Setting("static", "heads", 0.5, "layer"): [9.0, 9.0, 9.0]}
    ratios = paired_over(losses, draws, "predicted")["heads"]
    assert set(ratios) == {"static", "magnitude"}, "per-layer scope and the reference itself are not rivals"
    assert ratios["static"]["0.5"] == pytest.approx([math.exp(-0.5)] * 3)  # the same gain on every window
    ratio, low, high = ratios["magnitude"]["0.5"]
    assert ratio == pytest.approx(1.0) and low < 1.0 < high  # gains and losses that cancel: not separated
    assert paired_over(losses, draws, "static")["heads"]["predicted"]["0.5"] == pytest.approx([math.exp(0.5)] * 3)


def test_evaluation_resumes_from_its_cells_and_measures_only_a_new_method(tiny_lm, trained, tmp_path, monkeypatch):
    import core.shadow.evaluate as shadow_evaluate

    windows = list(token_ids(2, 32, seed=9))
    common = dict(windows=2, window_len=32, prompt_len=16, sparsities=(0.5,), out=str(tmp_path),
                  cache_dir=str(tmp_path / "cells"))
    first = run_shadow_evaluation(tiny_lm, ShadowEvalConfig(methods=("plainact", "magnitude"), **common), trained[1],
                                  windows, progress=False)
    asked: list[list[str]] = []
    real_scores = shadow_evaluate.method_scores
    monkeypatch.setattr(shadow_evaluate, "method_scores",
                        lambda cap, methods, *a: asked.append(list(methods)) or real_scores(cap, methods, *a))
    again = run_shadow_evaluation(tiny_lm, ShadowEvalConfig(methods=("plainact", "magnitude"), **common), trained[1],
                                  windows, progress=False)
    assert asked == [] and again["perplexity"] == first["perplexity"]
    assert first["cells"] == {"measured": 6, "cached": 0} and again["cells"] == {"measured": 0, "cached": 6}
    assert "0 cells measured in this run, 6 read from the cell cache" in markdown_report(again)
    wider = run_shadow_evaluation(tiny_lm, ShadowEvalConfig(methods=("plainact", "magnitude", "random"), **common),
                                  trained[1], windows, progress=False)
    assert asked == [["random"], ["random"]] and wider["cells"] == {"measured": 2, "cached": 6}
    assert wider["perplexity"]["global"]["heads"]["magnitude"] == first["perplexity"]["global"]["heads"]["magnitude"]
    fresh = run_shadow_evaluation(tiny_lm, ShadowEvalConfig(methods=("plainact", "magnitude", "random"),
                                                            **{**common, "cache_dir": ""}),
                                  trained[1], windows, progress=False)
    assert fresh["perplexity"] == wider["perplexity"]


class _Process:
    """One of `num_processes` processes, run one after the other: the barrier has nothing to wait for."""

    def __init__(self, index: int, count: int) -> None:
        self.process_index, self.num_processes, self.is_main_process = index, count, index == 0

    def wait_for_everyone(self) -> None:
        pass


def test_two_processes_share_the_windows_and_the_main_one_reports_what_one_process_does(tiny_lm, trained, tmp_path):
    windows = list(token_ids(3, 32, seed=4))
    common = dict(windows=3, window_len=32, prompt_len=16, sparsities=(0.5,), methods=("magnitude", "random"),
                  out=str(tmp_path))
    alone = run_shadow_evaluation(tiny_lm, ShadowEvalConfig(cache_dir=str(tmp_path / "one"), **common), trained[1],
                                  windows, progress=False)
    shared = ShadowEvalConfig(cache_dir=str(tmp_path / "two"), **common)
    second = run_shadow_evaluation(tiny_lm, shared, trained[1], windows, progress=False, processes=_Process(1, 2))
    assert second is None, "only the main process reports"
    (own_file,) = (tmp_path / "two").glob("shadow_*.rank1.jsonl")
    assert len(own_file.read_text().splitlines()) == 3, "process 1 measured window 1 alone: dense and both methods"
    main_doc = run_shadow_evaluation(tiny_lm, shared, trained[1], windows, progress=False, processes=_Process(0, 2))
    assert main_doc["cells"] == {"measured": 6, "cached": 3}, "window 1 came from process 1's file"
    for doc in (alone, main_doc):
        del doc["timing_s"], doc["cells"], doc["config"]["cache_dir"]
    assert main_doc == alone


def test_cli_turns_a_bad_sparsity_into_a_clear_error(capsys):
    assert main(["shadow-evaluate", "--sparsities", "0.5,1.2"]) == 2
    assert "error: The sparsity must be a number in [0, 1)" in capsys.readouterr().err


def _page_handler(tiny_lm, predictor):
    """The tab's handler on the tiny model, and the components it writes (summary first, then four figures)."""
    import gradio as gr

    from app.shadow_handlers import ShadowViews, analyze_handler

    views = ShadowViews(gr.Markdown(), gr.Plot(), gr.Plot(), gr.Plot(), gr.Plot())
    return analyze_handler(views, lambda: tiny_lm, lambda lm: predictor), views.outputs


def test_the_page_handler_draws_every_figure(tiny_lm, trained):
    handler, outputs = _page_handler(tiny_lm, trained[1])
    updates = handler("The quick brown fox jumps over the lazy dog.", 0.5, 0.0, "global")
    summary, *figures = (updates[component] for component in outputs)
    assert "perplexity" in summary.lower() and len(figures) == 4
    assert f"trained to rank units by **{trained[1].config.criterion} of the prompt itself**" in summary
    assert all(f"| {label} |" in summary for label in ("predicted", "true plainact", "static mask", "magnitude"))
    assert all(fig.data for fig in figures)


def test_a_predictor_is_judged_against_the_criterion_it_learned(tiny_lm):
    torch.manual_seed(0)
    predictor = ShadowPredictor(ShadowConfig.for_spec(tiny_lm.spec, width=32, neuron_rank=4, criterion="magnitude"))
    result = analyze_prompt(tiny_lm, predictor, "The quick brown fox jumps over the lazy dog.", 0.5, 0.25)
    assert result.truth == "magnitude" and list(result.masks) == ["predicted", "magnitude", "static", "plainact"]
    assert result.agreement == rank_agreement(result.scores["predicted"][None], result.scores["magnitude"][None])
    assert result.agreement != rank_agreement(result.scores["predicted"][None], result.scores["plainact"][None])
    assert result.departure["true_heads_rho_overall"] == pytest.approx(
        overall_spearman(result.scores["magnitude"].heads, result.scores["static"].heads).item())
    handler, outputs = _page_handler(tiny_lm, predictor)
    summary = handler("The quick brown fox jumps over the lazy dog.", 0.5, 0.0, "global")[outputs[0]]
    assert "| true magnitude |" in summary and "| plainact |" in summary and "true plainact" not in summary


def test_the_page_analyses_a_predictor_of_a_combined_round_criterion(tiny_lm):
    torch.manual_seed(0)
    config = ShadowConfig.for_spec(tiny_lm.spec, width=32, neuron_rank=4, criterion="magnitude+plainact-iterative")
    result = analyze_prompt(tiny_lm, ShadowPredictor(config), "The quick brown fox jumps over the lazy dog.", 0.5, 0.0)
    truth = result.scores["magnitude+plainact-iterative"]
    assert result.truth == "magnitude+plainact-iterative" and "magnitude+plainact-iterative" in result.masks
    assert truth.heads.min() >= 0 and truth.heads.max() <= 1, "a mean of ranks scaled to [0, 1]"
    assert not torch.equal(truth.heads.argsort(), result.scores["magnitude"].heads.argsort())
    assert result.agreement == rank_agreement(result.scores["predicted"][None], truth[None])


@pytest.mark.slow
def test_shipped_predictor_ranks_heads_on_the_real_model(smol):
    predictor = ShadowPredictor.load(DEFAULT_DIR, smol.spec)
    text = "def add(a, b):\n    return a + b\n\nThe function above returns the sum of its two arguments."
    result = analyze_prompt(smol, predictor, text, 0.5, 0.0)
    assert result.masks["predicted"].sparsity()["heads"] == pytest.approx(0.5, abs=0.01)
    assert result.departure["predicted_heads_rho_overall"] > 0
    assert result.chosen_ppl["plainact"] > result.dense_ppl


def test_the_tab_registers_its_endpoint_on_the_model_queue(tiny_lm):
    import gradio as gr

    from app.ui import MODEL_QUEUE, build_shadow_tab

    with gr.Blocks() as demo:
        build_shadow_tab(lambda: tiny_lm)
    (fn,) = [f for f in demo.fns.values() if f.api_name == "shadow_analyze"]
    assert fn.concurrency_id == MODEL_QUEUE and fn.concurrency_limit == 1


def test_the_page_reports_bad_input_as_a_message_not_a_trace(tiny_lm, trained, monkeypatch):
    import gradio as gr

    from app import shadow_handlers

    monkeypatch.setattr(shadow_handlers, "MAX_PROMPT_TOKENS", 20)
    handler, _ = _page_handler(tiny_lm, trained[1])
    with pytest.raises(gr.Error, match="empty"):
        handler("  ", 0.5, 0.0, "global")
    with pytest.raises(gr.Error, match="at most 20"):
        handler("a long prompt of more than twenty characters", 0.5, 0.0, "global")
    with pytest.raises(gr.Error, match="scope"):
        handler("some text", 0.5, 0.0, "rows")


@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_contribution_is_what_removing_the_unit_takes_from_its_layers_output(tiny_lm, unit):
    """o_proj / down_proj are linear: removing one unit changes the layer's output by exactly W_u a_u, so the
    criterion equals the mean norm of that change (downstream layers aside)."""
    ids = token_ids(1, 12, seed=5)
    layer, index = 2, 3
    module = tiny_lm.model.model.layers[layer]
    proj = module.self_attn.o_proj if unit == "heads" else module.mlp.down_proj
    outputs = []
    handle = proj.register_forward_hook(lambda _, __, out: outputs.append(out.detach()))
    dense = ShadowMask.dense(tiny_lm.spec)
    removed = ShadowMask(dense.heads.clone(), dense.neurons.clone())
    getattr(removed, unit)[layer, index] = 0
    try:
        for mask in (dense, removed):
            logits(tiny_lm, ids, mask)
    finally:
        handle.remove()
    want = (outputs[0] - outputs[1])[0].norm(dim=-1).mean()
    got = getattr(capture(tiny_lm, ids, ["contribution"]).scores["contribution"], unit)[0, layer, index]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_continuation_targets_take_features_from_the_prompt_and_importance_from_what_follows(tiny_lm):
    ids = token_ids(2, 20, seed=7)
    split = capture(tiny_lm, ids, ["magnitude"], prompt_len=12)
    prompt, whole = capture(tiny_lm, ids[:, :12], ["magnitude"]), capture(tiny_lm, ids, ["magnitude"])
    for pool, features in prompt.features.items():  # causal: the prompt's layer-0 states do not see the rest
        torch.testing.assert_close(split.features[pool], features, rtol=1e-5, atol=1e-6)
    for unit in ("heads", "neurons"):  # the mean over the 8 tokens after the prompt
        by_hand = (20 * getattr(whole.scores["magnitude"], unit) - 12 * getattr(prompt.scores["magnitude"], unit)) / 8
        torch.testing.assert_close(getattr(split.scores["magnitude"], unit), by_hand, rtol=1e-4, atol=1e-5)
    with pytest.raises(PromptError, match="continuation"):
        capture(tiny_lm, ids, ["magnitude"], prompt_len=19)


def test_round_targets_are_each_prompts_iterative_order_shared_by_processes_and_resumed(tiny_lm, tmp_path,
                                                                                        monkeypatch):
    import core.shadow.dataset as dataset
    from core.shadow.methods import method_scores

    prompts = [p[:n] for p, n in zip(token_ids(3, 16, seed=5), (16, 10, 12), strict=True)]
    part = tmp_path / "targets.pt"
    assert dataset.collect_round_targets(tiny_lm, prompts, "plainact-iterative", part, False, _Process(1, 2)) is None
    (own,) = tmp_path.glob("targets.rank1.pt")
    assert sorted(torch.load(own)) == [2], "process 1 takes every second prompt in order of length: 10, 12, 16"
    data = dataset.collect_round_targets(tiny_lm, prompts, "plainact-iterative", part, False, _Process(0, 2))
    assert len(data) == 3 and set(data.features) == {"mean", "last"}
    for i, prompt in enumerate(prompts):
        cap = capture(tiny_lm, prompt[None], ["plainact"])
        order = method_scores(cap, ["plainact-iterative"], lm=tiny_lm, prompt=prompt)["plainact-iterative"]
        assert torch.equal(data.targets.heads[i], order.heads[0]) and torch.equal(data.targets.neurons[i],
                                                                                  order.neurons[0])
        torch.testing.assert_close(data.features["mean"][i], cap.features["mean"][0])
    monkeypatch.setattr(dataset, "method_scores", lambda *a, **k: pytest.fail("a saved prompt was measured again"))
    again = dataset.collect_round_targets(tiny_lm, prompts, "plainact-iterative", part, False, _Process(0, 2))
    assert torch.equal(again.targets.neurons, data.targets.neurons)


def test_combined_targets_are_the_rank_mean_of_each_parts_cached_targets(tiny_lm, tmp_path):
    from core.shadow.combine import rank_mean
    from core.shadow.dataset import cached_targets

    prompts = list(token_ids(2, 12, seed=2))
    both = cached_targets(tiny_lm, prompts, "magnitude+plainact-iterative", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("targets-*.pt"))) == 2, "each part cached once, the combination not at all"
    parts = [cached_targets(tiny_lm, prompts, c, cache_dir=tmp_path, progress=False)
             for c in ("magnitude", "plainact-iterative")]
    expected = rank_mean(parts[0].targets, parts[1].targets)
    assert torch.equal(both.targets.heads, expected.heads) and torch.equal(both.targets.neurons, expected.neurons)
    for row in range(2):  # ranks of each prompt on its own
        torch.testing.assert_close(rank_mean(parts[0].targets[row]).heads, rank_mean(parts[0].targets)[row].heads)


def test_a_round_criterion_takes_no_continuation(tiny_lm, tmp_path):
    from core.shadow.dataset import cached_targets

    with pytest.raises(ValueError, match="no continuation"):
        cached_targets(tiny_lm, list(token_ids(1, 20)), "plainact-iterative", cache_dir=tmp_path, continuation=4)


def test_combined_criteria_rank_by_the_mean_of_both_ranks_and_the_report_pairs_windows(tmp_path):
    from benchmarks.shadow_combine import report
    from core.shadow.combine import rank_mean

    a = UnitScores(torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]), torch.zeros(3, 2))
    b = UnitScores(torch.tensor([[0.0, 0.0], [40.0, 30.0], [20.0, 10.0]]), torch.zeros(3, 2))
    mean = rank_mean(a, b).heads  # ranks over all 6 units: a 0,1,2,3,4,5 (ties by position) and b 0,1,5,4,3,2
    torch.testing.assert_close(mean[1:], torch.tensor([[3.5, 3.5], [3.5, 3.5]]) / 5)
    assert torch.equal(rank_mean(a, a).heads.flatten().argsort(), a.heads.flatten().argsort())
    shards = []
    for i, losses in enumerate(({"dense": 1.0, "magnitude|heads|0.5": 2.0, "x|heads|0.5": 2.5},
                                {"dense": 1.0, "magnitude|heads|0.5": 3.0, "x|heads|0.5": 3.5})):
        shards.append(tmp_path / f"part{i}.json")
        shards[-1].write_text(json.dumps({str(i): losses}))
    doc = report(shards, tmp_path / "out.json", resamples=200)
    assert doc["windows"] == 2 and doc["dense"] == pytest.approx(math.e)
    ratio = doc["over_magnitude"]["heads"]["x"]["0.5"]
    assert ratio == pytest.approx([math.exp(-0.5)] * 3), "magnitude is 0.5 nats better on every window"
    assert doc["perplexity"]["heads"]["magnitude"]["0.5"][0] == pytest.approx(math.exp(2.5))
