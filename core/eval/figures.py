"""The figures of an evaluation (plotly, and a PNG through kaleido or matplotlib) and the files of a run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from plotly.subplots import make_subplots

from core.eval.config import model_slug
from core.eval.report import Panel, figure_panels, markdown_report
from core.palette import color


def plotly_figure(panels: list[Panel], title: str):
    cols = 2
    fig = make_subplots(rows=math.ceil(len(panels) / cols), cols=cols, subplot_titles=[p.title for p in panels])
    for i, panel in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        for name, (x, y) in panel.series.items():
            fig.add_scatter(x=x, y=y, name=name, legendgroup=name, showlegend=i == 0, mode="lines+markers",
                            line={"color": color(name)}, row=row, col=col)
        fig.update_xaxes(title_text=panel.xlabel, row=row, col=col)
    fig.update_layout(title=title, height=330 * math.ceil(len(panels) / cols), width=1100, template="plotly_white")
    return fig


def write_png(fig, panels: list[Panel], path: Path) -> str:
    """PNG through kaleido (plotly's exporter) or matplotlib, whichever is installed; else say why not."""
    if importlib.util.find_spec("kaleido"):
        fig.write_image(str(path))
        return f"written with kaleido: {path.name}"
    if importlib.util.find_spec("matplotlib"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = math.ceil(len(panels) / 2)
        figure, axes = plt.subplots(rows, 2, figsize=(12, 3.6 * rows), squeeze=False)
        for axis, panel in zip(axes.flat, panels, strict=False):
            for name, (x, y) in panel.series.items():
                axis.plot(x, [math.nan if v is None else v for v in y], marker="o", label=name, color=color(name))
            axis.set_title(panel.title, fontsize=9)
            axis.set_xlabel(panel.xlabel)
        axes.flat[0].legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return f"written with matplotlib: {path.name}"
    return "skipped: neither kaleido nor matplotlib is installed (the HTML has the same figures)"


def write_outputs(doc: dict, out: Path) -> dict[str, Path]:
    """eval_<model>.json, .md and .html (+ .png when possible) under `out`; the PNG note goes in the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"eval_{model_slug(doc['model']['name'])}"
    panels = figure_panels(doc)
    fig = plotly_figure(panels, f"TokenButler Studio evaluation: {doc['model']['name']}")
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "html": stem.with_suffix(".html")}
    fig.write_html(str(paths["html"]), include_plotlyjs="cdn")
    doc["png"] = write_png(fig, panels, stem.with_suffix(".png"))
    paths["json"].write_text(json.dumps(doc, indent=1))
    paths["md"].write_text(markdown_report(doc))
    return paths
