"""One colour per method name, for every figure: the evaluation report, the ShadowLLM report and the page.

Selection policies and ShadowLLM masks share the table, so "random" is the same orange everywhere.
Names not listed get a stable colour from the fallback cycle (by a hash of the name, not by order).
"""

from __future__ import annotations

import zlib

COLORS: dict[str, str] = {
    "dense": "#444444",
    "oracle": "#000000",
    "tokenbutler": "#2ca02c",
    "h2o": "#1f77b4",
    "snapkv": "#9467bd",
    "quest": "#d62728",
    "streaming": "#8c564b",
    "random": "#ff7f0e",
    "double-sparsity": "#17becf",
    "tova": "#bcbd22",
    "knorm": "#e377c2",
    "predicted": "#2ca02c",
    "plainact": "#444444",
    "fisher": "#9467bd",
    "magnitude": "#d62728",
    "contribution": "#8c564b",
    "static": "#1f77b4",
    "frontier (all methods)": "#7f7f7f",
}
FALLBACK = ("#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a")


def color(name: str) -> str:
    """The colour of a method (policy or ShadowLLM mask) in every figure."""
    return COLORS.get(name) or FALLBACK[zlib.crc32(name.encode()) % len(FALLBACK)]
