"""Shipped evaluation results (assets/results/eval_*.json / *.md), read once for the Budgets tab.

The figures are the evaluation's own panels (core.eval.report.figure_panels: the same panels its
HTML report draws), one plot each, every policy in its core.palette colour, captioned with what was
measured; every markdown report is kept whole for the page to show on request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from app import figures
from core.eval.report import caption, figure_panels

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "results"


@dataclass
class ShippedResults:
    figures: list[go.Figure]
    markdown: str


def load_shipped(folder: Path = RESULTS_DIR) -> ShippedResults:
    """A figure per panel of every evaluation document eval_*.json, and the text of every eval_*.md."""
    figs: list[go.Figure] = []
    for path in sorted(folder.glob("eval_*.json")):
        try:
            doc = json.loads(path.read_text())
            panels, source = figure_panels(doc), caption(doc)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:  # unreadable, or not the harness's
            log.warning("%s skipped: not a readable evaluation document (%s: %s)", path.name, type(err).__name__, err)
            continue
        figs += [figures.panel_figure(panel, source) for panel in panels]
    reports = [f"#### {p.name}\n\n{p.read_text()}" for p in sorted(folder.glob("eval_*.md"))]
    if not figs and not reports:
        return ShippedResults([], "No shipped evaluation results yet (no `assets/results/eval_*.json`). "
                                  "Run `python -m core evaluate` to produce them.")
    return ShippedResults(figs, "\n\n".join(reports))
