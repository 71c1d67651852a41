"""The results document as markdown tables (README and docs/results.md quote them) and as figure panels (data only:
`figure_panels(doc)` is what every drawing of an evaluation, here or on the page, is made from)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.budget import Budget
from core.eval.cache import cell_origin
from core.eval.config import CEILING, DENSE, LEARNED
from core.eval.frontier import Curves, Point, equal_bytes

PROTOCOLS = {  # perplexity stage -> how its prompt and scored tokens are laid out
    "perplexity": "protocol 1: a {dense_prefix}-token dense prompt, every later token scored under the budget",
    "perplexity_long_prompt": "protocol 2: a {long_prompt}-token dense prompt (prompt compression's setting), "
                              "the remaining tokens scored",
}
ATTENTION_TABLES = (  # field, title, format
    ("recall", "Attention recall: true attention mass on the kept tokens (layers >= 1)", "{:.3f}"),
    ("hit_accuracy", "Hit accuracy of the kept set vs the true top-|kept| (layers >= 1)", "{:.3f}"),
)
ROW_TOLERANCE = 0.05  # a recall rival may skip this much less of the rows than the oracle (Quest's pages)
LAYER_RECALL_BUDGETS = ("25%", "10%", "5%")  # kept ratios shown layer by layer


def column_title(info: dict) -> str:
    return f"s={info['nominal_sparsity']:.0%}" if info["ratio"] is not None else info["label"]


def cell(by_budget: dict, label: str) -> dict | None:
    """A policy's cell at a budget; a policy measured only at 100% (dense) stands for every budget."""
    dense = Budget.dense().label
    return by_budget.get(label) or (by_budget[dense] if set(by_budget) == {dense} else None)


def ppl_ratio(stage: dict, name: str, label: str) -> tuple[float | None, list[float] | None]:
    """Perplexity over dense's on the same chunks, and its 95% interval when the run measured one."""
    found, dense = cell(stage[name], label), cell(stage.get(DENSE, {}), label)
    if found is None or dense is None:
        return None, None
    return found["ppl"] / dense["ppl"], found.get("ppl_vs_dense_ci")


def _with_interval(value: float | None, interval: list[float] | None, fmt: str) -> str:
    if value is None:
        return "–"
    if interval is not None and any(math.isnan(v) for v in interval):  # gap closure where the rival ties the oracle
        return fmt.format(value) + " [none: no gap in > 2.5% of draws]"
    return fmt.format(value) + ("" if interval is None else " [" + ", ".join(fmt.format(v) for v in interval) + "]")


def _table(title: str, budgets: list[dict], rows: dict[str, list[str]]) -> list[str]:
    header = "| policy | " + " | ".join(column_title(b) for b in budgets) + " |"
    return ["", f"## {title}", "", header, "|---|" + "---|" * len(budgets),
            *(f"| {name} | " + " | ".join(values) + " |" for name, values in rows.items())]


def gap_closed(stage: dict, label: str) -> dict | None:
    """The learned method's gap closure at `label` ({value, ci, rival}; `gap_closure` in stages), if measured."""
    return (cell(stage.get(LEARNED, {}), label) or {}).get("gap_closed")


