"""The ShadowLLM tab's handler: analyze the prompt with core.shadow, then draw the summary and four figures.

All model work happens in core.shadow.analysis (one forward + backward, then batched masked forwards).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app import markup, shadow_figures
from app.gpu import gpu
from app.handlers import Updates, user_errors
from core.models import LoadedModel
from core.shadow import DEFAULT_DIR, ShadowPredictor
from core.shadow.analysis import analyze_prompt
from core.spec import ModelSpec

MAX_PROMPT_TOKENS = 400  # one forward + backward and ~30 masked forwards stay a few seconds on a CPU


@functools.lru_cache(maxsize=2)
def _load_shipped(spec: ModelSpec) -> ShadowPredictor:
    return ShadowPredictor.load(DEFAULT_DIR, spec)


def shipped_predictor(lm: LoadedModel) -> ShadowPredictor:
    """The predictor in assets/shadow/ (loaded once; a clear error for a model it was not trained for)."""
    return _load_shipped(lm.spec)


@dataclass(frozen=True)
class ShadowViews:
    """Where the analysis goes: the summary and the heads, neurons, curves and departure figures."""

    summary: gr.Markdown
    heads: gr.Plot
    neurons: gr.Plot
    curves: gr.Plot
    departure: gr.Plot

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.summary, self.heads, self.neurons, self.curves, self.departure]


def analyze_handler(views: ShadowViews, lm_loader: Callable[[], LoadedModel],
                    predictor_loader: Callable[[LoadedModel], ShadowPredictor] = shipped_predictor,
                    ) -> Callable[[str, float, float, str], Updates]:
    """The Analyze button's handler, drawing into `views`."""

    @gpu
    @user_errors
    def shadow_analyze(prompt: str, head_sparsity: float, neuron_sparsity: float, scope: str) -> Updates:
        lm = lm_loader()
        result = analyze_prompt(lm, predictor_loader(lm), prompt, head_sparsity, neuron_sparsity, scope,
                                max_tokens=MAX_PROMPT_TOKENS)
        return {views.summary: markup.shadow_summary(result), views.heads: shadow_figures.heads_figure(result),
                views.neurons: shadow_figures.neurons_figure(result),
                views.curves: shadow_figures.curves_figure(result),
                views.departure: shadow_figures.departure_figure(result)}

    return shadow_analyze
