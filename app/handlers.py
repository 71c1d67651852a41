"""Event handlers: check what a visitor sent, call core, and stream updates into the page.

Every handler that writes more than one component returns (or yields) a dict {component: value or
gr.update(...)}; a component left out of the dict keeps what it shows. The components come from the
layout (app.ui) in the small dataclasses below, so a handler names what it writes instead of
counting positions in an output list; the output list given to the event fixes only the order an
API client sees.

A visitor's mistake (every ValueError core raises: PromptError, BudgetError, UnknownPolicyError, ...)
or a missing shipped file becomes a gr.Error carrying core's message: a toast in the page and an
AppError for API clients.
Anything else is logged on the server and reported in one line, never as a stack trace.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect as pyinspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

from app import figures, markup
from app.gpu import gpu
from app.reference import PREFILLS, REFERENCES, DenseReference, RunKey
from app.state import RunRecord, shared_model
from core import decode, metrics
from core.budget import Budget, BudgetError
from core.models import LoadedModel
from core.policies import Policy, make_policy
from core.traceviews import head_triangle as triangle_arrays
from core.traceviews import keep_frequency, step_view

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 256
MAX_TEMPERATURE = 2.0
LIVE_FIGURE_EVERY_S = 1.0  # Inspect follows the newest step this often while a run streams
STATS_EVERY_S = 0.5  # the stats table too: every token would cost the stream more than it shows
NO_RUN = "Nothing to inspect yet: run a generation on the Generate tab first."
Updates = dict[gr.components.Component, Any]


class Ticker:
    """True on the first call, then at most once per `every` seconds: throttles heavy streamed outputs."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = -float("inf")

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self.last < self.every:
            return False
        self.last = now
        return True


def _as_gr_error(err: Exception) -> gr.Error:
    if isinstance(err, (ValueError, FileNotFoundError)):  # core's messages say what to do (a missing predictor too)
        return gr.Error(str(err))
    log.exception("handler failed")
    return gr.Error(f"The run failed inside the model ({type(err).__name__}); the server log has the details.")


def user_errors(fn: Callable) -> Callable:
    """Turn exceptions into gr.Error messages (keeping generator handlers generators, for streaming)."""
    if pyinspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args: Any, **kwargs: Any) -> Iterator:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                raise _as_gr_error(err) from None
        return streaming

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise _as_gr_error(err) from None
    return plain


def parse_budget(kind: str, ratio: float | None, tokens: float | None) -> Budget:
    """The budget the visitor picked: a ratio of the past or a whole number of tokens."""
    if kind not in ("ratio", "tokens"):
        raise BudgetError(f"Budget kind must be 'ratio' or 'tokens', got {kind!r}.")
    if kind == "tokens":
        if tokens is None:
            raise BudgetError("Give a token budget: a whole number, at least 1.")
        return Budget(tokens=_check_range("Budget tokens", tokens, 1, 10**9))
    if ratio is None:
        raise BudgetError("Give a budget ratio between 0 and 1.")
    return Budget(ratio=_check_number("Budget ratio", ratio, 0.0, 1.0))