def _perplexity_tables(doc: dict, stage_name: str) -> list[str]:
    stage, budgets, cfg = doc["results"][stage_name], doc["budgets"], doc["config"]
    protocol = PROTOCOLS[stage_name].format(**{k: cfg.get(k) for k in ("dense_prefix", "long_prompt")})
    dense = cell(stage.get(DENSE, {}), Budget.dense().label)
    dense_note = f"; dense perplexity {dense['ppl']:.2f}" if dense else ""
    ratio = {n: [_with_interval(*ppl_ratio(stage, n, b["label"]), "{:.3f}") for b in budgets]
             for n in stage if n != DENSE}
    reads = {n: [f"{c['achieved_sparsity']:.1%} / {c['byte_sparsity']:.1%}" if (c := cell(by, b["label"]))
                 and "byte_sparsity" in c else ("–" if c is None else f"{c['achieved_sparsity']:.1%}")
                 for b in budgets] for n, by in stage.items() if n != DENSE}
    closed = [gap_closed(stage, b["label"]) for b in budgets]
    lines = _table(f"Perplexity / dense [95% interval over chunks], {protocol}{dense_note}", budgets, ratio)
    lines += _table(f"Achieved sparsity, K/V rows / bytes (side caches and page bounds counted), {protocol}",
                    budgets, reads)
    if any(v is not None for v in closed):
        lines += ["", "Perplexity gap closed by tokenbutler, 1 - (tokenbutler - oracle) / (best other - oracle) "
                  "[95% interval over chunks] (best other method reading no more bytes): "
                  + ", ".join(f"{column_title(b)} {_with_interval(v['value'], v['ci'], '{:.2f}')} ({v['rival']})"
                              for b, v in zip(budgets, closed, strict=True) if v is not None)]
        by_rival = {b["label"]: (cell(stage[LEARNED], b["label"]) or {}).get("gap_closed_by_rival", {})
                    for b in budgets}
        rivals = sorted({name for against in by_rival.values() for name in against})
        rows = {name: [_with_interval(a["value"], a["ci"], "{:.2f}") if (a := by_rival[b["label"]].get(name))
                       else "–" for b in budgets] for name in rivals}
        lines += _table(f"Perplexity gap closed by tokenbutler against each rival [95% interval], {protocol}",
                        budgets, rows)
    over = {b["label"]: (cell(stage.get(LEARNED, {}), b["label"]) or {}).get("ppl_over_rival", {}) for b in budgets}
    others = sorted({name for against in over.values() for name in against})
    if others:
        rows = {name: [_with_interval(a["value"], a["ci"], "{:.3f}") if (a := over[b["label"]].get(name)) else "–"
                       for b in budgets] for name in others}
        lines += _table(f"Tokenbutler's perplexity over each method's, paired over chunks [95% interval; below 1: "
                        f"tokenbutler better], {protocol}", budgets, rows)
    return lines


def stage_title(curves: Curves, cfg: dict) -> str:
    """What a stage of the equal-bytes comparison measured, in words."""
    if curves.stage in PROTOCOLS:
        return PROTOCOLS[curves.stage].format(**{k: cfg.get(k) for k in ("dense_prefix", "long_prompt")})
    return "attention recall of the sampled rows (layers >= 1)"


def _point_text(point: Point | None, frontier: list[Point]) -> str:
    """'25.9% → 1.164 [1.140, 1.189]': bytes read, then quality; bold where the point is on the frontier."""
    if point is None:
        return "–"
    interval = None if point.lo is None else [point.lo, point.hi]
    text = f"{point.share:.1%} → " + _with_interval(point.value, interval, "{:.3f}")
    return f"**{text}**" if point in frontier else text


def _equal_bytes_tables(doc: dict) -> list[str]:
    """Each method's share of dense bytes read per step and its quality there; the frontier's points in bold."""
    lines = []
    for curves in equal_bytes(doc["results"]):
        found = {n: {p.budget: p for p in ps} for n, ps in curves.points.items()}
        budgets = [b for b in doc["budgets"] if any(b["label"] in by for by in found.values())]
        rows = {n: [_point_text(cell(by, b["label"]), curves.frontier) for b in budgets]
                for n, by in found.items() if n != DENSE}
        lines += _table(f"Equal bytes: share of dense bytes read per step → {curves.metric} [95% interval], "
                        f"{stage_title(curves, doc['config'])}; bold: on the frontier", budgets, rows)
        lines += ["", "Frontier (no method reads no more bytes and does better), fewest bytes first: "
                  + ", ".join(f"{p.method} {p.budget} ({p.share:.1%}, {p.value:.3f})" for p in curves.frontier)]
    return lines


