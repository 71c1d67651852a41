"""The figures of an evaluation (plotly, and a PNG through kaleido or matplotlib) and the files of a run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.eval.config import results_stem
from core.eval.frontier import equal_bytes_rows
from core.eval.report import Panel, Series, figure_panels, markdown_report
from core.palette import color


def _error(series: Series) -> dict | None:
    """Plotly error bars from a series' interval (None where it has none)."""
    if series.lo is None or all(v is None for v in series.lo):
        return None
    plus = [None if (h is None or y is None) else h - y for y, h in zip(series.y, series.hi, strict=True)]
    minus = [None if (lo is None or y is None) else y - lo for y, lo in zip(series.y, series.lo, strict=True)]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1.2, "width": 3}


def _log_ticks(values: list[float]) -> list[float]:
    """1-2-5 steps spanning `values`: a log axis labelled in round numbers, not in bare leading digits."""
    low, high = min(values), max(values)
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    steps = [m * 10.0**k for k in decades for m in (1, 2, 5)]
    return [round(t, 12) for t in steps if low / 1.5 <= t <= high * 1.5]


def add_panel(fig, panel: Panel, row: int | None = None, col: int | None = None, legend: bool = True) -> None:
    """Draw one panel's series into `fig` (at a subplot when row/col are given): lines or grouped bars, each
    method in its palette colour, 95% intervals as error bars, the y axis logarithmic when the panel says so."""
    where = {} if row is None else {"row": row, "col": col}
    for name, series in panel.series.items():
        point = "%{customdata}" if series.labels else name
        x = "%{x}" if panel.kind == "bar" else "%{x:.3~g}"
        common = {"x": series.x, "y": series.y, "name": name, "legendgroup": name, "showlegend": legend,
                  "error_y": _error(series), "customdata": series.labels,
                  "hovertemplate": f"{point}<br>{panel.xlabel} {x}<br>{panel.ylabel} %{{y:.3f}}<extra></extra>"}
        if panel.kind == "bar":
            fig.add_trace(go.Bar(marker_color=color(name), **common), **where)
        else:
            line = {"color": color(name), "dash": "dash" if series.dashed else None}
            fig.add_trace(go.Scatter(mode="lines" if series.dashed else "lines+markers", line=line, **common),
                          **where)
    axis_type = "category" if panel.kind == "bar" else "log" if panel.log_x else None
    ticks = _log_ticks([x for s in panel.series.values() for x in s.x]) if panel.log_x else None
    fig.update_xaxes(title_text=panel.xlabel, type=axis_type, tickvals=ticks, **where)
    heights = [y for s in panel.series.values() for y in s.y if y is not None]
    fig.update_yaxes(title_text=panel.ylabel, type="log" if panel.log_y else None,
                     tickvals=_log_ticks(heights) if panel.log_y and heights else None, **where)


def plotly_figure(panels: list[Panel], title: str):
    cols = 2
    fig = make_subplots(rows=math.ceil(len(panels) / cols), cols=cols, subplot_titles=[p.title for p in panels])
    for i, panel in enumerate(panels):
        add_panel(fig, panel, i // cols + 1, i % cols + 1, legend=i == 0)
    fig.update_layout(title=title, height=360 * math.ceil(len(panels) / cols), width=1150, template="plotly_white",
                      barmode="group")
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
        figure, axes = plt.subplots(rows, 2, figsize=(12, 3.8 * rows), squeeze=False)
        for axis, panel in zip(axes.flat, panels, strict=False):
            _draw_matplotlib(axis, panel)
        axes.flat[0].legend(fontsize=7)
        for axis in list(axes.flat)[len(panels):]:
            axis.set_visible(False)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return f"written with matplotlib: {path.name}"
    return "skipped: neither kaleido nor matplotlib is installed (the HTML has the same figures)"


def _draw_matplotlib(axis, panel: Panel) -> None:
    """The same panel as `add_panel`, for the PNG."""
    nan = lambda values: [math.nan if v is None else v for v in values]  # noqa: E731
    width = 0.8 / max(1, len(panel.series))
    for i, (name, s) in enumerate(panel.series.items()):
        y = nan(s.y)
        error = None
        if s.lo is not None and any(v is not None for v in s.lo):
            error = [[max(0.0, a - b) for a, b in zip(y, nan(s.lo), strict=True)],
                     [max(0.0, b - a) for a, b in zip(y, nan(s.hi), strict=True)]]
        if panel.kind == "bar":
            xs = [j + (i - (len(panel.series) - 1) / 2) * width for j in range(len(s.x))]
            axis.bar(xs, y, width, yerr=error, label=name, color=color(name), capsize=2)
            axis.set_xticks(range(len(s.x)), s.x, fontsize=7, rotation=15)
        else:
            axis.errorbar(s.x, y, yerr=error, marker=None if s.dashed else "o", linestyle="--" if s.dashed else "-",
                          label=name, color=color(name), capsize=2)
    if panel.log_y:
        axis.set_yscale("log")
    if panel.log_x:
        axis.set_xscale("log")
    axis.set_title(panel.title, fontsize=9)
    axis.set_xlabel(panel.xlabel)
    axis.set_ylabel(panel.ylabel, fontsize=8)


def write_outputs(doc: dict, out: Path) -> dict[str, Path]:
    """eval_<model>.json, .md and .html (+ .png when possible) under `out`; the PNG note and the equal-bytes rows
    (`core.eval.frontier`) go in the JSON. A run with nothing to compare (dense alone) has no figure: JSON and
    markdown only."""
    out.mkdir(parents=True, exist_ok=True)
    doc["equal_bytes"] = equal_bytes_rows(doc["results"], doc["model"])
    stem = out / results_stem(doc["model"]["name"], doc["config"].get("tag", ""))
    panels = figure_panels(doc)
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    if panels:
        fig = plotly_figure(panels, f"TokenButler Studio evaluation: {doc['model']['name']}")
        paths["html"] = stem.with_suffix(".html")
        fig.write_html(str(paths["html"]), include_plotlyjs="cdn")
        doc["png"] = write_png(fig, panels, stem.with_suffix(".png"))
    else:
        doc["png"] = "skipped: nothing to draw (a run of the dense reference alone has no comparison)"
    paths["json"].write_text(json.dumps(doc, indent=1))
    paths["md"].write_text(markdown_report(doc))
    return paths
