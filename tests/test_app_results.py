"""The Budgets tab finds and plots the evaluation harness's curves, whatever else its JSON holds."""

from __future__ import annotations

import json
from pathlib import Path

from app.results import find_curves, load_shipped, scalar_metrics

HARNESS_LIKE = {
    "config": {"chunks": 4, "budgets": ["10%", "50%"]},
    "results": {
        "perplexity": {"dense": {"100%": {"ppl": 12.0, "achieved_sparsity": 0.0}},
                       "h2o": {"50%": {"ppl": 14.0, "achieved_sparsity": 0.5}}},
        "attention": {"oracle": {"50%": {"hit_accuracy": 0.9, "recall": 0.99, "achieved_sparsity": 0.5,
                                         "ranking_hit_accuracy": 0.8, "hit_by_layer": [1.0, 0.9]}}},
    },
}


def test_every_curves_block_is_found_with_its_path() -> None:
    found = dict(find_curves(HARNESS_LIKE))
    assert set(found) == {"results/perplexity", "results/attention"}
    assert scalar_metrics(found["results/attention"]) == ["hit_accuracy", "recall", "ranking_hit_accuracy"]
    assert scalar_metrics(found["results/perplexity"]) == ["ppl"]


def test_shipped_results_plot_json_and_show_markdown(tmp_path: Path) -> None:
    assert not load_shipped(tmp_path).figures and "No shipped evaluation" in load_shipped(tmp_path).markdown
    (tmp_path / "eval_small.json").write_text(json.dumps(HARNESS_LIKE))
    (tmp_path / "eval_small.md").write_text("| method | ppl |\n|---|---|\n| dense | 12.0 |")
    (tmp_path / "eval_broken.json").write_text("{not json")
    shipped = load_shipped(tmp_path)
    assert len(shipped.figures) == 2 and "| dense | 12.0 |" in shipped.markdown
