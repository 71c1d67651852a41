"""Small-budget comparison of the two training losses (and predictor sizes) on held-out text.

Trains one predictor per variant for `--steps` steps on the same training chunks, then reports the
held-out hit accuracy (last query row and sampled rows) and the held-out KL. Writes
assets/results/predictor_ablation.json.

    python benchmarks/compare_predictor_losses.py --steps 150 --variants kl mse
    python benchmarks/compare_predictor_losses.py --steps 150 --variants kl kl-i160 kl-g2-i96 \
        --out assets/results/predictor_capacity.json
    python benchmarks/compare_predictor_losses.py --steps 150 --variants v4-kl v4-rank v4-bce v4-kl-top \
        --out assets/results/predictor_losses_v4.json      # the losses of the selection decision
    python benchmarks/compare_predictor_losses.py --variants --references 32x8 16x8 32x4 16x4 8x4 8x8 \
        --out assets/results/predictor_ds_reference.json    # Double Sparsity on the same chunks, no training
    python benchmarks/compare_predictor_losses.py --steps 150 --variants v4-rank-own v4-kl-own v4-rank-g1 \
        --out assets/results/predictor_queries_v4.json     # the layer's own query, one producer per layer
    python benchmarks/compare_predictor_losses.py --steps 150 --variants v4-rank-learned b16-rank-learned \
        b8-rank-learned b4-rank-learned --out assets/results/predictor_keys_v4.json   # learned key codes
    python benchmarks/compare_predictor_losses.py --steps 150 --variants v4-rank-own b16-rank-own-learned \
        b8-rank-own-learned v4-rank-g1 --out assets/results/predictor_queries_v4.json  # ... with the layer's query
    python benchmarks/compare_predictor_losses.py --variants --references 32x4 16x8 --predictors \
        assets/training/predictor-v5 --out assets/results/predictor_v5_progress.json  # a long run's checkpoint

The shipped predictor (assets/predictor), when present, is scored on the same held-out chunks.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from statistics import fmean

import torch

from core.checkpoint import CONFIG_FILE
from core.data import token_chunks
from core.keysummary import stored, values_per_token
from core.losses import LOSSES, row_loss
from core.metrics import hit_accuracy, top_count, top_mask
from core.models import DEFAULT_MODEL, load
from core.policies.double_sparsity import ChannelRanking, shipped_ranking
from core.predictor import DEFAULT_DIR, Predictor
from core.spec import FIRST_SPARSE_LAYER
from core.train import Capture, TrainConfig, capture_pass, row_logits, sample_rows, train, true_rows

OUT = Path(__file__).resolve().parent.parent / "assets" / "results" / "predictor_ablation.json"
VARIANTS = {
    "kl": {},
    "mse": {"loss": "mse"},
    "kl-dim8": {"dim": 8},
    "kl-g2": {"group_layers": 2, "inner": 64},
    "kl-g8": {"group_layers": 8, "inner": 256},
    "kl-i160": {"inner": 160},
    "kl-g2-i96": {"group_layers": 2, "inner": 96},
}
V4 = {"dim": 32, "inner": 112, "key_bits": 8, "rows": 64, "lr": 2e-3}  # the shipped v4's shape and rates
VARIANTS |= {f"v4-{loss}": {**V4, "loss": loss} for loss in LOSSES}
VARIANTS |= {  # where the importance query comes from (issue 32 item 4), at v4's bytes and parameters
    "v4-rank-own": {**V4, "loss": "rank", "query": "own"},
    "v4-kl-own": {**V4, "loss": "kl", "query": "own"},
    "v4-rank-g1": {**V4, "loss": "rank", "group_layers": 1, "inner": 56},  # one producer per layer
}
LEARNED = {**V4, "loss": "rank", "keys": "learned"}  # a learned key code (issue 32 item 2); inner keeps <= 1.2%
VARIANTS |= {
    "v4-rank-learned": {**LEARNED, "inner": 104},  # 32 values in 8 bits: 34 bytes a token, layer and KV head
    "v4-rank-own-learned": {**LEARNED, "inner": 104, "query": "own"},
    **{f"b{size}-rank{query}-learned": {**LEARNED, "dim": dim, "key_bits": 4, "query": query.strip("-") or "ahead"}
       for size, dim in ((16, 28), (8, 12), (4, 4)) for query in ("", "-own")},
}


RECALL_BUDGETS = (0.05, 0.1, 0.25, 0.5)


def recall_at(pred: torch.Tensor, true: torch.Tensor, causal: torch.Tensor, frac: float) -> float:
    """Mean true attention mass on each query head's predicted top-`frac` of its causal past."""
    keep = top_count(causal.sum(-1), frac)
    probs = torch.softmax(true.masked_fill(~causal, float("-inf")), dim=-1)
    kept = top_mask(pred.masked_fill(~causal, float("-inf")), keep)
    return float((probs * kept).sum(-1).mean())