def parse_budget_list(text: str) -> list[Budget]:
    """'10%, 25%, 0.5, 128' -> budgets (ratios and token counts may mix)."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise BudgetError("List at least one budget, e.g. 10%, 25%, 50% or 64, 128.")
    return [Budget.parse(p) for p in parts]


def _require_run(record: RunRecord | None) -> RunRecord:
    if record is None or record.steps == 0:
        raise gr.Error(NO_RUN)
    return record


def _check_range(name: str, value: float, low: int, high: int) -> int:
    """A whole number in [low, high] (an API client may send NaN, infinities, fractions or strings)."""
    number = _check_number(name, value, low, high)
    if number != int(number):
        raise gr.Error(f"{name} must be a whole number, got {value}.")
    return int(number)


def render_step(record: RunRecord, step: int, layer: int) -> tuple[str, go.Figure, go.Figure]:
    """Step note, heads x tokens figure and layer x head grid for one (step, layer)."""
    trace = record.step_trace(step)
    view = step_view(trace, layer, record.group)
    grid = metrics.layer_head_grid(trace, record.num_layers, record.num_heads)
    hit, recall = grid["hit_accuracy"][layer], grid["recall"][layer]
    note = markup.step_note(step, record.steps, record.tokens, trace.position, layer, view.keep,
                            None if np.isnan(hit).all() else float(np.nanmean(hit)), float(np.nanmean(recall)),
                            record.capped)
    fig = figures.step_figure(view, record.tokens, record.policy, record.group)
    grid_note = (f"step {step} · hit accuracy: the policy's own top-50% vs the true top-50% (blank: no per-head "
                 f"scores) · recall: true attention mass on the kept rows at {record.budget_label}")
    return note, fig, figures.grid_figure(grid["hit_accuracy"], grid["recall"], layer, grid_note)


@dataclass(frozen=True)
class StepViews:
    """Where Inspect draws one step: the note, the heads x tokens figure and the layer x head grid."""

    note: gr.Markdown
    step_fig: gr.Plot
    grid_fig: gr.Plot

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.note, self.step_fig, self.grid_fig]

    def draw(self, record: RunRecord, step: int, layer: int) -> Updates:
        return dict(zip(self.outputs, render_step(record, step, layer), strict=True))


@dataclass(frozen=True)
class RunViews:
    """Everything a generation writes: Generate's boxes, the visitor's record, and Inspect's step slider and views."""

    method_text: gr.Textbox
    dense_text: gr.Textbox
    stats: gr.Markdown
    prompt_view: gr.HTML
    record: gr.State
    step: gr.Slider
    views: StepViews

    @property
    def outputs(self) -> list[gr.components.Component]:
        """The order API clients see (gr.State is not shown to them)."""
        return [self.method_text, self.dense_text, self.stats, self.prompt_view, self.record, self.step,
                *self.views.outputs]

    def follow(self, record: RunRecord, layer: int) -> Updates:
        """Inspect on the newest traced step of a run: the step slider, the note and both figures."""
        if not record.steps:
            blank = figures.message_figure(NO_RUN)
            return {self.step: gr.update(interactive=False), self.views.note: NO_RUN, self.views.step_fig: blank,
                    self.views.grid_fig: blank}
        # a slider needs maximum > minimum: with one step it shows 1 of 2 and stays still
        slider = gr.update(maximum=max(record.steps, 2), value=record.steps, interactive=record.steps > 1)
        return {self.step: slider, **self.views.draw(record, record.steps, layer)}


