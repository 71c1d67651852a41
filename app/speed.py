"""Decode speed against context from the shipped benchmark files, as figure panels: every method's tokens/s
over dense's in the same run (benchmarks/bench_decode_cpu.py -> decode_cpu.json on CPU, per thread count;
benchmarks/bench_gpu_decode.py -> gpu_decode*.json on a GPU, where one was measured)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.eval.report import Panel, Series

log = logging.getLogger(__name__)

CPU_BUDGET = "10%"  # the sparsest budget the CPU benchmark runs
GPU_BUDGET = "2048 tok"
XLABEL, YLABEL = "context (tokens, log)", "decode speed ÷ dense's (same run)"


def _lines(rows: list[dict], speed: str) -> dict[str, Series]:
    """One line per method over the contexts its rows were measured at (rows: method, context and `speed`)."""
    lines: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.get(speed) is not None:
            lines.setdefault(row["method"], {})[row["context"]] = row[speed]
    return {m: Series(sorted(by), [by[c] for c in sorted(by)]) for m, by in lines.items()}


def cpu_panels(doc: dict, budget: str = CPU_BUDGET) -> list[Panel]:
    """Per thread count: our dense (1.0) and each method at `budget` (rows labelled 'ours: <method> @ <budget>')."""
    meta = doc["meta"]
    panels = []
    for threads in sorted({r["threads"] for r in doc["rows"]}):
        rows = [r for r in doc["rows"] if r["threads"] == threads and
                (r["method"] == "dense" or r["label"].endswith(f"@ {budget}"))]
        title = f"CPU, {threads} thread{'s' * (threads > 1)}, {meta['model'].split(':')[-1]}, {budget} kept"
        panels.append(Panel(title, XLABEL, YLABEL, _lines(rows, "vs_our_dense"), log_x=True))
    return panels


def gpu_panels(doc: dict, budget: str = GPU_BUDGET) -> list[Panel]:
    """Per model shape measured: dense (1.0) and each method at `budget` (a method that failed is left out)."""
    device = doc["meta"]["device"]
    panels = []
    for model in doc["models"]:
        spec = model["spec"]
        rows = [{"method": r["policy"], **r} for r in model["rows"] if r["policy"] == "dense" or r["budget"] == budget]
        shape = f"{spec['num_layers']} layers, {spec['num_heads']}/{spec['num_kv_heads']} heads × {spec['head_dim']}"
        if any(r["method"] != "dense" for r in rows):
            panels.append(Panel(f"GPU ({device}), {shape}, {budget}", XLABEL, YLABEL, _lines(rows, "speedup"),
                                log_x=True))
    return panels


def speed_panels(folder: Path) -> list[Panel]:
    """CPU panels from decode_cpu.json, then GPU panels from every gpu_decode*.json that holds decode rows."""
    panels = []
    for pattern, build in (("decode_cpu.json", cpu_panels), ("gpu_decode*.json", gpu_panels)):
        for path in sorted(folder.glob(pattern)):
            try:
                panels += build(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
                log.warning("%s skipped: not a readable decode benchmark (%s: %s)", path.name, type(err).__name__, err)
    return panels