def channel_logits(ranking: ChannelRanking, channels: int, bits: int) -> Callable:
    """Double Sparsity's scores as a `heldout_scores` source: each head's real query at its KV head's
    `channels` calibrated channels against the same channels of the keys stored at `bits`."""

    def rows_of(cap: Capture, rows: torch.Tensor) -> Iterator:
        for layer in range(FIRST_SPARSE_LAYER, len(cap.qk)):
            query, key = cap.qk[layer]
            group = query.shape[1] // key.shape[1]
            idx = ranking.chosen(layer, channels)[None, :, None, :]
            labels = stored(torch.gather(key, -1, idx.expand(1, -1, key.shape[2], -1)), bits).float()
            per_head = idx.repeat_interleave(group, 1).expand(1, -1, rows.numel(), -1)
            picked = torch.gather(query[:, :, rows], -1, per_head)
            pred = torch.matmul(picked.float(), labels.repeat_interleave(group, 1).transpose(-1, -2))
            yield layer, pred, *true_rows(query, key, rows)

    return rows_of


def heldout_scores(lm, predictor: Predictor | Callable, chunks) -> dict[str, float]:
    """Over held-out chunks: hit accuracy on the last row and on 64 sampled rows, the mean KL, and the
    attention recall of each head's predicted top 5/10/25/50% on the sampled rows. `predictor` is a trained
    predictor or a source of predicted logits like `channel_logits`."""
    last, sampled, kl = [], [], []
    recall: dict[float, list[float]] = {frac: [] for frac in RECALL_BUDGETS}
    rng = random.Random(0)
    trained = isinstance(predictor, Predictor)
    producers = predictor.config.producer_layers if trained else []
    with torch.no_grad():
        for ids in chunks:
            cap = capture_pass(lm, ids, producers)
            rows = torch.cat([sample_rows(ids.numel() - 1, 63, 16, rng), torch.tensor([ids.numel() - 1])])
            for _, pred, true, causal in row_logits(predictor, cap, rows) if trained else predictor(cap, rows):
                past = causal.sum(-1)
                last.append(float(hit_accuracy(pred[..., -1, :], true[..., -1, :], past[-1]).mean()))
                sampled.append(float(hit_accuracy(pred, true, past).mean()))
                kl.append(float(row_loss(pred, true, causal, "kl")))
                for frac in RECALL_BUDGETS:
                    recall[frac].append(recall_at(pred, true, causal, frac))
    return {"hit_last_row": fmean(last), "hit_rows": fmean(sampled), "kl": fmean(kl),
            **{f"recall_{frac:.0%}": fmean(values) for frac, values in recall.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="none: score only the shipped predictor")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--score-only", action="store_true", help="score runs/ablation-<variant> without training")
    parser.add_argument("--references", nargs="*", default=[], metavar="CHANNELSxBITS",
                        help="Double Sparsity rows on the same chunks, e.g. 32x8 16x4 (the shipped calibration)")
    parser.add_argument("--predictors", nargs="*", type=Path, default=[], metavar="FOLDER",
                        help="trained predictors scored on the same chunks, e.g. a run's checkpoint in training")
    args = parser.parse_args()
    lm = load(args.model)
    train_chunks = token_chunks(lm.tokenizer, "train", args.seq_len, seed=0, order="in-order")
    held = token_chunks(lm.tokenizer, "heldout", args.seq_len, max_chunks=args.heldout, seed=0)
    results = finished(args.out, args.steps, args.seq_len)
    for name in args.variants:
        if name in results:  # scored by an earlier, interrupted run of the same comparison
            continue
        folder = Path(f"runs/ablation-{name}")
        config = replace(TrainConfig(steps=args.steps, seq_len=args.seq_len, save_every=25), **VARIANTS[name])
        if args.score_only:  # re-score predictors trained by an earlier run
            predictor, history = Predictor.load(folder, lm.spec), json.loads((folder / "history.json").read_text())
        else:  # resumes the variant's checkpoint when an earlier run was stopped
            predictor, history = train(lm, train_chunks, folder, config, resume=True)
        results[name] = {
            **heldout_scores(lm, predictor, held),
            **predictor.overheads(lm.spec, lm.parameter_count),
            "summary_bytes": summary_bytes(predictor.config.dim, predictor.config.key_bits),
            "train_loss_last10": sum(h["loss"] for h in history[-10:]) / 10,
            "config": VARIANTS[name],
        }
        print(name, results[name])
        write(args.out, args.steps, args.seq_len, results)
    for reference in args.references:  # Double Sparsity at its own bytes, no training
        channels, bits = (int(x) for x in reference.split("x"))
        scores = heldout_scores(lm, channel_logits(shipped_ranking(), channels, bits), held)
        results[f"ds-{reference}"] = {**scores, "parameter_share": 0.0, "summary_bytes": summary_bytes(channels, bits),
                                      "cache_share": values_per_token(channels, bits) * lm.spec.num_kv_heads
                                      * (lm.spec.num_layers - FIRST_SPARSE_LAYER) / lm.spec.kv_values_per_token}
    for folder in args.predictors:
        results[folder.name] = scored(lm, Predictor.load(folder, lm.spec), held)
    if (DEFAULT_DIR / CONFIG_FILE).is_file():  # the shipped predictor, scored on the same held-out chunks
        results["shipped"] = scored(lm, Predictor.load(DEFAULT_DIR, lm.spec), held)
    trained = f"{args.steps} steps of {args.seq_len} tokens each; " if args.variants else ""
    print(f"\n{trained}held-out: {args.heldout} chunks of {args.seq_len} tokens\n")
    print("| variant | hit acc (last row) | hit acc (64 rows) | held-out KL | recall@5% | recall@10% | recall@25% "
          "| recall@50% | params | extra cache | bytes a token, layer, KV head |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['hit_last_row']:.3f} | {r['hit_rows']:.3f} | {r['kl']:.3f} | {r['recall_5%']:.3f} | "
            f"{r['recall_10%']:.3f} | "
            f"{r['recall_25%']:.3f} | {r['recall_50%']:.3f} | "
            f"{r['parameter_share']:.2%} | {r['cache_share']:.1%} | {r.get('summary_bytes', float('nan')):g} |"
        )
    write(args.out, args.steps, args.seq_len, results)


def scored(lm, predictor: Predictor, held) -> dict:
    """A trained predictor's held-out scores, bytes a token and overheads (one row of the table)."""
    return {**heldout_scores(lm, predictor, held),
            "summary_bytes": summary_bytes(predictor.config.dim, predictor.config.key_bits),
            **predictor.overheads(lm.spec, lm.parameter_count)}


def summary_bytes(channels: int, bits: int) -> float:
    """Bytes a key summary of `channels` values at `bits` takes per token and KV head (a 16-bit scale below 16)."""
    return 2 * values_per_token(channels, bits)


def finished(path: Path, steps: int, seq_len: int) -> dict:
    """The variants already scored in `path` by a run of the same steps and length (none otherwise)."""
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    same = (saved.get("steps"), saved.get("seq_len")) == (steps, seq_len)
    return {k: v for k, v in saved.get("results", {}).items() if k != "shipped"} if same else {}


def write(path: Path, steps: int, seq_len: int, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"steps": steps, "seq_len": seq_len, "results": results}, indent=2))


if __name__ == "__main__":
    main()
