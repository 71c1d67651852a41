"""Plotly figures of the ShadowLLM tab, drawn from the arrays core.shadow.analysis returns.

Each ranking method (the predictor's true criterion, predicted, static, magnitude, plainact) has the page's one
colour for it (core.palette); the heatmaps use the same log-score scale as each other.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.figures import TEMPLATE
from app.markup import shadow_label
from core.palette import color
from core.shadow.analysis import NEURON_BLOCK, SWEEP, PromptAnalysis, neuron_blocks

SCORE_RANGE = (-3.0, 1.5)  # colour scale of log(score / layer mean): ~0.05x to ~4.5x the layer's mean
REMOVED_COLOR = "#d62728"  # the × over a removed unit (a mark, not a method)
MARGIN = {"t": 50, "l": 50, "r": 20, "b": 40}


def _removed_marks(mask: np.ndarray, xs: list, name: str) -> go.Scatter:
    """× over every removed cell of a layers × units grid."""
    layers, units = np.nonzero(mask == 0)
    return go.Scatter(x=[xs[u] for u in units], y=layers, mode="markers", name=name, showlegend=False,
                      marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": REMOVED_COLOR}},
                      hoverinfo="skip")


def heads_figure(result: PromptAnalysis) -> go.Figure:
    """Layers × heads heatmaps of true and predicted importance, each with its own mask drawn over it."""
    panels = (result.truth, "predicted")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=[f"{shadow_label(m, result.truth)} (ppl {result.chosen_ppl[m]:.2f})"
                                        for m in panels])
    heads = list(range(result.scores[result.truth].heads.shape[1]))
    for col, method in enumerate(panels, start=1):
        z = result.scores[method].heads.numpy()
        fig.add_heatmap(z=z, x=heads, zmin=SCORE_RANGE[0], zmax=SCORE_RANGE[1], colorscale="Viridis",
                        showscale=col == 2, colorbar={"title": {"text": "log score"}, "thickness": 12},
                        hovertemplate="layer %{y}, head %{x}<br>score %{z:.2f}<extra>"
                                      + shadow_label(method, result.truth) + "</extra>",
                        row=1, col=col)
        fig.add_trace(_removed_marks(result.masks[method].heads.numpy(), heads, method), row=1, col=col)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="layer" if col == 1 else None, autorange="reversed", row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=560, margin=MARGIN,
                      title=f"Heads: {result.head_sparsity:.0%} removed ({result.scope} ranking)")
    return fig


def neurons_figure(result: PromptAnalysis) -> go.Figure:
    """Layers × blocks of NEURON_BLOCK neurons: true and predicted mean score, and the share the mask removes."""
    blocks = {
        f"true {result.truth}": neuron_blocks(result.scores[result.truth].neurons),
        "predicted": neuron_blocks(result.scores["predicted"].neurons),
        "removed by predicted mask": 1 - neuron_blocks(result.masks["predicted"].neurons),
    }
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(blocks), horizontal_spacing=0.05)
    for col, (title, z) in enumerate(blocks.items(), start=1):
        removed = col == 3
        low, high = (0.0, 1.0) if removed else SCORE_RANGE
        fig.add_heatmap(z=z.numpy(), zmin=low, zmax=high,
                        colorscale="Reds" if removed else "Viridis", showscale=col >= 2,
                        colorbar={"x": 1.0 if removed else 0.64, "thickness": 10},
                        hovertemplate=f"layer %{{y}}, block %{{x}}<br>%{{z:.2f}}<extra>{title}</extra>",
                        row=1, col=col)
        fig.update_xaxes(title_text=f"block of {NEURON_BLOCK} neurons", row=1, col=col)
        fig.update_yaxes(autorange="reversed", title_text="layer" if col == 1 else None, row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=460, margin=MARGIN,
                      title=f"MLP neurons: {result.neuron_sparsity:.0%} removed, shown as mean per block")
    return fig


def curves_figure(result: PromptAnalysis) -> go.Figure:
    """This prompt's perplexity against head and neuron sparsity, one line per ranking method."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["removing heads (neurons dense)",
                                                        "removing neurons (heads dense)"])
    xs = [0.0] + [100 * s for s in SWEEP]
    for col, unit in enumerate(("heads", "neurons"), start=1):
        for method, ppl in result.curves[unit].items():
            fig.add_scatter(x=xs, y=[result.dense_ppl, *ppl], name=shadow_label(method, result.truth),
                            legendgroup=method, showlegend=col == 1, mode="lines+markers",
                            line={"color": color(method)}, row=1, col=col)
        fig.update_xaxes(title_text="sparsity of layers ≥ 1 (%)", row=1, col=col)
        fig.update_yaxes(title_text="perplexity of this prompt" if col == 1 else None, type="log", row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=380, margin={**MARGIN, "l": 60})
    return fig


def departure_figure(result: PromptAnalysis) -> go.Figure:
    """Per layer: rank correlation of this prompt's head ranking with the static one, and decisions it changes."""
    d = result.departure
    layers = list(range(1, 1 + len(d["true_heads_rho_by_layer"])))
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Spearman's rho with the static ranking (heads)",
                                                        "heads kept/removed differently from the static mask"])
    for name, method in (("true", result.truth), ("predicted", "predicted")):
        style = {"color": color(method)}
        label = shadow_label(method, result.truth)
        fig.add_scatter(x=layers, y=d[f"{name}_heads_rho_by_layer"], name=label,
                        legendgroup=method, mode="lines+markers", line=style, row=1, col=1)
        fig.add_bar(x=layers, y=d[f"{name}_heads_changed_by_layer"], name=label,
                    legendgroup=method, showlegend=False, marker=style, row=1, col=2)
    fig.update_yaxes(range=[-1, 1], row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_layout(template=TEMPLATE, height=360, barmode="group", margin=MARGIN)
    return fig
