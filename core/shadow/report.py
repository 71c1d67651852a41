"""The evaluation's outputs: JSON, the markdown tables the README quotes, and a plotly HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.eval.cache import cell_origin
from core.palette import color
from core.shadow.predictor import target_words

METHOD_NOTES = {
    "predicted": "ShadowLLM predictor, from layer 0's output over the prompt ({pool} pooling)",
    "plainact": "true plainact of the prompt (oracle: forward + backward), per-layer normalized",
    "plainact-raw": "true plainact in loss units, not normalized (comparable across layers as it is)",
    "plainact-iterative": "plainact recomputed in 6 rounds, each under the mask of the removals so far",
    "direct": "the prompt's loss rise when each head (block of 64 neurons) is removed alone: brute force",
    "fisher": "true fisher of the prompt (oracle: forward + backward)",
    "magnitude": "activation magnitude of the prompt (DejaVu-like oracle)",
    "contribution": "norm of what each unit writes to the residual stream over the prompt (oracle, forward only)",
    "static": "one mask for every input: the training prompts' mean normalized {criterion}",
    "random": "random scores",
}
TITLES = {"heads": "Perplexity vs head sparsity (neurons dense)",
          "neurons": "Perplexity vs neuron sparsity (heads dense)"}


def _pct(key: str) -> str:
    return f"{float(key):.0%}"


def _ppl_table(by_method: dict[str, dict[str, float]], intervals: dict[str, dict[str, list[float]]]) -> list[str]:
    """Perplexity per method and sparsity, with its 95% interval over windows where the run has one."""
    levels = list(next(iter(by_method.values())))
    lines = ["| method | " + " | ".join(_pct(k) for k in levels) + " |", "|---|" + "---:|" * len(levels)]
    for method, values in by_method.items():
        bounds = intervals.get(method, {})
        cells = [f"{values[k]:.2f}" + (f" [{bounds[k][0]:.1f}, {bounds[k][1]:.1f}]" if k in bounds else "")
                 for k in levels]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _scope_table(ppl: dict) -> list[str]:
    rows = [f"| {m} | {ppl['global']['heads'][m][k]:.2f} | {v:.2f} |" for m, by in ppl["layer"].get("heads", {}).items()
            for k, v in by.items()]
    return ["| method | global ranking | per-layer ranking |", "|---|---:|---:|", *rows] if rows else []


def _rank_table(agreement: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| method | heads, within layers | heads, overall | neurons, within layers | neurons, overall |",
             "|---|---:|---:|---:|---:|"]
    keys = ("heads_within_layer", "heads_overall", "neurons_within_layer", "neurons_overall")
    lines += [f"| {m} | " + " | ".join(f"{a[k]:.3f}" for k in keys) + " |" for m, a in agreement.items()]
    return lines


def markdown_report(doc: dict) -> str:
    """Tables: perplexity per method and sparsity (heads, neurons), global vs per-layer ranking, Spearman's rho."""
    cfg, proto, pred, ppl = doc["config"], doc["protocol"], doc["predictor"], doc["perplexity"]
    lines = [
        f"# ShadowLLM evaluation: {doc['model']['name']}",
        "",
        f"{proto['windows']} held-out windows of {cfg['window_len']} tokens. Every method ranks heads and neurons from "
        f"the first {cfg['prompt_len']} tokens only; the mask (global ranking of per-layer normalized scores, layer 0 "
        f"dense) applies to the whole window; perplexity counts the last {proto['counted_tokens_per_window']} tokens. "
        f"Dense perplexity **{ppl['dense']:.2f}**. Predictor: {pred['parameters']:,} parameters "
        f"({pred['parameter_share']:.2%} of the base model), trained on "
        f"{target_words(pred['criterion'], pred.get('continuation', 0))}. "
        f"Run time {doc['timing_s']:.0f} s{cell_origin(doc.get('cells'))}.",
        "",
        *(f"- **{m}**: {METHOD_NOTES[m].format(**pred)}" for m in cfg["methods"]),
    ]
    for unit in ("heads", "neurons"):
        intervals = ppl.get("interval", {}).get("global", {}).get(unit, {})
        lines += ["", f"## {TITLES[unit]} [95% interval over windows]", "", *_ppl_table(ppl["global"][unit], intervals)]
    scope = _scope_table(ppl)
    lines += ["", "## Global vs per-layer ranking, 50% head sparsity", "", *scope] if scope else []
    for reference, by_unit in ppl.get("paired_over", {}).items():
        for unit, rivals in by_unit.items():
            lines += ["", f"## The {reference} mask's perplexity over each other mask's, {unit} (paired over "
                      f"windows, [95% interval]; below 1: {reference} prunes better)", "", *_ratio_table(rivals)]
    lines += ["", "## Spearman's rho against the prompt's true plainact (layers >= 1)", "",
              *_rank_table(doc["rank_correlation"])]
    return "\n".join(lines) + "\n"


def _ratio_table(rivals: dict[str, dict[str, list[float]]]) -> list[str]:
    keys = list(next(iter(rivals.values())))
    lines = ["| against | " + " | ".join(_pct(k) for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    for method, by in rivals.items():
        lines.append(f"| {method} | " + " | ".join(f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in
                                                   (by[k] for k in keys)) + " |")
    return lines


def figure(doc: dict) -> go.Figure:
    """Perplexity against sparsity (heads, neurons) and rank correlation by layer (heads, neurons)."""
    ppl, by_layer = doc["perplexity"], doc["rank_correlation_by_layer"]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[TITLES["heads"], TITLES["neurons"],
                                                        "Spearman's rho vs true plainact by layer: heads",
                                                        "Spearman's rho vs true plainact by layer: neurons"])
    for col, unit in enumerate(("heads", "neurons"), start=1):
        for method, levels in ppl["global"][unit].items():
            xs = [0.0] + [100 * float(k) for k in levels]
            fig.add_scatter(x=xs, y=[ppl["dense"], *levels.values()], name=method, legendgroup=method,
                            showlegend=col == 1, mode="lines+markers", line={"color": color(method)}, row=1, col=col)
        fig.update_xaxes(title_text="sparsity (%) of layers >= 1", row=1, col=col)
        fig.update_yaxes(title_text="perplexity", type="log", row=1, col=col)
        for method, units in by_layer.items():
            layers = list(range(doc["protocol"]["first_sparse_layer"], doc["model"]["num_layers"]))
            fig.add_scatter(x=layers, y=units[unit], name=method, legendgroup=method, showlegend=False,
                            mode="lines+markers", line={"color": color(method)}, row=2, col=col)
        fig.update_xaxes(title_text="layer", row=2, col=col)
    fig.update_layout(title=f"ShadowLLM on {doc['model']['name']}", template="plotly_white", height=760, width=1100)
    return fig


def write_results(doc: dict, out: str | Path) -> dict[str, Path]:
    """shadow_eval.json, .md and .html under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"shadow_eval.{kind}" for kind in ("json", "md", "html")}
    paths["json"].write_text(json.dumps(doc, indent=1))
    paths["md"].write_text(markdown_report(doc))
    figure(doc).write_html(str(paths["html"]), include_plotlyjs="cdn")
    return paths
