"""What an evaluation measures, and on how much data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.models import DEFAULT_MODEL

# Kept ratios (sparsity s = 1 - ratio) and token counts. The default grid (s = 50, 75, 90, 95 % and 64 and
# 256 tokens, 16 chunks, both protocols, tasks at s = 50 % in both settings) takes ~3 h on 2 CPU cores.
CEILING, DENSE, LEARNED = "oracle", "dense", "tokenbutler"  # the roles a gap closure compares
FULL_GRID = ("90%", "75%", "50%", "25%", "10%", "5%", "32", "64", "128", "256")
DEFAULT_BUDGETS = ("50%", "25%", "10%", "5%", "64", "256")
TASKS = ("coref", "entities")
TASK_PROMPTS = ("question-decoded", "question-in-prompt")


@dataclass(frozen=True)
class EvalConfig:
    """What to measure and on how much data (defaults: the shipped run; `quick_config()` for tests)."""

    model: str = DEFAULT_MODEL
    policies: tuple[str, ...] = ()  # empty: every registered policy
    budgets: tuple[str, ...] = DEFAULT_BUDGETS  # sparsity s is written as the kept ratio 1 - s
    split: str = "heldout"  # or "outside": text from outside every training source
    chunks: int = 16
    per_document: int = 2  # at most this many chunks touch one document
    chunk_len: int = 1024
    dense_prefix: int = 64  # protocol 1: a short prompt, then every later token scored under the budget
    long_prompt: int = 768  # protocol 2: a long prompt (prompt compression's setting), then the rest; 0: off
    short_prompt: bool = True  # run protocol 1 (a long-context grid may run protocol 2 alone)
    metric_rows: int = 32  # query rows per chunk scored for hit accuracy / recall (evenly spaced, last included)
    decode_chunks: int = 1  # chunks also run by real token-by-token decoding ...
    decode_len: int = 256  # ... cut to this many tokens
    decode_budgets: tuple[str, ...] = ("50%",)
    samples: int = 100
    tasks: tuple[str, ...] = TASKS
    task_prompts: tuple[str, ...] = TASK_PROMPTS  # where the question sits: decoded, or in the dense prompt
    task_filler_tokens: tuple[int, ...] = (0,)  # 0: the tasks' few paragraphs; else about that many tokens
    task_budgets: tuple[str, ...] = ("50%",)  # empty: the same as `budgets`
    bootstrap: int = 2000  # resamples of the 95% intervals
    seed: int = 0
    tag: str = ""  # names the results files (eval_<model>_<tag>.*), e.g. a 4k-context run
    out: str = "assets/results"
    cache_dir: str = "assets/eval_cache"  # committed, so a run resumes across sessions and machines
    cached_only: bool = False  # write the report from finished cells; a missing cell is an error, never measured
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> EvalConfig:
        """A tiny random model and a few short chunks and samples: the whole pipeline in seconds."""
        small = {"chunks": 2, "chunk_len": 96, "dense_prefix": 16, "long_prompt": 64, "metric_rows": 8,
                 "decode_len": 40, "samples": 2, "budgets": ("50%", "32"), "task_budgets": ("50%",),
                 "bootstrap": 200, "quick": True, "cache_dir": "runs/eval_cache"}
        return cls(**{**small, **overrides})


def results_stem(model_name: str, tag: str = "") -> str:
    """eval_<model> or eval_<model>_<tag>: the file names of a run's results."""
    return f"eval_{model_slug(model_name)}" + (f"_{model_slug(tag)}" if tag else "")


def model_slug(name: str) -> str:
    """'embedded:smollm2-135m-instruct' -> 'smollm2-135m-instruct' (the file names of a run's results and cache)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.split(":")[-1].split("/")[-1]).strip("-") or "model"
