"""The ShadowLLM tab: which heads and MLP neurons matter for this prompt, true against predicted, with the mask.

All model work happens in core.shadow.analysis (one forward + backward, then batched masked forwards);
this module only lays out the controls and draws plotly figures from the arrays it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.figures import TEMPLATE, message_figure
from app.gpu import gpu
from app.handlers import user_errors
from app.ui import MODEL_QUEUE
from core.models import LoadedModel, ModelSpec
from core.shadow import DEFAULT_DIR, ShadowMask, ShadowPredictor
from core.shadow.analysis import NEURON_BLOCK, SWEEP, PromptAnalysis, analyze_prompt, neuron_blocks
from core.shadow.report import COLORS

MAX_PROMPT_TOKENS = 400  # one forward + backward and ~30 masked forwards stay a few seconds on a CPU
SCORE_RANGE = (-3.0, 1.5)  # colour scale of log(score / layer mean): ~0.05x to ~4.5x the layer's mean
LABELS = {"plainact": "true plainact", "predicted": "predicted", "static": "static mask", "magnitude": "magnitude"}
EXAMPLE = (
    "The dictionary is Python's built-in mapping type. A dictionary maps hashable keys to arbitrary values; "
    "keys are unique, and assigning to an existing key replaces its value. Dictionaries preserve insertion order, "
    "so iterating over one yields its keys in the order they were added."
)
INTRO = (
    "**ShadowLLM** ranks every attention head and MLP neuron by how much *this prompt's* language-model loss "
    "depends on it (plainact: |activation × gradient|, from one forward and backward pass), and a small predictor "
    "guesses that ranking from layer 0's output at the last prompt token alone. The mask removes the "
    "lowest-ranked units for real (their o_proj / down_proj inputs are zeroed; layer 0 stays dense). "
    "Colours show log(score / the layer's mean): 0 is an average unit of its layer; × marks a removed unit."
)
Handler = Callable[[str, float, float, str], tuple]


@functools.lru_cache(maxsize=2)
def _load_shipped(spec: ModelSpec) -> ShadowPredictor:
    return ShadowPredictor.load(DEFAULT_DIR, spec)


def shipped_predictor(lm: LoadedModel) -> ShadowPredictor:
    """The predictor in assets/shadow/ (loaded once; a clear error for a model it was not trained for)."""
    return _load_shipped(lm.spec)


def _removed_marks(mask: np.ndarray, xs: list, name: str) -> go.Scatter:
    """× over every removed cell of a layers × units grid."""
    layers, units = np.nonzero(mask == 0)
    return go.Scatter(x=[xs[u] for u in units], y=layers, mode="markers", name=name, showlegend=False,
                      marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": "#d62728"}},
                      hoverinfo="skip")


def heads_figure(result: PromptAnalysis) -> go.Figure:
    """Layers × heads heatmaps of true and predicted importance, each with its own mask drawn over it."""
    panels = ("plainact", "predicted")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=[f"{LABELS[m]} (ppl {result.chosen_ppl[m]:.2f})" for m in panels])
    heads = list(range(result.scores["plainact"].heads.shape[1]))
    for col, method in enumerate(panels, start=1):
        z = result.scores[method].heads.numpy()
        fig.add_heatmap(z=z, x=heads, zmin=SCORE_RANGE[0], zmax=SCORE_RANGE[1], colorscale="Viridis",
                        showscale=col == 2, colorbar={"title": {"text": "log score"}, "thickness": 12},
                        hovertemplate="layer %{y}, head %{x}<br>score %{z:.2f}<extra>" + LABELS[method] + "</extra>",
                        row=1, col=col)
        fig.add_trace(_removed_marks(result.masks[method].heads.numpy(), heads, method), row=1, col=col)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="layer" if col == 1 else None, autorange="reversed", row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=560, margin={"t": 50, "l": 50, "r": 20, "b": 40},
                      title=f"Heads: {result.head_sparsity:.0%} removed ({result.scope} ranking)")
    return fig


def neurons_figure(result: PromptAnalysis) -> go.Figure:
    """Layers × blocks of NEURON_BLOCK neurons: true and predicted mean score, and the share the mask removes."""
    blocks = {
        "true plainact": neuron_blocks(result.scores["plainact"].neurons),
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
    fig.update_layout(template=TEMPLATE, height=460, margin={"t": 50, "l": 50, "r": 20, "b": 40},
                      title=f"MLP neurons: {result.neuron_sparsity:.0%} removed, shown as mean per block")
    return fig


def curves_figure(result: PromptAnalysis) -> go.Figure:
    """This prompt's perplexity against head and neuron sparsity, one line per ranking method."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["removing heads (neurons dense)",
                                                        "removing neurons (heads dense)"])
    xs = [0.0] + [100 * s for s in SWEEP]
    for col, unit in enumerate(("heads", "neurons"), start=1):
        for method, ppl in result.curves[unit].items():
            fig.add_scatter(x=xs, y=[result.dense_ppl, *ppl], name=LABELS[method], legendgroup=method,
                            showlegend=col == 1, mode="lines+markers", line={"color": COLORS[method]}, row=1, col=col)
        fig.update_xaxes(title_text="sparsity of layers ≥ 1 (%)", row=1, col=col)
        fig.update_yaxes(title_text="perplexity of this prompt" if col == 1 else None, type="log", row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=380, margin={"t": 50, "l": 60, "r": 20, "b": 40})
    return fig


