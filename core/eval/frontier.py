"""Every method judged at equal bytes read: quality against the share of a dense step's bytes a method reads,
and the frontier (lower envelope) of those points.

What a decode step reads is counted per token of context, in K/V-row equivalents: the K/V rows it gathers and
what it reads beside them (a key summary or label cache, page bounds, all of K for the oracle), each at the
precision it is stored in (`Policy.side_reads`, `core.keysummary.values_per_token`), with K and V at 16 bits.
A cell's `byte_sparsity` is one minus that share. The attention stage counts only rows, so its points take
the side reads per token of context from the perplexity cell of the same method and budget: a method reads
the same summary whichever query rows are scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.eval.config import DENSE

KV_BITS = 16  # K and V rows as a 16-bit cache holds them; side reads are counted in the same 16-bit values
METRICS = (  # stage, the cell's value, the value's name on a figure, lower is better
    ("perplexity", "ppl_vs_dense", "perplexity / dense", True),
    ("perplexity_long_prompt", "ppl_vs_dense", "perplexity / dense", True),
    ("attention", "recall", "attention recall", False),
)
BYTES_FROM = ("perplexity", "perplexity_long_prompt")  # where a recall point finds its side reads


@dataclass(frozen=True)
class Point:
    """One method at one budget: the share of dense bytes it reads per step, and its quality there."""

    method: str
    budget: str
    share: float
    value: float
    lo: float | None = None
    hi: float | None = None


@dataclass
class Curves:
    """One stage's points per method, and the frontier over all of them (fewest bytes first)."""

    stage: str
    metric: str
    lower_is_better: bool
    points: dict[str, list[Point]]
    frontier: list[Point]


def dense_bytes_per_token(model: dict) -> float:
    """Bytes a dense decode step reads per token of context: K and V of every layer and KV head."""
    return model["num_layers"] * model["num_kv_heads"] * 2 * model["head_dim"] * KV_BITS / 8


def byte_share(cell: dict) -> float:
    """A perplexity cell's bytes read per step per token of context, as a share of dense's:
    (K/V rows + side reads) / the rows a dense step reads."""
    return 1.0 - cell["byte_sparsity"]


def side_share(cell: dict) -> float:
    """What a perplexity cell reads beside its K/V rows, as a share of dense's bytes."""
    return cell["achieved_sparsity"] - cell["byte_sparsity"]


def frontier(points: list[Point], lower_is_better: bool = True) -> list[Point]:
    """The points no other point beats: none reads no more bytes and is better, none reads fewer and is as good.
    Fewest bytes first; of equal points the first given is kept."""
    sign = 1.0 if lower_is_better else -1.0
    kept: list[Point] = []
    for point in sorted(points, key=lambda p: (p.share, sign * p.value)):
        if not kept or sign * point.value < sign * kept[-1].value:
            kept.append(point)
    return kept


def _bytes_cells(results: dict) -> dict:
    """The perplexity stage that counts side reads, preferring protocol 1 (the attention stage's rows)."""
    return next((results[s] for s in BYTES_FROM if s in results), {})


def stage_points(results: dict, stage: str, field: str) -> dict[str, list[Point]]:
    """Every measured cell of a stage as a point, per method, fewest bytes first."""
    by_method = {}
    bytes_cells = _bytes_cells(results)
    for method, by_budget in results[stage].items():
        points = []
        for label, cell in by_budget.items():
            value = cell.get(field)
            if stage in BYTES_FROM:
                share = byte_share(cell) if "byte_sparsity" in cell else None
            else:
                source = bytes_cells.get(method, {}).get(label)
                share = None if source is None else 1.0 - cell["achieved_sparsity"] + side_share(source)
            if value is None or share is None:
                continue
            ci = cell.get(f"{field}_ci")
            points.append(Point(method, label, share, value, *(ci or (None, None))))
        if points:
            by_method[method] = sorted(points, key=lambda p: p.share)
    return by_method


def equal_bytes(results: dict) -> list[Curves]:
    """Quality against bytes read for every stage that measured a method besides dense, with its frontier."""
    curves = []
    for stage, field, metric, lower in METRICS:
        if stage not in results:
            continue
        points = stage_points(results, stage, field)
        if set(points) - {DENSE}:  # dense alone has nothing to compare
            curves.append(Curves(stage, metric, lower, points,
                                 frontier([p for ps in points.values() for p in ps], lower)))
    return curves


def equal_bytes_rows(results: dict, model: dict) -> dict[str, dict]:
    """The results document's rows: per stage, every point with its bytes per token of context, and the frontier."""
    per_token = dense_bytes_per_token(model)

    def row(point: Point) -> dict:
        return {**asdict(point), "bytes_per_token": point.share * per_token}

    return {c.stage: {"metric": c.metric, "lower_is_better": c.lower_is_better, "dense_bytes_per_token": per_token,
                      "points": [row(p) for ps in c.points.values() for p in ps],
                      "frontier": [row(p) for p in c.frontier]}
            for c in equal_bytes(results)}