def generate_handler(out: RunViews) -> Callable[..., Iterator[Updates]]:
    """The Generate button's handler, writing into `out`."""

    @gpu
    @user_errors
    def generate(prompt: str, method: str, budget_kind: str, ratio: float, tokens: float, max_new_tokens: float,
                 temperature: float, layer: float,
                 progress: gr.Progress = gr.Progress()) -> Iterator[Updates]:  # noqa: B008 (gradio's idiom)
        """Stream the method's output (untraced: the fast path whose speed the stats show), trace its steps
        again for Inspect (which follows the newest traced step), then dense for the same prompt (or the dense
        reference already decoded for it)."""
        lm = shared_model()
        layer = _check_range("Layer", layer, 0, lm.spec.num_layers - 1)
        max_new_tokens = _check_range("Max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        temperature = _check_number("Temperature", temperature, 0.0, MAX_TEMPERATURE)
        budget = parse_budget(budget_kind, ratio, tokens)
        policy = make_policy(method)
        config = decode.GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        ids = decode.encode_prompt(lm, prompt, chat=True, reserve=config.max_new_tokens)
        record = RunRecord.start(lm, method, budget.label, ids[0].tolist())
        mine = markup.RunSummary(f"{method} @ {budget.label}", state="generating")
        runs = [mine] if method == "dense" else [mine, markup.RunSummary("dense", state="waiting")]
        stats = Ticker(STATS_EVERY_S)
        text = ""
        shared, prefill_note = _prefilled(lm, ids, config, progress)  # dense for every method: one serves all
        for event in decode.generate(lm, shared, policy, budget, config):
            record.add_token(lm, event.token_id)
            text = event.text
            mine.update(event)
            update: Updates = {out.method_text: text}
            if event.index == 0:  # handed to gr.State once, then it grows in place: Inspect reads it mid-trace
                update[out.record] = record
            if stats.due():
                update[out.stats] = markup.stats_markdown(runs)
            yield update
        mine.state = "done"
        yield {out.stats: markup.stats_markdown(runs)}
        traced = yield from _trace_for_inspect(lm, shared, policy, budget, record, layer, out, progress)
        key = RunKey.of(lm.spec.name, ids[0].tolist(), config)
        if method == "dense":
            dense_text, note = text, "Dense is the reference: pick a sparse method to compare against it."
            REFERENCES.put(key, DenseReference(text, record.generated_ids, mine))
        else:
            reference = REFERENCES.get(key)
            if reference is None:
                dense_text, dense_ids = yield from _stream_dense(lm, shared, config, runs, out)
                REFERENCES.put(key, DenseReference(dense_text, dense_ids, runs[-1]))
                reused = ""
            else:
                runs[-1] = dataclasses.replace(reference.summary, label="dense", state="reused")
                dense_text, dense_ids, reused = reference.text, reference.ids, " " + reference.reused_note()
            note = markup.difference_note(method, record.generated_ids, dense_ids, lm.tokenizer.decode) + reused
        note += f"\n\n{prefill_note}\n\n{traced}"
        frequency = keep_frequency(record.traces, record.prompt_len)
        yield {out.method_text: text, out.dense_text: dense_text, out.stats: markup.stats_markdown(runs, note),
               out.prompt_view: markup.prompt_html(record.tokens[: record.prompt_len], frequency, method),
               out.record: record, **out.follow(record, layer)}

    return generate


def _trace_for_inspect(lm: LoadedModel, shared: decode.Prefilled, policy: Policy, budget: Budget, record: RunRecord,
                       layer: int, out: RunViews, progress: gr.Progress) -> Iterator[Updates]:
    """Decode the run's tokens again with tracing on (`core.decode.trace_replay`), filling `record` for
    Inspect with a progress bar; its time is kept out of the speeds shown. Returns a note saying so."""
    steps = max(len(record.generated_ids) - 1, 0)
    started = time.perf_counter()
    figure = Ticker(LIVE_FIGURE_EVERY_S)
    for done, trace in enumerate(decode.trace_replay(lm, shared, policy, budget, record.generated_ids), start=1):
        record.add_trace(trace)
        progress(done / steps, desc=f"tracing for Inspect: step {done} of {steps}")
        if figure.due():
            yield out.follow(record, layer)
    seconds = time.perf_counter() - started
    return (f"Inspect draws a separate traced replay of the same {steps} decode steps ({seconds:.1f} s, "
            "not counted in the speeds above: tracing reads every head's full attention row).")


def _prefilled(lm: LoadedModel, ids: torch.Tensor, config: decode.GenerationConfig,
               progress: gr.Progress) -> tuple[decode.Prefilled, str]:
    """The prompt's dense prefill, reused when it is the newest prompt's, with a progress bar (tokens and an
    ETA) while a long prompt is prefilled; and a note saying which."""
    key = (lm.spec.name, tuple(ids[0].tolist()))
    found = PREFILLS.get(key)
    if found is not None:
        return found, f"Prefill of the {ids.shape[1]:,} prompt tokens reused (the same prompt as the last run)."
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        eta = (total - done) * (time.perf_counter() - started) / done
        progress(done / total, desc=f"prefill: {done:,} / {total:,} prompt tokens, about {eta:.0f} s left")

    shared = decode.prefill_prompt(lm, ids, config, on_progress=report)
    PREFILLS.put(key, shared)
    return shared, f"Prefill: {ids.shape[1]:,} prompt tokens in {shared.seconds:.1f} s, shared by both runs."


def _check_number(name: str, value: float, low: float, high: float) -> float:
    """A finite number in [low, high] (an API client may send NaN, infinities or strings)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be between {low} and {high}, got {value}.")
    return number


def _stream_dense(lm: LoadedModel, shared: decode.Prefilled, config: decode.GenerationConfig,
                  runs: list[markup.RunSummary], out: RunViews) -> Iterator[Updates]:
    """Dense decoding (untraced) from the same prefill with the same sampling, streamed into the right-hand box.

    Returns (dense text, generated ids).
    """
    dense = runs[-1]
    dense.state = "generating"
    plain = decode.GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                    seed=config.seed)
    dense_ids: list[int] = []
    text = ""
    stats = Ticker(STATS_EVERY_S)
    for event in decode.generate(lm, shared, "dense", Budget.dense(), plain):
        dense_ids.append(event.token_id)
        text = event.text
        dense.update(event)
        update: Updates = {out.dense_text: text}
        if stats.due():
            update[out.stats] = markup.stats_markdown(runs)
        yield update
    dense.state = "done"
    return text, dense_ids


def inspect_handler(views: StepViews) -> Callable[[float, float, RunRecord | None], Updates]:
    """Inspect's handler for the step and layer sliders, drawing into `views`."""

    @user_errors
    def inspect(step: float, layer: float, record: RunRecord | None) -> Updates:
        """Redraw Inspect for the picked step and layer of this visitor's last run."""
        record = _require_run(record)
        step = _check_range("Step", step, 1, record.steps)
        layer = _check_range("Layer", layer, 0, record.num_layers - 1)
        return views.draw(record, step, layer)

    return inspect


@user_errors
def head_triangle(layer: float, head: float, record: RunRecord | None) -> go.Figure:
    """One head's whole step x token picture: true attention beside the policy's prediction (one output)."""
    record = _require_run(record)
    layer = _check_range("Layer", layer, 0, record.num_layers - 1)
    head = _check_range("Head", head, 0, record.num_heads - 1)
    triangle = triangle_arrays(record.traces, layer, head, record.group)
    return figures.triangle_figure(triangle, record.tokens, record.policy, layer, head)


def budgets_handler(curves: gr.Plot, table: gr.Markdown) -> Callable[..., Updates]:
    """The Budgets tab's handler: live curves into `curves`, their numbers into `table`."""

    @gpu
    @user_errors
    def budgets(prompt: str, methods: list[str], budget_text: str,
                progress: gr.Progress = gr.Progress()) -> Updates:  # noqa: B008 (gradio's idiom)
        """Hit accuracy and attention recall against budget for each method on this prompt, computed now."""
        if not methods:
            raise gr.Error("Pick at least one method to compare.")
        lm = shared_model()
        budget_list = parse_budget_list(budget_text)
        ids = decode.encode_prompt(lm, prompt, chat=True)
        last = ids.shape[1] - 1  # as in Generate: a dense prefill, then the last prompt token's query reads its budget
        policies = []
        for method in progress.tqdm(methods, desc="methods"):
            try:
                policies.append(make_policy(method))
            except FileNotFoundError as err:  # a method whose shipped weights are missing; the others still run
                gr.Warning(f"{method} skipped: {err}")
        if not policies:
            raise gr.Error("None of the picked methods could run; see the warnings.")
        by_policy = metrics.budget_curves(lm, ids, policies, budget_list, rows="last", prompt_len=last)  # one pass
        title = f"last prompt token's query over {ids.shape[1]} tokens, layers ≥ 1, mean over heads"
        return {curves: figures.curves_figure(by_policy, title), table: markup.curves_table(by_policy)}

    return budgets
