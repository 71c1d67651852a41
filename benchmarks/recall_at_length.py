"""Attention recall and hit accuracy of a TokenButler predictor against the oracle and Double Sparsity, per layer
and overall, at several context lengths, on held-out text and on text from outside every training source.

Recall at b is the true attention mass on each head's kept tokens when b of the past is kept (sinks and the
recent window included, as in decoding); the oracle keeps the true top-b, so its recall is the ceiling.
Hit accuracy is the paper's (top-50% overlap on the last scored row). Query rows are sampled evenly over the
second half of each chunk, so every row sees at least half the length as its past. Prints a table and
writes assets/results/recall_at_length.json.

    python benchmarks/recall_at_length.py [--predictor assets/training/predictor-v4] [--lengths 512 2048 8192]
        [--chunks 8 4 2] [--splits heldout outside] [--budgets 10% 5%]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from core.budget import Budget
from core.data import CorpusError, document_chunks
from core.eval.measure import attention_cells
from core.models import DEFAULT_MODEL, load
from core.policies import make_policy
from core.spec import FIRST_SPARSE_LAYER

OUT = Path(__file__).resolve().parent.parent / "assets" / "results" / "recall_at_length.json"
RIVAL = "double-sparsity"  # the evaluation's configuration (16 calibrated channels at 16 bits)
EQUAL_BYTES = "double-sparsity/equal-bytes"  # the predictor's channel count and storage bits, when they differ


def measure(lm, chunks: list, policies: dict, budgets: list[Budget], rows: int) -> dict:
    """Per policy: per-layer recall at each budget and hit accuracy (last row), averaged over chunks."""
    recall = {name: {b.label: [] for b in budgets} for name in policies}
    hit: dict[str, list] = {name: [] for name in policies}
    for chunk in chunks:
        half = chunk.ids.numel() // 2
        cells = attention_cells(lm, chunk.ids, policies, dict.fromkeys(policies, budgets), rows, half)
        for (name, label), cell in cells.items():
            recall[name][label].append(cell["recall"])
            if cell["ranking_hit_last"] is not None and label == budgets[0].label:
                hit[name].append(cell["ranking_hit_last"])
    out = {}
    for name in policies:
        layers = {label: np.nanmean(np.array(v, dtype=float), axis=0) for label, v in recall[name].items()}
        out[name] = {
            "recall": {label: float(np.mean(v[FIRST_SPARSE_LAYER:])) for label, v in layers.items()},
            "recall_by_layer": {label: [round(float(x), 4) for x in v] for label, v in layers.items()},
            "hit_accuracy_last_row": (float(np.nanmean(np.array(hit[name], dtype=float)[:, FIRST_SPARSE_LAYER:]))
                                      if hit[name] else None),
        }
    return out


def _recalls(measured: dict, budgets: list[Budget]) -> str:
    return " / ".join(f"{measured['recall'][b.label]:.3f}" for b in budgets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--predictor", default=None, help="folder of a trained predictor (default: the shipped one)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 4, 2], help="chunks per length, in order")
    parser.add_argument("--splits", nargs="+", default=["heldout", "outside"])
    parser.add_argument("--budgets", nargs="+", default=["10%", "5%"])
    parser.add_argument("--rows", type=int, default=32, help="query rows scored per chunk")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if len(args.chunks) != len(args.lengths):
        parser.error("--chunks needs one count per length")
    started = time.perf_counter()
    lm = load(args.model)
    policies = {"oracle": make_policy("oracle"), "tokenbutler": make_policy("tokenbutler", predictor=args.predictor),
                RIVAL: make_policy(RIVAL)}
    ours = policies["tokenbutler"].predictor.config
    if (ours.dim, ours.key_bits) != (policies[RIVAL].channels, policies[RIVAL].bits):
        policies[EQUAL_BYTES] = make_policy(RIVAL, channels=ours.dim, bits=ours.key_bits)
    budgets = [Budget.parse(b) for b in args.budgets]
    results: dict[str, dict] = {}
    for split in args.splits:
        for length, count in zip(args.lengths, args.chunks, strict=True):
            try:
                chunks = document_chunks(lm.tokenizer, split, length, count, 2, seed=0)
            except CorpusError as err:
                print(f"skipped {split} at {length}: {err}")
                continue
            key = f"{split}/{length}"
            results[key] = {"chunks": len(chunks), **measure(lm, chunks, policies, budgets, args.rows)}
            print(f"{key:16} ({len(chunks)} chunks) " + "  ".join(
                f"{name} {_recalls(results[key][name], budgets)}" for name in policies), flush=True)
    doc = {"model": lm.spec.name, "predictor": args.predictor or "assets/predictor", "dim": ours.dim,
           "key_bits": ours.key_bits, "budgets": args.budgets, "rows": args.rows,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "wall_s": round(time.perf_counter() - started, 1), "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    labels = " / ".join(b.label for b in budgets)
    print(f"\nrecall at {labels} kept (layers >= {FIRST_SPARSE_LAYER}); gap = oracle - tokenbutler")
    print(f"{'split/length':16} " + " ".join(f"{n:>27}" for n in policies) + f" {'gap':>13} {'hit TB':>7}")
    for key, row in results.items():
        gap = " / ".join(f"{row['oracle']['recall'][b.label] - row['tokenbutler']['recall'][b.label]:.3f}"
                         for b in budgets)
        print(f"{key:16} " + " ".join(f"{_recalls(row[n], budgets):>27}" for n in policies)
              + f" {gap:>13} {row['tokenbutler']['hit_accuracy_last_row']:7.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
