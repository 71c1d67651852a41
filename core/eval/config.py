"""What an evaluation measures, and on how much data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.models import DEFAULT_MODEL

# Kept ratios (sparsity s = 1 - ratio) and token counts. The full grid costs ~3 h on 2 CPU cores; the
# default (s = 20, 40, 50, 60, 80 % and 64 tokens, one chunk, tasks at s = 50 %) fits in ~25 minutes.
FULL_GRID = ("90%", "80%", "70%", "60%", "50%", "40%", "30%", "20%", "10%", "32", "64", "128", "256")
DEFAULT_BUDGETS = ("80%", "60%", "50%", "40%", "20%", "64")
TASKS = ("coref", "entities")


@dataclass(frozen=True)
class EvalConfig:
    """What to measure and on how much data (defaults: the shipped run; `quick_config()` for tests)."""

    model: str = DEFAULT_MODEL
    policies: tuple[str, ...] = ()  # empty: every registered policy
    budgets: tuple[str, ...] = DEFAULT_BUDGETS  # sparsity s is written as the kept ratio 1 - s
    chunks: int = 1
    chunk_len: int = 1024
    dense_prefix: int = 64
    metric_rows: int = 32  # query rows per chunk scored for hit accuracy / recall (evenly spaced, last included)
    decode_chunks: int = 1  # chunks also run by real token-by-token decoding ...
    decode_len: int = 256  # ... cut to this many tokens
    decode_budgets: tuple[str, ...] = ("50%",)
    samples: int = 100
    tasks: tuple[str, ...] = TASKS
    task_budgets: tuple[str, ...] = ("50%",)  # empty: the same as `budgets`
    seed: int = 0
    out: str = "assets/results"
    cache_dir: str = "runs/eval_cache"
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> EvalConfig:
        """A tiny random model and a few short chunks and samples: the whole pipeline in seconds."""
        small = {"chunks": 2, "chunk_len": 96, "dense_prefix": 16, "metric_rows": 8, "decode_len": 40,
                 "samples": 3, "budgets": ("50%", "32"), "task_budgets": (), "quick": True}
        return cls(**{**small, **overrides})


def model_slug(name: str) -> str:
    """'embedded:smollm2-135m-instruct' -> 'smollm2-135m-instruct' (the file names of a run's results and cache)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.split(":")[-1].split("/")[-1]).strip("-") or "model"
