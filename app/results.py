"""Shipped results (assets/results/), read once for the Budgets tab: what sparsity buys, at a glance, then the rest.

Two lead figures: quality against the bytes a decode step reads (the evaluation's equal-bytes panels,
core.eval.report.bytes_panel) and decode speed against context (app.speed, from the decode benchmarks).
Every other panel of every evaluation document (core.eval.report.figure_panels, the same panels its HTML
report draws) follows, one plot each, every policy in its core.palette colour, captioned with what was
measured; every markdown report is kept whole for the page to show on request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from app import figures
from app.speed import speed_panels
from core.eval.frontier import equal_bytes
from core.eval.report import Panel, bytes_panel, caption, figure_panels

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "results"
LEAD_STAGES = ("perplexity", "attention")  # the equal-bytes panels the tab opens with (protocol 1 and recall)
BYTES_TITLE = "What a method buys per byte: quality against the share of dense bytes a decode step reads"
SPEED_TITLE = "What sparsity buys in time: decode speed over dense's, against context"


@dataclass
class ShippedResults:
    lead: list[go.Figure]  # quality at equal bytes, then speed; either is missing where nothing was measured
    figures: list[go.Figure]
    markdown: str


@dataclass
class _Document:
    """One evaluation document, its panels and the caption of its figures."""

    doc: dict
    panels: list[Panel]
    caption: str


def _documents(folder: Path) -> list[_Document]:
    """Every evaluation document eval_*.json the harness wrote (others are skipped, with a warning)."""
    docs = []
    for path in sorted(folder.glob("eval_*.json")):
        try:
            doc = json.loads(path.read_text())
            docs.append(_Document(doc, figure_panels(doc), caption(doc)))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:  # unreadable, or not the harness's
            log.warning("%s skipped: not a readable evaluation document (%s: %s)", path.name, type(err).__name__, err)
    return docs


def _lead_panels(docs: list[_Document]) -> tuple[_Document | None, list[Panel]]:
    """The first document with equal-bytes panels, and its panels of protocol 1 and attention recall."""
    for found in docs:
        stages = [c for c in equal_bytes(found.doc["results"]) if c.stage in LEAD_STAGES]
        if stages:
            return found, [bytes_panel(c, found.doc["config"]) for c in stages]
    return None, []


def load_shipped(folder: Path = RESULTS_DIR) -> ShippedResults:
    """The lead figures, a figure per other panel of every evaluation document, and the text of every eval_*.md."""
    docs = _documents(folder)
    lead = []
    first, panels = _lead_panels(docs)
    if first is not None:
        lead.append(figures.panels_figure(panels, BYTES_TITLE, first.caption))
    speed = speed_panels(folder)
    if speed:
        lead.append(figures.panels_figure(speed, SPEED_TITLE, "decode benchmarks: tokens/s of each method over "
                                          "dense's in the same run (above 1: faster than dense)"))
    shown = {p.title for p in panels}
    figs = [figures.panel_figure(panel, d.caption) for d in docs for panel in d.panels
            if d is not first or panel.title not in shown]
    reports = [f"#### {p.name}\n\n{p.read_text()}" for p in sorted(folder.glob("eval_*.md"))]
    if not docs and not reports:
        return ShippedResults(lead, [], "No shipped evaluation results yet (no `assets/results/eval_*.json`). "
                                        "Run `python -m core evaluate` to produce them.")
    return ShippedResults(lead, figs, "\n\n".join(reports))
