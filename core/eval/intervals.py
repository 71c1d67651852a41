"""Bootstrap 95% intervals over the units of a measurement (chunks of text, task samples).

Perplexity relative to dense is a paired ratio: each resample draws chunks with replacement and takes
both the method's and dense's summed NLL over the same draw, so the chunk-to-chunk spread of text
difficulty (which both share) does not widen the interval of their ratio.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def resample_indices(units: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, units] indices drawn with replacement (seeded: the same draw for every method)."""
    return np.random.default_rng(seed).integers(0, units, size=(resamples, units))


def _bounds(values: np.ndarray) -> list[float]:
    tail = 100 * (1 - LEVEL) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def ratio_interval(nll: list[float], ref_nll: list[float], tokens: list[int], draws: np.ndarray) -> list[float]:
    """95% interval of exp((sum nll - sum ref_nll) / sum tokens): perplexity over the reference's."""
    nll, ref, tok = np.asarray(nll, float), np.asarray(ref_nll, float), np.asarray(tokens, float)
    return _bounds(np.exp((nll[draws].sum(1) - ref[draws].sum(1)) / tok[draws].sum(1)))


def exp_mean_interval(values: list[float], draws: np.ndarray) -> list[float]:
    """95% interval of exp(mean of values): the perplexity of units that count equally (equal-length windows)."""
    return _bounds(np.exp(np.asarray(values, float)[draws].mean(1)))


def share_interval(hits: list[int], totals: list[int], draws: np.ndarray) -> list[float]:
    """95% interval of 100 * sum hits / sum totals (e.g. the % of wrong answer tokens)."""
    hits_a, totals_a = np.asarray(hits, float), np.asarray(totals, float)
    return _bounds(100.0 * hits_a[draws].sum(1) / totals_a[draws].sum(1))


def closure_interval(learned: list[float], ceiling: list[float], rival: list[float], tokens: list[int],
                     draws: np.ndarray) -> list[float]:
    """95% interval of the gap closed, 1 - (ppl_learned - ppl_ceiling) / (ppl_rival - ppl_ceiling), from the
    three methods' per-chunk NLL on the same chunks (paired: one draw of chunks for all three). NaN when more
    than 2.5% of the draws have no gap (the rival no worse than the ceiling): the bounds would not hold."""
    tok = np.asarray(tokens, float)[draws].sum(1)
    ppl = [np.exp(np.asarray(nll, float)[draws].sum(1) / tok) for nll in (learned, ceiling, rival)]
    gap = ppl[2] - ppl[1]
    closed = 1.0 - (ppl[0] - ppl[1]) / np.where(gap > 0, gap, np.nan)
    usable = np.isfinite(closed)
    if usable.mean() < LEVEL + (1 - LEVEL) / 2:  # the rival ties the ceiling too often: no gap to speak of
        return [float("nan")] * 2
    return _bounds(closed[usable])
