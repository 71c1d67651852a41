"""Markdown and HTML the page shows beside its figures: run statistics, step notes, the coloured prompt,
the ShadowLLM summary.

Token text is HTML-escaped here: prompts are visitor input.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.decode import StepEvent
from core.shadow import ShadowMask
from core.shadow.analysis import PromptAnalysis
from core.traceviews import first_difference

SHADOW_LABELS = {"predicted": "predicted", "static": "static mask"}


def shadow_label(method: str, truth: str) -> str:
    """A mask's name on the page: the predictor's own criterion, measured on this prompt, is the "true" one."""
    return f"true {method}" if method == truth else SHADOW_LABELS.get(method, method)


@dataclass
class RunSummary:
    """One side of the comparison (the chosen method or dense), updated while it streams."""

    label: str
    tokens: int = 0
    sparsity: float = 0.0
    tokens_per_s: float = 0.0  # decode rate of the untraced run (the fast path)
    state: str = "waiting"

    def update(self, event: StepEvent) -> None:
        """Take the counts and rate of the newest streamed token."""
        self.tokens, self.sparsity, self.tokens_per_s = event.index + 1, event.sparsity, event.tokens_per_s


def _quote(text: str) -> str:
    return "“" + text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'") + "”"


def difference_note(method: str, method_ids: Sequence[int], dense_ids: Sequence[int],
                    decode: Callable[[Sequence[int]], str]) -> str:
    """Where the method's output first leaves the dense one (both greedy or both seeded)."""
    index = first_difference(method_ids, dense_ids)
    if index is None:
        return f"**{method} matches dense token for token** ({len(method_ids)} tokens)."
    mine = decode(method_ids[index : index + 1]) if index < len(method_ids) else "(end)"
    dense = decode(dense_ids[index : index + 1]) if index < len(dense_ids) else "(end)"
    return (f"**First difference at generated token {index + 1}**: {method} wrote {_quote(mine)}, "
            f"dense wrote {_quote(dense)} (the first {index} tokens agree).")


def stats_markdown(runs: Sequence[RunSummary], note: str = "") -> str:
    """A small table, one column per run: status, tokens, achieved sparsity and speed."""
    def row(name: str, cells: Sequence[str]) -> str:
        return f"| {name} | " + " | ".join(cells) + " |"

    rows = [
        row("", [r.label for r in runs]),
        "|---|" + "---:|" * len(runs),
        row("status", [r.state for r in runs]),
        row("tokens", [str(r.tokens) for r in runs]),
        row("achieved sparsity (K/V rows not read)", [f"{r.sparsity:.1%}" for r in runs]),
        row("decode tokens / s (untraced)", [f"{r.tokens_per_s:.1f}" for r in runs]),
    ]
    return "\n".join(rows) + (f"\n\n{note}" if note else "")


def prompt_html(tokens: Sequence[str], frequency: np.ndarray | None, policy: str) -> str:
    """The prompt's tokens, shaded by the share of (step, layer, KV head) reads that kept them."""
    if frequency is None:
        return (f"<p class='tb-note'>{html.escape(policy)} read every past token in every layer, so there is "
                "nothing to colour. Pick a sparse method to see which prompt tokens it kept.</p>")
    spans = []
    for position, (token, share) in enumerate(zip(tokens, frequency, strict=True)):
        text = html.escape(token).replace("\n", "⏎<br>")
        spans.append(f"<span class='tb-tok' style='background: rgba(33, 113, 181, {0.08 + 0.85 * float(share):.2f})' "
                     f"title='token {position}: kept in {share:.0%} of reads'>{text}</span>")
    legend = ("<div class='tb-legend'>Shade = share of decode steps × sparse layers × KV heads that read the token "
              "(light: rarely kept, dark: almost always). Hover a token for its number.</div>")
    return legend + "<div class='tb-prompt'>" + "".join(spans) + "</div>"


def step_note(step: int, steps: int, tokens: Sequence[str], position: int, layer: int, keep: int,
              hit: float | None, recall: float | None, capped: bool) -> str:
    """What the step and layer being drawn are, in words."""
    past = position + 1
    query = _quote(tokens[position]) if position < len(tokens) else "?"
    produced = _quote(tokens[position + 1]) if position + 1 < len(tokens) else "(end)"
    line = (f"**Step {step} of {steps}**: the query is {query} at position {position}; it produced {produced}. "
            f"**Layer {layer}**: ")
    if keep >= past:
        line += f"dense here, all {past} past tokens read."
    else:
        line += f"each KV head read {keep} of {past} past tokens ({1 - keep / past:.0%} skipped)."
    if hit is not None and recall is not None:
        line += f" Mean over heads: hit accuracy {hit:.2f}, attention recall {recall:.2f}."
    if capped:
        line += " (Trace memory cap reached: later steps were generated but not recorded.)"
    return line


def curves_table(curves: dict[str, dict[str, dict[str, float]]]) -> str:
    """The numbers behind the budget curves, one row per (method, budget)."""
    rows = ["| method | budget | hit accuracy | attention recall | achieved sparsity |", "|---|---|---:|---:|---:|"]
    for policy, by_budget in curves.items():
        for label, values in by_budget.items():
            rows.append(f"| {policy} | {label} | {values['hit_accuracy']:.3f} | {values['recall']:.3f} | "
                        f"{values.get('achieved_sparsity', float('nan')):.1%} |")
    return "\n".join(rows)


def _achieved(mask: ShadowMask) -> str:
    s = mask.sparsity()
    return f"{s['heads']:.0%} heads, {s['neurons']:.0%} neurons"


def shadow_summary(result: PromptAnalysis) -> str:
    """The numbers behind the ShadowLLM figures, in one short table."""
    a, d = result.agreement, result.departure
    rows = [f"| {shadow_label(m, result.truth)} | {_achieved(result.masks[m])} | {ppl:.2f} |"
            for m, ppl in result.chosen_ppl.items()]
    return "\n".join([
        f"**{result.tokens} tokens**, dense perplexity **{result.dense_ppl:.2f}**. The predictor was trained to "
        f"rank units by **{result.criterion}**; the static mask ranks by the "
        "training prompts' average of it, the same for every input; magnitude ranks by activation size and "
        "plainact (the paper's criterion) by activation × gradient.",
        "",
        "| mask from | removed (layers ≥ 1) | perplexity of this prompt |",
        "|---|---|---:|",
        *rows,
        "",
        f"Predicted vs true ranking (Spearman's rho): heads {a['heads_within_layer']:.2f} within layers, "
        f"{a['heads_overall']:.2f} overall; neurons {a['neurons_within_layer']:.2f} within layers, "
        f"{a['neurons_overall']:.2f} overall. Departure from the static mask: this prompt's true ranking has rho "
        f"{d['true_heads_rho_overall']:.2f} with it over all heads and changes "
        f"{np.mean(d['true_heads_changed_by_layer']):.0%} of its head decisions; the predicted one, rho "
        f"{d['predicted_heads_rho_overall']:.2f} and {np.mean(d['predicted_heads_changed_by_layer']):.0%}.",
    ])
