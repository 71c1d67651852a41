"""What the app benchmarks and the browser test share: an app to talk to (in-process or at --url), the
browser to drive it with, percentiles, the JSON file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "results"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, driven by Playwright (never a browser download)
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def app_url(url: str | None) -> Iterator[str]:
    """The given URL, or the page launched in this process on a free loopback port for the duration."""
    if url:
        yield url
        return
    from app.serve import start_local

    demo, local = start_local()
    try:
        yield local
    finally:
        demo.close()


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    array = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "max": float(array.max())}


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(name: str, payload: dict, out: Path | None = None) -> Path:
    path = out or RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
