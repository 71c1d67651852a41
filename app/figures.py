"""Plotly figures for the page, drawn from arrays core.traceviews prepares.

Every token axis is binned to at most MAX_COLS columns (max-pooled) and drawn with go.Heatmap, so a
figure costs the same at 100 or 8,000 tokens; hover shows the tokens a column covers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.eval.figures import add_panel
from core.eval.report import Panel
from core.palette import color
from core.traceviews import (
    HIT,
    KEPT_ONLY,
    MISSED,
    NEITHER,
    OVERLAP_LABELS,
    StepView,
    Triangle,
    bin_columns,
    bin_width,
    log_probs,
)

MAX_COLS = 256
TEMPLATE = "plotly_white"
LEGEND_BELOW = {"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.01, "xanchor": "left",
                "x": 0.0, "font": {"size": 11}}  # rows at the figure's foot, below the axis titles: never a scroll
LEGEND_ROOM = 110  # bottom margin that holds the x axis title and two rows of legend
LOG_FLOOR = -4.0
OVERLAP_COLORS = {NEITHER: "#f1f1f1", KEPT_ONLY: "#9ecae1", HIT: "#31a354", MISSED: "#de2d26"}
SCORE_SCALE = "Blues"
TRUE_SCALE = "Viridis"


def message_figure(text: str, height: int = 240) -> go.Figure:
    """A blank figure that says why there is nothing to draw yet."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font={"size": 15, "color": "#555"}, x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_layout(template=TEMPLATE, height=height, xaxis={"visible": False}, yaxis={"visible": False},
                      margin={"l": 20, "r": 20, "t": 20, "b": 20})
    return fig


def _show(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def bin_labels(tokens: Sequence[str], length: int, width: int, limit: int = 48) -> list[str]:
    """Hover label of every column: the token range it covers and (the start of) their text."""
    labels = []
    for start in range(0, length, width):
        stop = min(start + width, length)
        text = "".join(_show(t) for t in tokens[start:stop])
        text = text if len(text) <= limit else text[: limit - 1] + "…"
        span = f"token {start}" if stop - start == 1 else f"tokens {start}–{stop - 1}"
        labels.append(f"{span}: {text}")
    return labels


def _overlap_scale() -> list[list]:
    """A stepped colour scale for the four overlap codes (z in 0..3, drawn with zmin -0.5, zmax 3.5)."""
    scale = []
    for code in (NEITHER, KEPT_ONLY, HIT, MISSED):
        scale += [[code / 4, OVERLAP_COLORS[code]], [(code + 1) / 4, OVERLAP_COLORS[code]]]
    return scale


def _colorbar(fig: go.Figure, row: int, title: str, **extra) -> dict:
    """A colour bar beside subplot `row` (rows stacked vertically)."""
    axis = fig.layout["yaxis" if row == 1 else f"yaxis{row}"]
    low, high = axis.domain
    return {"title": {"text": title, "side": "right"}, "y": (low + high) / 2, "len": high - low, "thickness": 12,
            **extra}


def _panels(view: StepView, policy: str) -> list[dict]:
    """The stacked rows of the step figure: what the policy thought, what was true, and the overlap."""
    panels = []
    if view.scores is not None:
        panels.append({"title": f"{policy}: score rank per head (1 = its top token)", "z": view.scores,
                       "scale": SCORE_SCALE, "range": (0, 1), "bar": "rank"})
    elif view.kept is not None:
        panels.append({"title": f"{policy}: kept rows (rule-based, no per-head scores)",
                       "z": view.kept.astype(np.float32), "scale": SCORE_SCALE, "range": (0, 1), "bar": "kept",
                       "pool": "mean"})
    panels.append({"title": "true attention (log10 p)", "z": log_probs(view.true_probs), "scale": TRUE_SCALE,
                   "range": (LOG_FLOOR, 0), "bar": "log10 p"})
    if view.overlap is not None:
        panels.append({"title": f"kept vs true top-{view.keep}", "z": view.overlap.astype(np.float32),
                       "scale": _overlap_scale(), "range": (-0.5, 3.5), "bar": "overlap"})
    return panels


def step_figure(view: StepView, tokens: Sequence[str], policy: str, group: int) -> go.Figure:
    """Heads x past tokens for one step and layer, rows aligned on one token axis."""
    length = view.true_probs.shape[1]
    width = bin_width(length, MAX_COLS)
    labels = bin_labels(tokens, length, width)
    x = np.arange(0, length, width)
    heads = [f"h{h}·kv{h // group}" for h in range(view.true_probs.shape[0])]
    panels = _panels(view, policy)
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=[p["title"] for p in panels])
    custom = np.tile(np.array(labels, dtype=object), (len(heads), 1))
    for row, panel in enumerate(panels, start=1):
        is_overlap = panel["bar"] == "overlap"
        bar = _colorbar(fig, row, panel["bar"] if width == 1 or panel["bar"] != "kept" else "share kept")
        if is_overlap:
            codes = (NEITHER, KEPT_ONLY, HIT, MISSED)
            bar.update(tickvals=list(codes), ticktext=[OVERLAP_LABELS[c] for c in codes])
            bar["title"] = {"text": ""}
        z = bin_columns(panel["z"], width, panel.get("pool", "max"))
        fig.add_trace(go.Heatmap(
            z=z, x=x, y=heads, customdata=custom, colorscale=panel["scale"], zmin=panel["range"][0],
            zmax=panel["range"][1], colorbar=bar, xgap=0, ygap=1,
            hovertemplate="%{customdata}<br>%{y}<br>" + ("code %{z}" if is_overlap else "%{z:.3f}") + "<extra></extra>",
        ), row=row, col=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text=f"past token position ({width} per column)" if width > 1 else "past token position",
                     row=len(panels), col=1)
    fig.update_layout(template=TEMPLATE, height=150 + 190 * len(panels), margin={"l": 60, "r": 20, "t": 40, "b": 50})
    return fig


