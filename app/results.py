"""Shipped evaluation results (assets/results/eval_*.json / *.md), read once for the Budgets tab.

The harness writes, per measurement, {method: {budget label: {metric: number, ...}}} (the shape of
core.metrics.budget_curves's output). Every such block found in the JSON is plotted, one panel per
scalar metric; every markdown report is shown as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from app import figures

RESULTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "results"
MAX_PANELS = 4
HOVER_ONLY = ("achieved_sparsity", "samples")  # shown on hover or bookkeeping, not a panel of their own
Curves = dict[str, dict[str, dict[str, Any]]]


@dataclass
class ShippedResults:
    figures: list[go.Figure]
    markdown: str


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalar_metrics(curves: Curves) -> list[str]:
    """Metric names that hold a number in every cell, in first-seen order (at most MAX_PANELS)."""
    cells = [cell for by_budget in curves.values() for cell in by_budget.values()]
    names = [k for k in cells[0] if not k.startswith(HOVER_ONLY)]
    return [k for k in names if all(_is_number(c.get(k)) for c in cells)][:MAX_PANELS]


def _is_curves(obj: Any) -> bool:
    """True for {method: {budget: {metric: number, ...}}}."""
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, dict) and v for v in obj.values()):
        return False
    cells = [cell for by_budget in obj.values() for cell in by_budget.values()]
    return all(isinstance(c, dict) and any(_is_number(v) for v in c.values()) for c in cells)


def find_curves(obj: Any, where: str = "") -> list[tuple[str, Curves]]:
    """Every budget-curves block nested in a JSON document, with the key path that leads to it."""
    if _is_curves(obj):
        return [(where, obj)]
    if isinstance(obj, dict):
        return [found for key, value in obj.items() for found in find_curves(value, f"{where}/{key}".strip("/"))]
    return []


def load_shipped(folder: Path = RESULTS_DIR) -> ShippedResults:
    """Figures for every curves block in eval_*.json and the text of every eval_*.md."""
    figs: list[go.Figure] = []
    for path in sorted(folder.glob("eval_*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for where, curves in find_curves(document):
            metrics = scalar_metrics(curves)
            if metrics:
                figs.append(figures.curves_figure(curves, f"{path.stem}{' · ' + where if where else ''}", metrics))
    reports = [f"#### {p.name}\n\n{p.read_text()}" for p in sorted(folder.glob("eval_*.md"))]
    if not figs and not reports:
        return ShippedResults([], "No shipped evaluation results yet (no `assets/results/eval_*.json`). "
                                  "Run `python -m core evaluate` to produce them.")
    return ShippedResults(figs, "\n\n".join(reports))