def _attention_tables(doc: dict) -> list[str]:
    attention, budgets = doc["results"]["attention"], doc["budgets"]
    lines = []
    for field_name, title, fmt in ATTENTION_TABLES:
        rows = {n: ["–" if (c := cell(by, b["label"])) is None else fmt.format(c[field_name]) for b in budgets]
                for n, by in attention.items()}
        lines += _table(title, budgets, rows)
    lines += ["", "## Ranking hit accuracy: top-50% of the policy's scores vs the true top-50% (layers >= 1)", "",
              "| policy | paper's definition: last row of each chunk | mean over the scored rows |", "|---|---|---|"]
    for name, by_budget in attention.items():
        first = next(iter(by_budget.values()))
        last, mean = first.get("ranking_hit_accuracy_last"), first.get("ranking_hit_accuracy")
        shown = ["–" if v is None else f"{v:.3f}" for v in (last, mean)]
        lines.append(f"| {name} | " + " | ".join(shown) + " |" if mean is not None else
                     f"| {name} | – (no per-token scores) | – |")
    return lines + _layer_recall_table(attention)


def best_rival(attention: dict, label: str) -> str | None:
    """The method other than the oracle and tokenbutler with the best recall at a budget, among those that skip
    as many rows as the oracle does (SnapKV outside its regime reads nearly everything)."""
    floor = attention.get(CEILING, {}).get(label, {}).get("achieved_sparsity", 0.0) - ROW_TOLERANCE
    rivals = [n for n in attention if n not in (CEILING, DENSE, LEARNED) and label in attention[n]
              and attention[n][label].get("achieved_sparsity", floor) >= floor]
    return max(rivals, key=lambda n: attention[n][label]["recall"]) if rivals else None


def _layer_recall_table(attention: dict) -> list[str]:
    """Recall per layer at small budgets (or the smallest ratio measured): the oracle (ceiling), TokenButler,
    and the best other method."""
    ratios = [label for label in attention.get(CEILING, {}) if label.endswith("%")]
    if not ratios:
        return []
    labels = [b for b in LAYER_RECALL_BUDGETS if b in ratios] or [min(ratios, key=lambda b: float(b[:-1]))]
    columns = []
    for label in labels:
        named = [CEILING, LEARNED, best_rival(attention, label)]
        columns += [(n, label) for n in named if n is not None and label in attention.get(n, {})]
    lines = ["", "## Attention recall by layer (kept ratio in brackets; the best other method at each budget)",
             "", "| layer | " + " | ".join(f"{n} ({b})" for n, b in columns) + " |", "|---|" + "---|" * len(columns)]
    for layer in range(len(attention[CEILING][labels[0]]["recall_by_layer"])):
        lines.append(f"| {layer} | " + " | ".join(f"{attention[n][b]['recall_by_layer'][layer]:.3f}"
                                                 for n, b in columns) + " |")
    lines.append("| all >= 1 | " + " | ".join(f"{attention[n][b]['recall']:.3f}" for n, b in columns) + " |")
    return lines


def task_stages(results: dict) -> list[str]:
    """The task stages of a run ('coref', 'coref/question-in-prompt', ...), in run order."""
    return [name for name, stage in results.items() if any("wrong_token_pct" in c for by in stage.values()
                                                             for c in by.values())]


def _task_tables(doc: dict, stage_name: str) -> list[str]:
    stage, budgets = doc["results"][stage_name], doc["budgets"]
    measured = [b for b in budgets if any(b["label"] in by for by in stage.values())] or budgets
    samples = next(iter(next(iter(stage.values())).values()))["samples"]
    rows = {n: [_with_interval(c["wrong_token_pct"], c.get("wrong_token_pct_ci"), "{:.1f}")
                if (c := cell(by, b["label"])) else "–" for b in measured] for n, by in stage.items()}
    return _table(f"Task {stage_name}: % wrong answer tokens (argmax) [95% interval over {samples} samples]",
                  measured, rows)


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