def grid_figure(hit: np.ndarray, recall: np.ndarray, layer: int, keep_note: str) -> go.Figure:
    """Layer x head hit accuracy and attention recall for one step; the picked layer is outlined."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=["hit accuracy", "attention recall"])
    heads = [f"h{h}" for h in range(hit.shape[1])]
    layers = list(range(hit.shape[0]))
    for col, (name, z) in enumerate((("hit accuracy", hit), ("attention recall", recall)), start=1):
        fig.add_trace(go.Heatmap(
            z=z, x=heads, y=layers, zmin=0, zmax=1, colorscale="RdYlGn", showscale=col == 2,
            colorbar={"thickness": 12}, hovertemplate=f"layer %{{y}} %{{x}}<br>{name} %{{z:.2f}}<extra></extra>",
        ), row=1, col=col)
        fig.add_shape(type="rect", x0=-0.5, x1=len(heads) - 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line={"color": "black", "width": 2}, row=1, col=col)
        if np.isnan(z).all():
            fig.add_annotation(text="no per-head scores<br>(rule-based method)", showarrow=False, row=1, col=col,
                               x=(len(heads) - 1) / 2, y=len(layers) / 4, font={"color": "#777"})
    fig.update_yaxes(autorange="reversed", title_text="layer", row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=560, margin={"l": 60, "r": 20, "t": 60, "b": 40},
                      title={"text": keep_note, "font": {"size": 13}})
    return fig


def triangle_figure(triangle: Triangle, tokens: Sequence[str], policy: str, layer: int, head: int) -> go.Figure:
    """One head's decode steps x past tokens: true attention beside the policy's prediction."""
    true = triangle.true_probs
    length = true.shape[1]
    width = bin_width(length, MAX_COLS)
    labels = bin_labels(tokens, length, width)
    x = np.arange(0, length, width)
    steps = np.arange(1, true.shape[0] + 1)
    custom = np.tile(np.array(labels, dtype=object), (len(steps), 1))
    future = np.isnan(true)
    panels = [("true attention (log10 p)", np.where(future, np.nan, log_probs(np.nan_to_num(true))), TRUE_SCALE,
               (LOG_FLOOR, 0), "max", "log10 p")]
    if triangle.kind == "rank":
        panels.append((f"{policy}: score rank (1 = top)", triangle.prediction, SCORE_SCALE, (0, 1), "max", "rank"))
    elif triangle.kind == "kept":
        bar = "share kept" if width > 1 else "kept"
        panels.append((f"{policy}: kept rows", triangle.prediction, SCORE_SCALE, (0, 1), "mean", bar))
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.12,
                        subplot_titles=[p[0] for p in panels])
    for col, (_, z, scale, (low, high), pool, bar) in enumerate(panels, start=1):
        right = fig.layout["xaxis" if col == 1 else f"xaxis{col}"].domain[1]
        fig.add_trace(go.Heatmap(
            z=bin_columns(z, width, pool), x=x, y=steps, customdata=custom, colorscale=scale, zmin=low, zmax=high,
            colorbar={"thickness": 12, "x": right + 0.01, "xanchor": "left", "title": {"text": bar, "side": "right"}},
            hovertemplate="step %{y}<br>%{customdata}<br>%{z:.3f}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="past token position", row=1, col=col)
    fig.update_yaxes(autorange="reversed", title_text="decode step", row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=460, margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      title={"text": f"layer {layer}, head {head}", "font": {"size": 13}})
    return fig


def _sparsity_of(cell: dict[str, float]) -> float:
    return cell.get("achieved_sparsity", cell.get("achieved_sparsity_decode", float("nan")))


def curves_figure(curves: dict[str, dict[str, dict[str, float]]], title: str,
                  metrics: Sequence[str] = ("hit_accuracy", "recall")) -> go.Figure:
    """One panel per metric against budget, one line per method (its core.palette colour in every panel)."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m.replace("_", " ") for m in metrics],
                        horizontal_spacing=0.08)
    for policy, by_budget in curves.items():
        budgets = list(by_budget)
        for col, metric in enumerate(metrics, start=1):
            fig.add_trace(go.Scatter(
                x=budgets, y=[by_budget[b].get(metric) for b in budgets], name=policy, legendgroup=policy,
                showlegend=col == 1, mode="lines+markers", line={"color": color(policy)},
                customdata=[_sparsity_of(by_budget[b]) for b in budgets],
                hovertemplate=f"{policy} @ %{{x}}<br>{metric.replace('_', ' ')} %{{y:.3f}}"
                              "<br>achieved sparsity %{customdata:.2f}<extra></extra>",
            ), row=1, col=col)
    for col, metric in enumerate(metrics, start=1):
        values = [v for by_budget in curves.values() for cell in by_budget.values()
                  if isinstance(v := cell.get(metric), (int, float))]
        if values and min(values) >= 0 and max(values) <= 1 + 1e-6:  # a share: draw the whole 0..1 scale
            fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    fig.update_xaxes(title_text="budget", type="category")
    fig.update_layout(template=TEMPLATE, height=480, margin={"l": 50, "r": 20, "t": 70, "b": LEGEND_ROOM},
                      legend=LEGEND_BELOW, title={"text": title, "font": {"size": 14}})
    return fig