def departure_figure(result: PromptAnalysis) -> go.Figure:
    """Per layer: rank correlation of this prompt's head ranking with the static one, and decisions it changes."""
    d = result.departure
    layers = list(range(1, 1 + len(d["plainact_heads_rho_by_layer"])))
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Spearman's rho with the static ranking (heads)",
                                                        "heads kept/removed differently from the static mask"])
    for method in ("plainact", "predicted"):
        style = {"color": COLORS[method]}
        fig.add_scatter(x=layers, y=d[f"{method}_heads_rho_by_layer"], name=LABELS[method], legendgroup=method,
                        mode="lines+markers", line=style, row=1, col=1)
        fig.add_bar(x=layers, y=d[f"{method}_heads_changed_by_layer"], name=LABELS[method], legendgroup=method,
                    showlegend=False, marker=style, row=1, col=2)
    fig.update_yaxes(range=[-1, 1], row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_layout(template=TEMPLATE, height=360, barmode="group", margin={"t": 50, "l": 50, "r": 20, "b": 40})
    return fig


def _achieved(mask: ShadowMask) -> str:
    s = mask.sparsity()
    return f"{s['heads']:.0%} heads, {s['neurons']:.0%} neurons"


def summary_markdown(result: PromptAnalysis) -> str:
    """The numbers behind the figures, in one short table."""
    a, d = result.agreement, result.departure
    rows = [f"| {LABELS[m]} | {_achieved(result.masks[m])} | {ppl:.2f} |" for m, ppl in result.chosen_ppl.items()]
    return "\n".join([
        f"**{result.tokens} tokens**, dense perplexity **{result.dense_ppl:.2f}**.",
        "",
        "| mask from | removed (layers ≥ 1) | perplexity of this prompt |",
        "|---|---|---:|",
        *rows,
        "",
        f"Predicted vs true ranking (Spearman's rho): heads {a['heads_within_layer']:.2f} within layers, "
        f"{a['heads_overall']:.2f} overall; neurons {a['neurons_within_layer']:.2f} within layers, "
        f"{a['neurons_overall']:.2f} overall. Departure from the static mask: this prompt's true ranking has rho "
        f"{d['plainact_heads_rho_overall']:.2f} with it over all heads and changes "
        f"{np.mean(d['plainact_heads_changed_by_layer']):.0%} of its head decisions; the predicted one, rho "
        f"{d['predicted_heads_rho_overall']:.2f} and {np.mean(d['predicted_heads_changed_by_layer']):.0%}.",
    ])


def analyze_handler(lm_loader: Callable[[], LoadedModel],
                    predictor_loader: Callable[[LoadedModel], ShadowPredictor] = shipped_predictor) -> Handler:
    """The click handler: analyze the prompt, then return the summary and the four figures."""

    @gpu
    @user_errors
    def shadow_analyze(prompt: str, head_sparsity: float, neuron_sparsity: float, scope: str) -> tuple:
        lm = lm_loader()
        result = analyze_prompt(lm, predictor_loader(lm), prompt, head_sparsity, neuron_sparsity, scope,
                                max_tokens=MAX_PROMPT_TOKENS)
        return (summary_markdown(result), heads_figure(result), neurons_figure(result), curves_figure(result),
                departure_figure(result))

    return shadow_analyze


def build_shadow_tab(lm_loader: Callable[[], LoadedModel]) -> None:
    """Controls, a summary and four figures; the button runs on the shared model queue."""
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(EXAMPLE, label="Prompt (plain text, no chat template)", lines=6, max_lines=14,
                                elem_id="shadow-prompt")
            button = gr.Button("Analyze", variant="primary", elem_id="shadow-btn")
        with gr.Column(scale=2):
            heads = gr.Slider(0.0, 0.9, value=0.5, step=0.05, label="Head sparsity (share of heads removed)",
                              elem_id="shadow-head-sparsity")
            neurons = gr.Slider(0.0, 0.9, value=0.0, step=0.05, label="Neuron sparsity (share of neurons removed)",
                                elem_id="shadow-neuron-sparsity")
            scope = gr.Radio([("global (per-layer normalized)", "global"), ("within each layer", "layer")],
                             value="global", label="Ranking", elem_id="shadow-scope")
    summary = gr.Markdown("Press “Analyze”.", elem_id="shadow-summary")
    waiting = message_figure("Press “Analyze”.")
    figures = [gr.Plot(waiting, label=label, elem_id=f"shadow-{key}") for key, label in (
        ("heads", "Layers × heads: true vs predicted importance, × = removed"),
        ("neurons", "Layers × neuron blocks"),
        ("curves", "Perplexity of this prompt vs sparsity"),
        ("departure", "How far this prompt departs from the static mask"),
    )]
    button.click(analyze_handler(lm_loader), [prompt, heads, neurons, scope], [summary, *figures],
                 api_name="shadow_analyze", concurrency_id=MODEL_QUEUE, concurrency_limit=1)