def _data_line(doc: dict) -> str:
    data, cfg = doc["data"], doc["config"]
    sources: dict[str, int] = {}
    for info in data.get("chunk_sources", []):
        sources[info["source"]] = sources.get(info["source"], 0) + 1
    spread = f" from {len(sources)} sources ({', '.join(f'{s} {n}' for s, n in sources.items())})" if sources else ""
    cap = f", at most {cfg['per_document']} per document" if "per_document" in cfg else ""
    return (f"{data['chunks']} {data.get('split', 'heldout')} chunks of {cfg['chunk_len']} tokens{spread}{cap}; "
            f"hit/recall on {cfg['metric_rows']} rows per chunk; seed {cfg['seed']}. s = nominal sparsity "
            f"(1 - kept ratio); 'N tok' = fixed token budget. Run time {doc['timing_s']['total']:.0f} s"
            f"{cell_origin(doc.get('cells'))}.{_missing_line(data)}")


def _missing_line(data: dict) -> str:
    missing = data.get("missing_sources")
    return f" Sources not installed on the measuring machine: {', '.join(missing)}." if missing else ""


def caption(doc: dict) -> str:
    """One line saying what a figure of this run measured: model and data."""
    data, cfg = doc["data"], doc["config"]
    split = {"heldout": "held-out", "outside": "outside-the-corpus"}.get(data.get("split", "heldout"), "held-out")
    return f"{doc['model']['name']}: {data['chunks']} {split} chunks of {cfg['chunk_len']:,} tokens"


def markdown_report(doc: dict) -> str:
    """The report's tables: equal bytes first, then one per measurement, policies as rows, budgets as columns."""
    results = doc["results"]
    lines = [f"# Evaluation: {doc['model']['name']}", "", _data_line(doc)]
    lines += ["", *(f"- skipped **{n}**: {reason}" for n, reason in doc["skipped"].items())] if doc["skipped"] else []
    lines += _equal_bytes_tables(doc)
    for stage_name in PROTOCOLS:
        lines += _perplexity_tables(doc, stage_name) if stage_name in results else []
    lines += _attention_tables(doc) if "attention" in results else []
    for stage_name in task_stages(results):
        lines += _task_tables(doc, stage_name)
    lines += _decode_table(results["decode"]) if "decode" in results else []
    return "\n".join(lines) + "\n"


@dataclass
class Series:
    """One method's line or bars, with its 95% interval where the run measured one; `labels` name each point
    (a budget) where x alone does not, `dashed` draws a reference line (a frontier)."""

    x: list
    y: list[float | None]
    lo: list[float | None] | None = None
    hi: list[float | None] | None = None
    labels: list[str] | None = None
    dashed: bool = False


@dataclass
class Panel:
    """One plot: a series per method; `kind` "line" (numeric x) or "bar" (categories)."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, Series]
    kind: str = "line"
    log_y: bool = False
    log_x: bool = False


def _ppl_series(stage: dict, budgets: list[dict], x: list) -> dict[str, Series]:
    series = {}
    for name in (n for n in stage if n != DENSE):
        pairs = [ppl_ratio(stage, name, b["label"]) for b in budgets]
        lo = [None if ci is None else ci[0] for _, ci in pairs]
        hi = [None if ci is None else ci[1] for _, ci in pairs]
        if any(v is not None for v, _ in pairs):
            series[name] = Series(x, [v for v, _ in pairs], lo, hi)
    return series


FRONTIER = "frontier (all methods)"


def bytes_panel(curves: Curves, cfg: dict) -> Panel:
    """Quality against the share of dense bytes read per step: each method's points, and the frontier."""
    def series(points: list[Point], dashed: bool = False) -> Series:
        intervals = not dashed and any(p.lo is not None for p in points)  # the frontier's points show theirs
        return Series([p.share for p in points], [p.value for p in points],
                      [p.lo for p in points] if intervals else None, [p.hi for p in points] if intervals else None,
                      labels=[f"{p.method} {p.budget}" for p in points], dashed=dashed)

    lines = {n: series(ps) for n, ps in curves.points.items()}
    lines[FRONTIER] = series(curves.frontier, dashed=True)
    perplexity = curves.stage in PROTOCOLS
    where = stage_title(curves, cfg).split(":")[0] if perplexity else "layers >= 1"
    return Panel(f"{curves.metric.capitalize()} at equal bytes, {where}",
                 "share of dense bytes read per step (log)", curves.metric + (" (log)" if perplexity else ""),
                 lines, log_y=perplexity, log_x=True)


