"""The Budgets tab plots the evaluation's own figure panels, each policy in its palette colour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from app.results import RESULTS_DIR, load_shipped
from core.eval.report import figure_panels
from core.palette import color

SHIPPED = sorted(RESULTS_DIR.glob("eval_*.json"))[0]


def test_no_results_says_how_to_make_them(tmp_path: Path) -> None:
    shipped = load_shipped(tmp_path)
    assert not shipped.figures and "No shipped evaluation" in shipped.markdown


def test_a_figure_per_panel_in_the_palette_and_the_markdown_as_it_is(tmp_path: Path) -> None:
    shutil.copy(SHIPPED, tmp_path / SHIPPED.name)
    (tmp_path / "eval_small.md").write_text("| method | ppl |\n|---|---|\n| dense | 12.0 |")
    (tmp_path / "eval_broken.json").write_text("{not json")
    (tmp_path / "eval_other.json").write_text(json.dumps({"config": {}}))  # not the harness's document
    panels = figure_panels(json.loads(SHIPPED.read_text()))
    shipped = load_shipped(tmp_path)
    assert len(shipped.figures) == len(panels) > 0 and "| dense | 12.0 |" in shipped.markdown
    for panel, fig in zip(panels, shipped.figures, strict=True):
        assert panel.title in fig.layout.title.text
        drawn = {t.name: t.marker.color if t.type == "bar" else t.line.color for t in fig.data}
        assert drawn == {name: color(name) for name in panel.series}
        assert fig.layout.yaxis.type == ("log" if panel.log_y else None)
