"""The Budgets tab: two lead figures (quality at equal bytes, speed against context), then the evaluation's own
figure panels, each policy in its palette colour, every legend in rows below its plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from app.results import RESULTS_DIR, load_shipped
from app.speed import cpu_panels, gpu_panels
from core.eval.report import FRONTIER, figure_panels
from core.palette import color

SHIPPED = sorted(RESULTS_DIR.glob("eval_*.json"))[0]


def _colors(fig) -> dict[str, str]:
    return {t.name: t.marker.color if t.type == "bar" else t.line.color for t in fig.data}


def test_no_results_says_how_to_make_them(tmp_path: Path) -> None:
    shipped = load_shipped(tmp_path)
    assert not shipped.lead and not shipped.figures and "No shipped evaluation" in shipped.markdown


def test_lead_figures_then_every_other_panel_in_the_palette_and_the_markdown_as_it_is(tmp_path: Path) -> None:
    shutil.copy(SHIPPED, tmp_path / SHIPPED.name)
    for name in ("decode_cpu.json", "gpu_decode.json"):
        shutil.copy(RESULTS_DIR / name, tmp_path / name)
    (tmp_path / "eval_small.md").write_text("| method | ppl |\n|---|---|\n| dense | 12.0 |")
    (tmp_path / "eval_broken.json").write_text("{not json")
    (tmp_path / "eval_other.json").write_text(json.dumps({"config": {}}))  # not the harness's document
    panels = figure_panels(json.loads(SHIPPED.read_text()))
    shipped = load_shipped(tmp_path)
    quality, speed = shipped.lead
    titles = [a.text for a in quality.layout.annotations]
    assert titles == ["Perplexity / dense at equal bytes, protocol 1", "Attention recall at equal bytes, layers >= 1"]
    assert quality.layout.xaxis.type == "log" and quality.layout.yaxis.type == "log"
    assert _colors(quality)[FRONTIER] == color(FRONTIER) and _colors(quality)["tokenbutler"] == color("tokenbutler")
    assert [t.name for t in quality.data if t.showlegend].count("tokenbutler") == 1  # one legend entry per method
    assert any("CPU, 1 thread" in a.text for a in speed.layout.annotations)
    assert any(a.text.startswith("GPU") for a in speed.layout.annotations)
    others = [p for p in panels if p.title not in titles]
    assert len(shipped.figures) == len(others) > 0 and "| dense | 12.0 |" in shipped.markdown
    for panel, fig in zip(others, shipped.figures, strict=True):
        assert panel.title in fig.layout.title.text
        assert _colors(fig) == {name: color(name) for name in panel.series}
        assert fig.layout.yaxis.type == ("log" if panel.log_y else None)
    for fig in [*shipped.lead, *shipped.figures]:
        assert fig.layout.legend.orientation == "h" and fig.layout.legend.yref == "container"
    tasks = next(f for f in shipped.figures if "Retrieval tasks" in f.layout.title.text)
    assert "coref/<br>question-in-prompt" in tasks.layout.xaxis.ticktext  # long task names break, not overlap


def test_speed_panels_show_each_method_over_dense_at_one_budget() -> None:
    rows = [{"method": m, "label": f"ours: {m}" + (f" @ {b}" if b else ""), "context": c, "threads": t,
             "vs_our_dense": v}
            for m, b, v in (("dense", "", 1.0), ("tokenbutler", "10%", 1.2), ("tokenbutler", "25%", 0.9),
                            ("transformers", "", 0.8))
            for c in (1024, 8000) for t in (1, 2)]
    one, two = cpu_panels({"meta": {"model": "embedded:tiny"}, "rows": rows})
    assert "1 thread" in one.title and "2 threads" in two.title and one.log_x
    assert set(one.series) == {"dense", "tokenbutler"} and one.series["tokenbutler"].y == [1.2, 1.2]
    spec = {"num_layers": 8, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128}
    gpu_rows = [{"context": 4096, "policy": "dense", "budget": "100%", "speedup": 1.0},
                {"context": 4096, "policy": "h2o", "budget": "2048 tok", "speedup": 0.5},
                {"context": 32768, "policy": "h2o", "budget": "2048 tok", "speedup": None},  # out of memory
                {"context": 4096, "policy": "quest", "budget": "256 tok", "speedup": 0.6}]
    (gpu,) = gpu_panels({"meta": {"device": "H200"}, "models": [{"spec": spec, "rows": gpu_rows}]})
    assert set(gpu.series) == {"dense", "h2o"} and gpu.series["h2o"].x == [4096]