def panel_figure(panel: Panel, source: str) -> go.Figure:
    """One panel of the evaluation's own report (core.eval.report.figure_panels), drawn as the report draws it."""
    fig = go.Figure()
    add_panel(fig, panel)
    if panel.kind == "bar":  # long category names (task settings) break at their slashes instead of overlapping
        names = list(dict.fromkeys(x for series in panel.series.values() for x in series.x))
        fig.update_xaxes(tickmode="array", tickvals=names, ticktext=[str(n).replace("/", "/<br>") for n in names])
    fig.update_layout(template=TEMPLATE, height=480, margin={"l": 50, "r": 20, "t": 70, "b": LEGEND_ROOM},
                      barmode="group", legend=LEGEND_BELOW,
                      title={"text": f"{panel.title}<br><sup>{source}</sup>", "font": {"size": 13}})
    return fig


def panels_figure(panels: Sequence[Panel], title: str, source: str) -> go.Figure:
    """Panels side by side with one legend below them (each method once, its palette colour in every panel)."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p.title for p in panels], horizontal_spacing=0.07)
    for col, panel in enumerate(panels, start=1):
        add_panel(fig, panel, 1, col)
    named = set()
    for trace in fig.data:
        trace.showlegend = trace.name not in named
        named.add(trace.name)
    fig.update_annotations(font={"size": 12})
    fig.update_layout(template=TEMPLATE, height=520, margin={"l": 50, "r": 20, "t": 90, "b": LEGEND_ROOM},
                      legend=LEGEND_BELOW,
                      title={"text": f"{title}<br><sup>{source}</sup>", "font": {"size": 14}})
    return fig
