"""Small-budget comparison of the two training losses (and predictor sizes) on held-out text.

Trains one predictor per variant for `--steps` steps on the same training chunks, then reports the
held-out hit accuracy (last query row and sampled rows) and the held-out KL. Writes
assets/results/predictor_ablation.json.

    python benchmarks/compare_predictor_losses.py --steps 60 --variants kl mse kl-dim8 kl-g2
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

import torch

from core.data import token_chunks
from core.metrics import hit_accuracy
from core.models import DEFAULT_MODEL, load
from core.train import TrainConfig, capture_pass, row_logits, row_loss, sample_rows, train

OUT = Path(__file__).resolve().parent.parent / "assets" / "results" / "predictor_ablation.json"
VARIANTS = {
    "kl": {},
    "mse": {"loss": "mse"},
    "kl-dim8": {"dim": 8},
    "kl-g2": {"group_layers": 2, "inner": 64},
    "kl-g8": {"group_layers": 8, "inner": 256},
}


def heldout_scores(lm, predictor, chunks) -> dict[str, float]:
    """Hit accuracy on the last row and on 64 sampled rows, and the mean KL, over held-out chunks."""
    last, sampled, kl = [], [], []
    rng = random.Random(0)
    with torch.no_grad():
        for ids in chunks:
            cap = capture_pass(lm, ids, predictor.config.producer_layers)
            rows = torch.cat([sample_rows(ids.numel() - 1, 63, 16, rng), torch.tensor([ids.numel() - 1])])
            for _, pred, true, causal in row_logits(predictor, cap, rows):
                past = causal.sum(-1)
                last.append(float(hit_accuracy(pred[..., -1, :], true[..., -1, :], past[-1]).mean()))
                sampled.append(float(hit_accuracy(pred, true, past).mean()))
                kl.append(float(row_loss(pred, true, causal, "kl")))
    return {"hit_last_row": sum(last) / len(last), "hit_rows": sum(sampled) / len(sampled), "kl": sum(kl) / len(kl)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=6)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    lm = load(args.model)
    train_chunks = token_chunks(lm.tokenizer, "train", args.seq_len, seed=0)
    held = token_chunks(lm.tokenizer, "heldout", args.seq_len, max_chunks=args.heldout, seed=0)
    results = {}
    for name in args.variants:
        config = replace(TrainConfig(steps=args.steps, seq_len=args.seq_len, save_every=10**9), **VARIANTS[name])
        predictor, history = train(lm, train_chunks, f"runs/ablation-{name}", config, resume=False)
        base = sum(p.numel() for p in lm.model.parameters())
        results[name] = {
            **heldout_scores(lm, predictor, held),
            **predictor.overheads(lm.spec, base),
            "train_loss_last10": sum(h["loss"] for h in history[-10:]) / 10,
            "config": VARIANTS[name],
        }
        print(name, results[name])
    print(f"\n{args.steps} steps of {args.seq_len} tokens each; held-out: {args.heldout} chunks\n")
    print("| variant | hit acc (last row) | hit acc (64 rows) | held-out KL | params | extra cache |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['hit_last_row']:.3f} | {r['hit_rows']:.3f} | {r['kl']:.3f} | "
            f"{r['parameter_share']:.2%} | {r['cache_share']:.1%} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "seq_len": args.seq_len, "results": results}, indent=2))


if __name__ == "__main__":
    main()
