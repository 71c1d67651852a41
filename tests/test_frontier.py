"""The equal-bytes comparison: what each method reads per step, counted by hand; the frontier of hand-made points."""

from __future__ import annotations

import pytest
import torch

from core.eval.frontier import Point, byte_share, dense_bytes_per_token, equal_bytes_rows, frontier
from core.eval.report import FRONTIER, bytes_panels, markdown_report
from core.eval.stages import reduce_perplexity
from core.policies import make_policy, policy_names
from core.predictor import Predictor, PredictorConfig

CONTEXT, KEEP, KV_HEADS, HEAD_DIM = 1024, 128, 2, 64  # one decode step of one layer
ROW = 2 * HEAD_DIM  # a K/V row: 128 16-bit values
DENSE_ROWS = KV_HEADS * CONTEXT
# Each method's options for the hand-made step, and what it reads beside its K/V rows there, in K/V rows.
OPTIONS = {"quest": {"page_size": 32}, "double-sparsity": {"channels": 16, "bits": 4}}
SIDE = {
    "dense": 0, "random": 0, "streaming": 0, "knorm": 0, "snapkv": 0,
    "oracle": DENSE_ROWS / 2,  # all of K: half of every row
    "quest": KV_HEADS * (CONTEXT // 32),  # min and max of each 32-token page: one row per page
    "h2o": KV_HEADS * KEEP / ROW,  # one accumulated score per kept token
    "tova": KV_HEADS * KEEP / ROW / KV_HEADS,  # one attention value per kept token, shared by the KV heads
    "double-sparsity": DENSE_ROWS * (16 * 4 / 16 + 1) / ROW,  # 16 channels of 4 bits and a 16-bit scale
    "tokenbutler": DENSE_ROWS * (16 * 8 / 16 + 1) / ROW,  # the predictor's 16 key channels of 8 bits and a scale
}


def _policy(name: str):
    if name == "tokenbutler":
        config = PredictorConfig(num_layers=2, num_heads=4, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, hidden_size=32,
                                 fingerprint="hand-made", base_model="hand-made", dim=16, inner=8, key_bits=8)
        return make_policy(name, predictor=Predictor(config))
    return make_policy(name, **OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", policy_names())
def test_bytes_read_are_accounted_for_every_method(name: str) -> None:
    """A decode step as core.attention counts it, reduced as the evaluation reduces cells, read back as bytes."""
    policy = _policy(name)
    read = CONTEXT if policy.is_dense else KEEP
    past = torch.full((1, KV_HEADS, 1), CONTEXT)
    side = policy.side_reads(past, torch.full_like(past, read), HEAD_DIM)
    assert side == pytest.approx(SIDE[name])
    cell = reduce_perplexity([{"nll": 1.0, "tokens": 1, "read": KV_HEADS * read, "total": DENSE_ROWS, "side": side}])
    share = (KV_HEADS * read + SIDE[name]) / DENSE_ROWS
    assert byte_share(cell) == pytest.approx(share)
    model = {"num_layers": 1, "num_kv_heads": KV_HEADS, "head_dim": HEAD_DIM}
    assert dense_bytes_per_token(model) == KV_HEADS * ROW * 2  # 16-bit K and V rows
    measured = {"10%": {**cell, "ppl_vs_dense": 1.5, "ppl_vs_dense_ci": [1.4, 1.6]}}
    results = {"perplexity": {name: measured, "another": measured}}  # one method alone has nothing to compare
    row = next(r for r in equal_bytes_rows(results, model)["perplexity"]["points"] if r["method"] == name)
    assert row["bytes_per_token"] == pytest.approx(share * KV_HEADS * ROW * 2) and (row["lo"], row["hi"]) == (1.4, 1.6)


def test_the_frontier_keeps_only_points_nothing_beats() -> None:
    p = [Point("a", "5%", 0.10, 3.0), Point("b", "5%", 0.10, 2.0), Point("a", "10%", 0.20, 2.5),
         Point("c", "10%", 0.15, 1.5), Point("b", "10%", 0.30, 1.5), Point("d", "50%", 0.60, 1.1),
         Point("e", "50%", 0.60, 1.1), Point("dense", "100%", 1.0, 1.0)]
    assert frontier(p) == [p[1], p[3], p[5], p[7]]  # ties: the first one given; as good for more bytes: dropped
    assert frontier(p[::-1]) == [p[1], p[3], p[6], p[7]]
    recall = [Point("a", "5%", 0.1, 0.6), Point("b", "5%", 0.1, 0.7), Point("a", "10%", 0.2, 0.65),
              Point("b", "10%", 0.2, 0.9), Point("dense", "100%", 1.0, 1.0)]
    assert frontier(recall, lower_is_better=False) == [recall[1], recall[3], recall[4]]
    assert frontier([]) == []


def _cell(rows: float, side: float, ppl: float) -> dict:
    return {"achieved_sparsity": 1 - rows, "byte_sparsity": 1 - rows - side, "ppl": 10 * ppl, "ppl_vs_dense": ppl,
            "ppl_vs_dense_ci": [ppl - 0.01, ppl + 0.01]}


def test_recall_points_take_the_side_reads_of_the_same_cell_and_the_report_marks_the_frontier() -> None:
    perplexity = {"dense": {"100%": _cell(1.0, 0.0, 1.0)},
                  "learned": {"10%": _cell(0.13, 0.13, 1.2), "25%": _cell(0.28, 0.13, 1.05)},
                  "evictor": {"10%": _cell(0.13, 0.0, 1.6), "25%": _cell(0.28, 0.0, 1.3)}}
    attention = {"dense": {"100%": {"recall": 1.0, "achieved_sparsity": 0.0}},
                 "learned": {"10%": {"recall": 0.9, "achieved_sparsity": 0.88},
                             "25%": {"recall": 0.95, "achieved_sparsity": 0.73}},
                 "evictor": {"10%": {"recall": 0.8, "achieved_sparsity": 0.88},
                             "25%": {"recall": 0.85, "achieved_sparsity": 0.73}}}
    for by_budget in attention.values():
        for cell in by_budget.values():
            cell["hit_accuracy"] = cell["recall"]
    doc = {"results": {"perplexity": perplexity, "attention": attention}, "config": {"dense_prefix": 64},
           "budgets": [{"label": "10%", "ratio": 0.1, "tokens": None, "nominal_sparsity": 0.9},
                       {"label": "25%", "ratio": 0.25, "tokens": None, "nominal_sparsity": 0.75}]}
    rows = equal_bytes_rows(doc["results"], {"num_layers": 1, "num_kv_heads": 1, "head_dim": 64})
    shares = {(r["method"], r["budget"]): r["share"] for r in rows["attention"]["points"]}
    assert shares[("learned", "10%")] == pytest.approx(0.12 + 0.13)  # its own rows, the summary of the same cell
    assert shares[("evictor", "25%")] == pytest.approx(0.27)
    assert [(r["method"], r["budget"]) for r in rows["perplexity"]["frontier"]] == [
        ("evictor", "10%"), ("learned", "10%"), ("learned", "25%"), ("dense", "100%")]  # not evictor 25%
    ppl, recall = bytes_panels(doc)
    assert ppl.log_y and ppl.log_x and not recall.log_y and recall.series[FRONTIER].dashed
    assert recall.series[FRONTIER].labels == ["evictor 10%", "learned 10%", "learned 25%", "dense 100%"]
    report = markdown_report({**doc, "model": {"name": "hand"}, "skipped": {}, "timing_s": {"total": 1.0},
                              "data": {"chunks": 1}, "config": {**doc["config"], "chunk_len": 8, "metric_rows": 1,
                                                                 "seed": 0, "long_prompt": 0}})
    assert "| evictor | **13.0% → 1.600 [1.590, 1.610]** | 28.0% → 1.300 [1.290, 1.310] |" in report
    assert "| learned | **26.0% → 1.200 [1.190, 1.210]** | **41.0% → 1.050 [1.040, 1.060]** |" in report
