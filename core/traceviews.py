"""Decode traces reshaped into the arrays a page draws: per-step head x token views, binned columns,
a head's step x token triangle, and how often each prompt token was kept.

Kept here rather than in the app so the page only draws, and so these reshapes are tested without
gradio. Everything returns numpy (float32 or small ints); nothing here runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.trace import LayerTrace, StepTrace

Pool = Literal["max", "mean"]
NEITHER, KEPT_ONLY, HIT, MISSED = 0, 1, 2, 3
OVERLAP_LABELS = {NEITHER: "neither", KEPT_ONLY: "kept, not in true top-k", HIT: "kept and in true top-k",
                  MISSED: "in true top-k, not kept"}
# Codes grow with what matters: max-pooling a bin shows a miss over a hit over a wasted read.


@dataclass
class StepView:
    """One layer at one decode step, per query head: true attention, policy scores, kept vs true top-k."""

    true_probs: np.ndarray  # [Hq, T] float32
    scores: np.ndarray | None  # [Hq, T] float32 per-head rank percentile (1 = top); None without per-head scores
    kept: np.ndarray | None  # [Hq, T] bool, the rows its KV group read; None for a dense layer
    overlap: np.ndarray | None  # [Hq, T] int8 codes NEITHER / KEPT_ONLY / HIT / MISSED
    keep: int  # tokens each KV head read (T when dense)


def kept_mask(layer: LayerTrace, group: int, length: int) -> np.ndarray | None:
    """[Hq, length] bool: the tokens each query head could read (its KV group's kept rows)."""
    if layer.kept is None:
        return None
    kept = layer.kept.numpy()
    mask = np.zeros((kept.shape[0], length), dtype=bool)
    np.put_along_axis(mask, kept.astype(np.int64), True, axis=1)
    return np.repeat(mask, group, axis=0)


def true_topk(true_probs: np.ndarray, keep: int) -> np.ndarray:
    """[Hq, T] bool: each head's `keep` most attended tokens (what an oracle with this budget keeps)."""
    order = np.argsort(-true_probs, axis=1, kind="stable")[:, :keep]
    mask = np.zeros_like(true_probs, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def rank_rows(scores: np.ndarray) -> np.ndarray:
    """Each row's scores as rank percentiles in [0, 1] (1 = the method's top token).

    Methods' scores share no unit (probabilities, logits, bounds, hashes), and top-k selection only
    sees their order, so the order is what the page draws.
    """
    length = scores.shape[1]
    order = np.argsort(np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(length)[None, :].repeat(scores.shape[0], axis=0), axis=1)
    return (ranks / max(length - 1, 1)).astype(np.float32)


def step_view(trace: StepTrace, layer: int, group: int) -> StepView:
    """Everything Inspect draws for one (step, layer)."""
    entry = trace.layers[layer]
    true = entry.true_probs.float().numpy()
    length = true.shape[1]
    kept = kept_mask(entry, group, length)
    keep = length if entry.kept is None else int(entry.kept.shape[1])
    overlap = None
    if kept is not None:
        top = true_topk(true, keep)
        overlap = np.full(true.shape, NEITHER, dtype=np.int8)
        overlap[kept & ~top] = KEPT_ONLY
        overlap[kept & top] = HIT
        overlap[~kept & top] = MISSED
    scores = None if entry.scores is None else rank_rows(entry.scores.float().numpy())
    return StepView(true_probs=true, scores=scores, kept=kept, overlap=overlap, keep=keep)


def bin_width(length: int, max_cols: int) -> int:
    """Tokens per column so that `length` tokens fit in at most `max_cols` columns."""
    return max(1, math.ceil(length / max_cols))


def bin_columns(matrix: np.ndarray, width: int, how: Pool = "max") -> np.ndarray:
    """Pool the last axis in bins of `width` tokens, ignoring NaN cells (the future of a step).

    "max" keeps peaks visible (attention, ranks, overlap codes); "mean" turns a kept mask into the
    share of the bin that was kept, where max would paint a bin kept if any one token was.
    """
    if width == 1:
        return matrix
    rows, length = matrix.shape
    cols = math.ceil(length / width)
    padded = np.full((rows, cols * width), np.nan, dtype=np.float32)
    padded[:, :length] = matrix
    blocks = padded.reshape(rows, cols, width)
    empty = np.isnan(blocks).all(axis=2)
    reduce = np.nanmax if how == "max" else np.nanmean
    pooled = reduce(np.where(empty[..., None], 0.0, blocks), axis=2)
    return np.where(empty, np.nan, pooled).astype(np.float32)


def log_probs(probs: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """log10 of attention probabilities clipped at `floor`: attention is heavy-tailed (sinks dominate)."""
    return np.log10(np.clip(probs, floor, 1.0)).astype(np.float32)


@dataclass
class Triangle:
    """One query head across every traced step: [steps, T], NaN beyond each step's past."""

    true_probs: np.ndarray
    prediction: np.ndarray | None  # score rank percentiles, or the kept mask (1/0); None for a dense layer
    kind: Literal["rank", "kept"] | None


def head_triangle(traces: Sequence[StepTrace], layer: int, head: int, group: int) -> Triangle:
    """True attention of one query head at every traced step, beside what the policy predicted."""
    length = traces[-1].position + 1
    true = np.full((len(traces), length), np.nan, dtype=np.float32)
    pred = np.full_like(true, np.nan)
    kind = None
    for row, trace in enumerate(traces):
        entry = trace.layers[layer]
        past = entry.true_probs.shape[1]
        true[row, :past] = entry.true_probs[head].float().numpy()
        if entry.scores is not None:
            pred[row, :past] = rank_rows(entry.scores[head : head + 1].float().numpy())[0]
            kind = "rank"
        elif entry.kept is not None:
            pred[row, :past] = kept_mask(entry, group, past)[head]
            kind = kind or "kept"
    return Triangle(true, pred if kind else None, kind)


def keep_frequency(traces: Sequence[StepTrace], length: int) -> np.ndarray | None:
    """[length] share of (step, sparse layer, KV head) reads that kept each of the first `length` tokens.

    None when no layer was sparse (dense decoding keeps everything).
    """
    counts = np.zeros(length, dtype=np.float64)
    reads = 0
    for trace in traces:
        for entry in trace.layers.values():
            if entry.kept is None:
                continue
            kept = entry.kept.numpy().ravel()
            np.add.at(counts, kept[kept < length], 1)
            reads += entry.kept.shape[0]
    return (counts / reads).astype(np.float32) if reads else None


def first_difference(left: Sequence[int], right: Sequence[int]) -> int | None:
    """Index of the first token where two generations differ; None when they are identical."""
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    return None if len(left) == len(right) else min(len(left), len(right))


def trace_nbytes(trace: StepTrace) -> int:
    """Memory a step's trace holds, so a session can cap what it keeps."""
    total = 0
    for entry in trace.layers.values():
        for tensor in (entry.true_probs, entry.scores, entry.kept):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total
