"""The results document as markdown tables (the README quotes them) and as figure panels (data only:
`figure_panels(doc)` is what every drawing of an evaluation, here or on the page, is made from)."""

from __future__ import annotations

from dataclasses import dataclass

from core.budget import Budget

TABLES = (  # (stage, field, title, format)
    ("perplexity", "ppl", "Perplexity, teacher-forced on held-out text (lower is better)", "{:.2f}"),
    ("perplexity", "achieved_sparsity", "Achieved sparsity of the teacher-forced reads (nominal: header)", "{:.1%}"),
    ("attention", "recall", "Attention recall: true attention mass on the kept tokens (layers >= 1)", "{:.3f}"),
    ("attention", "hit_accuracy", "Hit accuracy of the kept set vs the true top-|kept| (layers >= 1)", "{:.3f}"),
    ("coref", "wrong_token_pct", "Co-reference task: % wrong answer tokens (argmax)", "{:.1f}"),
    ("coref", "any_miss", "Co-reference task: share of samples with any wrong answer token", "{:.2f}"),
    ("entities", "wrong_token_pct", "Entities task: % wrong answer tokens (argmax)", "{:.1f}"),
    ("entities", "any_miss", "Entities task: share of samples with any wrong answer token", "{:.2f}"),
)
LAYER_RECALL_BUDGETS = ("10%", "25%", "50%")  # kept ratios shown layer by layer
CEILING = "oracle"


def column_title(info: dict) -> str:
    return f"s={info['nominal_sparsity']:.0%}" if info["ratio"] is not None else info["label"]


def _value(by_budget: dict, label: str, field_name: str) -> float | None:
    """A policy's value at a budget; a policy measured only at 100% (dense) stands for every budget."""
    dense = Budget.dense().label
    cell = by_budget.get(label) or (by_budget[dense] if set(by_budget) == {dense} else None)
    return None if cell is None else cell.get(field_name)


def _ranking_hit(by_budget: dict, by_layer: bool = False) -> float | list | None:
    """The budget-free ranking hit accuracy (the same in every budget's cell)."""
    return next(iter(by_budget.values()))["ranking_hit_by_layer" if by_layer else "ranking_hit_accuracy"]


def _budget_tables(results: dict, budgets: list[dict]) -> list[str]:
    header = "| policy | " + " | ".join(column_title(b) for b in budgets) + " |"
    lines = []
    for stage, field_name, title, fmt in TABLES:
        if stage not in results:
            continue
        lines += ["", f"## {title}", "", header, "|---|" + "---|" * len(budgets)]
        for name, by_budget in results[stage].items():
            values = [_value(by_budget, b["label"], field_name) for b in budgets]
            lines.append(f"| {name} | " + " | ".join("–" if v is None else fmt.format(v) for v in values) + " |")
    return lines


def _ranking_table(attention: dict) -> list[str]:
    lines = ["", "## Ranking hit accuracy (the paper's: top-50% of the policy's scores vs true top-50%, layers >= 1)",
             "", "| policy | hit accuracy |", "|---|---|"]
    for name, by_budget in attention.items():
        value = _ranking_hit(by_budget)
        lines.append(f"| {name} | {'– (no per-token scores)' if value is None else f'{value:.3f}'} |")
    return lines


def _layer_recall_table(attention: dict) -> list[str]:
    """Recall per layer at small budgets: the oracle (ceiling), TokenButler, and the other baseline with the
    best overall recall at that budget, side by side."""
    labels = [b for b in LAYER_RECALL_BUDGETS if CEILING in attention and b in attention[CEILING]]
    if not labels:
        return []
    others = [n for n in attention if n not in (CEILING, "dense")]
    columns = []
    for label in labels:
        scored = [n for n in others if label in attention[n]]
        rivals = [n for n in scored if n != "tokenbutler"]
        best = max(rivals, key=lambda n: attention[n][label]["recall"]) if rivals else None
        columns += [(CEILING, label)] + [(n, label) for n in ("tokenbutler", best) if n in scored]
    lines = ["", "## Attention recall by layer (kept ratio in brackets; the best non-oracle baseline at each budget)",
             "", "| layer | " + " | ".join(f"{n} ({b})" for n, b in columns) + " |", "|---|" + "---|" * len(columns)]
    layers = len(attention[CEILING][labels[0]]["recall_by_layer"])
    for layer in range(layers):
        cells = [f"{attention[n][b]['recall_by_layer'][layer]:.3f}" for n, b in columns]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("| all >= 1 | " + " | ".join(f"{attention[n][b]['recall']:.3f}" for n, b in columns) + " |")
    return lines


