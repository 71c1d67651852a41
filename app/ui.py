"""The page's layout: one small builder per tab, wired to app.handlers / app.shadow_handlers with stable API names.

Each builder hands its handler the components it writes (the dataclasses in the handler modules), and
the handler returns updates keyed by those components; the output lists below fix only the order an
API client sees. Model work (generate, budgets, shadow) shares one queue slot ("model"): one model,
one device. Drawing from a visitor's own traces (inspect, head_triangle) runs beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app import examples, figures, handlers, results
from app.about import about_markdown
from app.handlers import MAX_NEW_TOKENS, MAX_TEMPERATURE, RunViews, StepViews
from app.shadow_handlers import ShadowViews, analyze_handler, shipped_predictor
from app.state import STATE_TTL_S, default_method, ready_methods, shared_model, sparse_methods
from core.models import LoadedModel
from core.shadow import ShadowPredictor

MODEL_QUEUE = "model"
QUEUE_MAX = 32
VIEW_CONCURRENCY = 4
CSS = """
.tb-prompt { font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.9; max-height: 420px;
             overflow-y: auto; white-space: pre-wrap; padding: 8px; border: 1px solid #ddd; border-radius: 6px; }
.tb-tok { border-radius: 3px; padding: 1px 0; }
.tb-legend, .tb-note { font-size: 13px; color: #555; margin: 4px 0; }
"""
INTRO = (
    "# TokenButler Studio\n"
    "Decode with only a **budget** of past tokens per KV head, and see which tokens each head really needed, "
    "how well the method guessed them, and what the output lost against dense attention."
)
SHADOW_EXAMPLE = (
    "The dictionary is Python's built-in mapping type. A dictionary maps hashable keys to arbitrary values; "
    "keys are unique, and assigning to an existing key replaces its value. Dictionaries preserve insertion order, "
    "so iterating over one yields its keys in the order they were added."
)
SHADOW_INTRO = (
    "**ShadowLLM** ranks every attention head and MLP neuron of *this prompt* by an importance criterion: "
    "plainact (|activation × gradient|, the paper's), activation magnitude, and the small predictor's guess of "
    "its own criterion (named below) from layer 0's output alone. On this model magnitude prunes better than "
    "plainact, so the shipped predictor learns magnitude. The mask removes the "
    "lowest-ranked units for real (their o_proj / down_proj inputs are zeroed; layer 0 stays dense). "
    "Colours show log(score / the layer's mean): 0 is an average unit of its layer; × marks a removed unit."
)


@dataclass
class GenerateTab:
    """The Generate tab's controls, and the boxes a generation writes."""

    prompt: gr.Textbox
    inputs: list[gr.components.Component]
    button: gr.Button
    method_text: gr.Textbox
    dense_text: gr.Textbox
    stats: gr.Markdown
    prompt_view: gr.HTML


@dataclass
class InspectTab:
    """The Inspect tab's controls and figures, which generation also updates."""

    step: gr.Slider
    layer: gr.Slider
    head: gr.Dropdown
    views: StepViews
    triangle: gr.Plot


def _budget_controls() -> tuple[gr.Radio, gr.Slider, gr.Number]:
    """Ratio slider or token count, whichever the radio picks (the other is hidden)."""
    kind = gr.Radio([("ratio of the past", "ratio"), ("token count", "tokens")], value="ratio", label="Budget as",
                    elem_id="budget-kind")
    ratio = gr.Slider(0.01, 1.0, value=0.25, step=0.01, label="Budget ratio (share of past tokens read per KV head)",
                      elem_id="budget-ratio")
    tokens = gr.Number(value=64, step=1, label="Budget tokens per KV head", visible=False,  # the handler
                       elem_id="budget-tokens")  # checks it is a whole number (gradio's rounding fails on NaN)
    kind.change(lambda k: {ratio: gr.update(visible=k == "ratio"), tokens: gr.update(visible=k == "tokens")}, kind,
                [ratio, tokens], queue=False, api_visibility="private")
    return kind, ratio, tokens


def build_generate_tab() -> GenerateTab:
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=8, max_lines=20, elem_id="prompt",
                                placeholder="Type a prompt, or pick an example below.")
            button = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        with gr.Column(scale=2):
            method = gr.Dropdown([*sparse_methods(), "dense"], value=default_method(), label="Method",
                                 info="What each does: About tab.", elem_id="method")
            kind, ratio, tokens = _budget_controls()
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=48, step=1, label="Max new tokens", elem_id="max-new")
            temperature = gr.Slider(0.0, MAX_TEMPERATURE, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="temperature")
    gr.Examples([[e.prompt, e.method, e.ratio, e.max_new_tokens] for e in examples.EXAMPLES],
                [prompt, method, ratio, max_new], example_labels=[e.title for e in examples.EXAMPLES],
                label="Examples: a fact stated early, asked for late")
    with gr.Row():
        method_text = gr.Textbox(label="Method output (streams first)", lines=6, elem_id="method-out")
        dense_text = gr.Textbox(label="Dense output, same prompt and seed", lines=6, elem_id="dense-out")
    stats = gr.Markdown(label="Run statistics", elem_id="run-stats")
    gr.Markdown("#### Prompt tokens, shaded by how often the method kept them")
    prompt_view = gr.HTML("<p class='tb-note'>Run a generation to colour the prompt.</p>", label="Prompt keep shading",
                          elem_id="prompt-view")
    return GenerateTab(prompt=prompt, inputs=[prompt, method, kind, ratio, tokens, max_new, temperature],
                       button=button, method_text=method_text, dense_text=dense_text, stats=stats,
                       prompt_view=prompt_view)