def bytes_panels(doc: dict) -> list[Panel]:
    """The equal-bytes panels of a run: one per stage that measured quality and bytes."""
    return [bytes_panel(c, doc["config"]) for c in equal_bytes(doc["results"])]


def figure_panels(doc: dict) -> list[Panel]:
    """Quality against bytes read first (the way every method is judged), then perplexity / dense (log axis) and
    attention recall against nominal sparsity, the token budgets in a panel of their own, task misses per
    setting, and recall by layer at a small budget."""
    results, budgets = doc["results"], doc["budgets"]
    ratios = [b for b in budgets if b["ratio"] is not None]
    tokens = [b for b in budgets if b["ratio"] is None]
    xs = [100 * b["nominal_sparsity"] for b in ratios]
    panels = bytes_panels(doc)
    for stage_name in (s for s in PROTOCOLS if s in results):
        label = PROTOCOLS[stage_name].split(":")[0]
        if ratios:
            panels.append(Panel(f"Perplexity / dense, {label}", "nominal sparsity (%)", "perplexity / dense (log)",
                                _ppl_series(results[stage_name], ratios, xs), log_y=True))
        if tokens:
            panels.append(Panel(f"Perplexity / dense at fixed token budgets, {label}", "budget",
                                "perplexity / dense (log)",
                                _ppl_series(results[stage_name], tokens, [b["label"] for b in tokens]),
                                kind="bar", log_y=True))
    if "attention" in results and ratios:
        recall = {n: Series(xs, [None if (c := cell(by, b["label"])) is None else c["recall"] for b in ratios])
                  for n, by in results["attention"].items() if n != DENSE}
        panels.append(Panel("Attention recall (layers >= 1)", "nominal sparsity (%)", "recall", recall))
    stages = task_stages(results)
    if stages:
        given = doc["config"].get("task_budgets")
        label = Budget.parse(given[0]).label if given else budgets[0]["label"]
        bars = {}
        for name in results[stages[0]]:
            cells = [cell(results[s].get(name, {}), label) for s in stages]
            cis = [None if c is None else c.get("wrong_token_pct_ci") for c in cells]
            bars[name] = Series(stages, [None if c is None else c["wrong_token_pct"] for c in cells],
                                [None if ci is None else ci[0] for ci in cis],
                                [None if ci is None else ci[1] for ci in cis])
        panels.append(Panel(f"Retrieval tasks at {label}: wrong answer tokens", "task", "% wrong", bars, kind="bar"))
    if "attention" in results and ratios:
        attention = results["attention"]
        small = min(ratios, key=lambda b: abs(b["ratio"] - 0.1))["label"]
        named = [n for n in (CEILING, LEARNED, best_rival(attention, small)) if n and small in attention.get(n, {})]
        by_layer = {n: attention[n][small]["recall_by_layer"] for n in named}
        panels.append(Panel(f"Attention recall by layer at {small} kept", "layer", "recall",
                            {n: Series(list(range(len(v))), v) for n, v in by_layer.items()}))
    return [p for p in panels if p.series]