def _decode_table(decode: dict) -> list[str]:
    lines = ["", "## Real token-by-token decoding vs teacher-forced (same tokens)", "",
             "| policy | budget | ppl teacher | ppl decode | max abs log-prob gap | argmax agreement | "
             "sparsity teacher | sparsity decode |", "|---|---|---|---|---|---|---|---|"]
    for name, by_budget in decode.items():
        for label, d in by_budget.items():
            lines.append(f"| {name} | {label} | {d['ppl_teacher']:.3f} | {d['ppl_decode']:.3f} | "
                         f"{d['max_logprob_gap']:.2e} | {d['argmax_agreement']:.1%} | "
                         f"{d['achieved_sparsity_teacher']:.1%} | {d['achieved_sparsity_decode']:.1%} |")
    return lines


def markdown_report(doc: dict) -> str:
    """The README tables: one per measurement, policies as rows, budgets as columns."""
    cfg, results, data = doc["config"], doc["results"], doc["data"]
    tasks = ", ".join(f"{t} {data[t]} samples" for t in cfg["tasks"]) or "none"
    lines = [
        f"# Evaluation: {doc['model']['name']}",
        "",
        f"{data['chunks']} held-out chunks of {cfg['chunk_len']} tokens (first {cfg['dense_prefix']} dense); "
        f"hit/recall on {cfg['metric_rows']} rows per chunk; tasks: {tasks}; seed {cfg['seed']}. "
        "s = nominal sparsity (1 - kept ratio); 'N tok' = fixed token budget. "
        f"Run time {doc['timing_s']['total']:.0f} s.",
    ]
    lines += ["", *(f"- skipped **{n}**: {reason}" for n, reason in doc["skipped"].items())] if doc["skipped"] else []
    lines += _budget_tables(results, doc["budgets"])
    lines += _ranking_table(results["attention"]) if "attention" in results else []
    lines += _layer_recall_table(results["attention"]) if "attention" in results else []
    lines += _decode_table(results["decode"]) if "decode" in results else []
    return "\n".join(lines) + "\n"


@dataclass
class Panel:
    """One plot: a line per policy."""

    title: str
    xlabel: str
    series: dict[str, tuple[list[float], list[float]]]


def figure_panels(doc: dict) -> list[Panel]:
    """Measurements against nominal sparsity (ratio budgets), and per-layer quality."""
    results = doc["results"]
    ratios = [b for b in doc["budgets"] if b["ratio"] is not None]
    xs = [100 * b["nominal_sparsity"] for b in ratios]
    panels = []
    for stage, field_name, title, _ in TABLES:
        if stage in results and field_name != "achieved_sparsity":
            series = {n: (xs, [_value(by, b["label"], field_name) for b in ratios]) for n, by in results[stage].items()}
            panels.append(Panel(title, "nominal sparsity (%)", series))
    if "attention" not in results:
        return panels
    ranking = {n: _ranking_hit(by, by_layer=True) for n, by in results["attention"].items()}
    panels.append(Panel("Ranking hit accuracy (top-50%) by layer", "layer",
                        {n: (list(range(len(v))), v) for n, v in ranking.items() if v is not None}))
    if ratios:
        mid = min(ratios, key=lambda b: abs(b["ratio"] - 0.5))["label"]
        recall = {n: _value(by, mid, "recall_by_layer") for n, by in results["attention"].items()}
        panels.append(Panel(f"Attention recall by layer at {mid} kept", "layer",
                            {n: (list(range(len(v))), v) for n, v in recall.items()}))
    return panels