def build_inspect_tab(lm: LoadedModel) -> InspectTab:
    spec = lm.spec
    gr.Markdown(
        "For one decode step and one layer: what the method scored, the true attention of that step's query, "
        "and where they agree (green), where the method wasted a read (blue) and what it missed (red). "
        "Rows are kept per KV head and shared by its group of query heads, so even the oracle misses some of one "
        "head's own top-k. Columns are max-pooled bins of past tokens once the context exceeds 256; "
        "hover for the tokens."
    )
    with gr.Row():
        step = gr.Slider(1, MAX_NEW_TOKENS, value=1, step=1, label="Decode step", interactive=False, elem_id="step")
        layer = gr.Slider(0, spec.num_layers - 1, value=spec.num_layers // 2, step=1, label="Layer", elem_id="layer")
    note = gr.Markdown(handlers.NO_RUN, label="Step note", elem_id="step-note")
    step_fig = gr.Plot(figures.message_figure(handlers.NO_RUN), label="Heads × past tokens", elem_id="step-fig")
    grid_fig = gr.Plot(figures.message_figure(handlers.NO_RUN), label="Layer × head quality at this step",
                       elem_id="grid-fig")
    gr.Markdown("#### One head across all steps")
    heads = [(f"head {h} (KV head {h // spec.group_size})", h) for h in range(spec.num_heads)]
    head = gr.Dropdown(heads, value=0, label="Head", elem_id="head")
    triangle = gr.Plot(figures.message_figure("Pick a head after a run."), label="Steps × past tokens",
                       elem_id="triangle-fig")
    return InspectTab(step, layer, head, StepViews(note, step_fig, grid_fig), triangle)


BUDGETS_INTRO = (
    "### What sparsity buys\n"
    "**Quality at equal bytes**: each method's perplexity relative to dense and its attention recall, against the "
    "share of a dense decode step's bytes it reads (its K/V rows, and its key summary, labels or page bounds at the "
    "precision they are stored in); the dashed line is the frontier, where no method reads fewer bytes and does "
    "better. **Speed**: decode tokens/s over dense's in the same run, against context. Both come from the shipped "
    "runs (`python -m core evaluate`, `benchmarks/bench_decode_cpu.py`, `benchmarks/bench_gpu_decode.py`)."
)


def build_budgets_tab(prompt: gr.Textbox) -> None:
    """The two lead figures, the live curves for the visitor's prompt, then every other shipped figure, folded."""
    shipped = results.load_shipped()
    gr.Markdown(BUDGETS_INTRO)
    with gr.Column(elem_id="budgets-lead"):
        for i, fig in enumerate(shipped.lead):
            gr.Plot(fig, elem_id=f"budgets-lead-{i}")
    gr.Markdown("### Your prompt\nQuality against budget **for the prompt on the Generate tab**: the prompt is "
                "prefilled densely, then its last token's query reads each budget, as the first decode step would. "
                "Every method sees the same pass; means over layers ≥ 1 and heads.")
    with gr.Row():
        methods = gr.CheckboxGroup(sparse_methods(), value=ready_methods(), label="Methods", elem_id="curve-methods")
        budget_text = gr.Textbox("5%, 10%, 25%, 50%, 75%", label="Budgets (ratios or token counts, comma-separated)",
                                 elem_id="curve-budgets")
    button = gr.Button("Compute curves", variant="primary", elem_id="budgets-btn")
    curves = gr.Plot(figures.message_figure("Press “Compute curves”."), label="Live curves", elem_id="curves-fig")
    with gr.Accordion("Numbers", open=False):
        table = gr.Markdown(label="Curve numbers")
    button.click(handlers.budgets_handler(curves, table), [prompt, methods, budget_text], [curves, table],
                 api_name="budgets", concurrency_id=MODEL_QUEUE, concurrency_limit=1)
    with gr.Accordion("Every other figure of the shipped evaluation", open=False, elem_id="budgets-shipped"):
        gr.Markdown("Measured by `python -m core evaluate` over many held-out documents; perplexity is relative to "
                    "dense on the same text (log axis), bars are 95% bootstrap intervals. Method colours are the "
                    "live curves' colours.")
        for start in range(0, len(shipped.figures), 2):  # two panels a row
            with gr.Row():
                for fig in shipped.figures[start : start + 2]:
                    gr.Plot(fig)
    with gr.Accordion("The full evaluation report (every table)", open=False, elem_id="eval-report"):
        gr.Markdown(shipped.markdown)


def build_shadow_tab(lm_loader: Callable[[], LoadedModel],
                     predictor_loader: Callable[[LoadedModel], ShadowPredictor] = shipped_predictor) -> None:
    """Controls, a summary and four figures; the button runs on the shared model queue."""
    gr.Markdown(SHADOW_INTRO)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(SHADOW_EXAMPLE, label="Prompt (plain text, no chat template)", lines=6, max_lines=14,
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
    waiting = figures.message_figure("Press “Analyze”.")
    views = ShadowViews(summary, *[gr.Plot(waiting, label=label, elem_id=f"shadow-{key}") for key, label in (
        ("heads", "Layers × heads: true vs predicted importance, × = removed"),
        ("neurons", "Layers × neuron blocks"),
        ("curves", "Perplexity of this prompt vs sparsity"),
        ("departure", "How far this prompt departs from the static mask"),
    )])
    button.click(analyze_handler(views, lm_loader, predictor_loader), [prompt, heads, neurons, scope], views.outputs,
                 api_name="shadow_analyze", concurrency_id=MODEL_QUEUE, concurrency_limit=1)


def wire_inspect(tab: InspectTab, record: gr.State, run: gr.events.Dependency) -> None:
    """Inspect redraws from the visitor's own record; no model work, so it runs beside generation.

    When a run ends, the picked head's triangle is drawn too (the same handler, no extra endpoint).
    """
    shared = {"concurrency_limit": VIEW_CONCURRENCY, "trigger_mode": "always_last"}
    gr.on([tab.step.release, tab.layer.release], handlers.inspect_handler(tab.views), [tab.step, tab.layer, record],
          tab.views.outputs, api_name="inspect", **shared)
    gr.on([tab.head.change, tab.layer.release], handlers.head_triangle, [tab.layer, tab.head, record], tab.triangle,
          api_name="head_triangle", **shared)
    run.success(handlers.head_triangle, [tab.layer, tab.head, record], tab.triangle, api_visibility="private")


def build_demo(queue_size: int = QUEUE_MAX) -> gr.Blocks:
    """The whole page; loads the shared model first so the About tab can describe it. At most `queue_size`
    visitors wait for the model; the next one is told the queue is full."""
    lm = shared_model()
    with gr.Blocks(title="TokenButler Studio") as demo:
        record = gr.State(None, time_to_live=STATE_TTL_S)
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                gen = build_generate_tab()
            with gr.Tab("Inspect", id="inspect"):
                insp = build_inspect_tab(lm)
            with gr.Tab("Budgets", id="budgets"):
                build_budgets_tab(gen.prompt)
            with gr.Tab("ShadowLLM", id="shadow"):
                build_shadow_tab(shared_model)
            with gr.Tab("About", id="about"):
                gr.Markdown(about_markdown(lm))
        out = RunViews(gen.method_text, gen.dense_text, gen.stats, gen.prompt_view, record, insp.step, insp.views)
        run = gen.button.click(handlers.generate_handler(out), [*gen.inputs, insp.layer], out.outputs,
                               api_name="generate", concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        wire_inspect(insp, record, run)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def launch_kwargs() -> dict:
    """Theme and CSS (gradio 6 takes them at launch)."""
    return {"theme": gr.themes.Soft(), "css": CSS}
