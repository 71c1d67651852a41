"""Trace reshapes the page draws from: overlap codes, binning, ranks, keep shares, triangles."""

from __future__ import annotations

import numpy as np
import torch

from core.trace import LayerTrace, StepTrace
from core.traceviews import (
    HIT,
    KEPT_ONLY,
    MISSED,
    NEITHER,
    bin_columns,
    first_difference,
    head_triangle,
    keep_frequency,
    rank_rows,
    step_view,
    trace_nbytes,
)


def layer(true: list[list[float]], kept: list[list[int]] | None, scores: list[list[float]] | None = None) -> LayerTrace:
    return LayerTrace(
        true_probs=torch.tensor(true).half(),
        scores=None if scores is None else torch.tensor(scores).half(),
        kept=None if kept is None else torch.tensor(kept, dtype=torch.int32),
    )


def test_overlap_codes_compare_kept_rows_with_true_top_k() -> None:
    # two query heads sharing one KV head (group 2); the KV head kept tokens 0 and 3
    trace = StepTrace(position=3, layers={1: layer([[0.1, 0.6, 0.0, 0.3], [0.5, 0.0, 0.1, 0.4]], [[0, 3]])})
    view = step_view(trace, 1, group=2)
    assert view.keep == 2
    assert view.overlap[0].tolist() == [KEPT_ONLY, MISSED, NEITHER, HIT]
    assert view.overlap[1].tolist() == [HIT, NEITHER, NEITHER, HIT]
    assert view.kept[1].tolist() == [True, False, False, True]


def test_dense_layer_has_no_overlap_and_reads_everything() -> None:
    view = step_view(StepTrace(position=2, layers={0: layer([[0.2, 0.3, 0.5]], None)}), 0, group=1)
    assert view.overlap is None and view.kept is None and view.scores is None and view.keep == 3


def test_bin_columns_max_pools_and_skips_missing_cells() -> None:
    matrix = np.array([[1, 5, 2, np.nan, np.nan], [0, 0, 3, 4, 1]], dtype=np.float32)
    assert bin_columns(matrix, 1) is matrix
    pooled = bin_columns(matrix, 2)
    assert pooled[1].tolist() == [0, 4, 1]
    assert pooled[0, :2].tolist() == [5, 2] and np.isnan(pooled[0, 2])


def test_mean_pooling_gives_the_share_kept() -> None:
    kept = np.array([[1, 0, 0, 0, 1, 1]], dtype=np.float32)
    assert bin_columns(kept, 4, "mean").tolist() == [[0.25, 1.0]]


def test_overlap_bins_show_a_miss_over_a_hit() -> None:
    codes = np.array([[HIT, MISSED, KEPT_ONLY, NEITHER]], dtype=np.float32)
    assert bin_columns(codes, 2).tolist() == [[MISSED, KEPT_ONLY]]


def test_rank_rows_puts_each_heads_top_token_at_one() -> None:
    ranks = rank_rows(np.array([[0.1, 3.0, -np.inf, 2.0], [5.0, 1.0, 2.0, 3.0]], dtype=np.float32))
    assert np.allclose(ranks[0], [1 / 3, 1.0, 0.0, 2 / 3])
    assert ranks[1].argmax() == 0


def test_keep_frequency_counts_sparse_reads_only() -> None:
    steps = [
        StepTrace(position=4, layers={0: layer([[0.2] * 5], None), 1: layer([[0.2] * 5], [[0, 1], [0, 4]])}),
        StepTrace(position=5, layers={1: layer([[0.2] * 6], [[0, 5], [2, 5]])}),
    ]
    share = keep_frequency(steps, 3)
    assert share.tolist() == [0.75, 0.25, 0.25]
    assert keep_frequency([], 3) is None


def test_head_triangle_rows_grow_with_the_past() -> None:
    steps = [
        StepTrace(position=2, layers={1: layer([[0.2, 0.3, 0.5]] * 2, [[1, 2]])}),
        StepTrace(position=3, layers={1: layer([[0.1, 0.2, 0.3, 0.4]] * 2, [[0, 3]])}),
    ]
    triangle = head_triangle(steps, 1, head=1, group=2)
    true, pred = triangle.true_probs, triangle.prediction
    assert triangle.kind == "kept" and true.shape == (2, 4)
    assert np.isnan(true[0, 3]) and true[1, 3] == np.float16(0.4)
    assert pred[0, :3].tolist() == [0, 1, 1] and pred[1].tolist() == [1, 0, 0, 1]


def test_first_difference_and_trace_size() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    trace = StepTrace(position=3, layers={1: layer([[0.1] * 4] * 2, [[0, 3]])})
    assert trace_nbytes(trace) == 2 * 4 * 2 + 2 * 4
