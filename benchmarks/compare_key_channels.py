"""What a per-token key summary of k values buys: attention recall of Double Sparsity at several channel
counts against TokenButler (16 learned-query values against calibrated key channels) and the oracle.

Both methods read a small summary of every cached key at each step; Double Sparsity's is k calibrated
channels scored against the real query, TokenButler's 16 calibrated channels scored against a predicted
query. Recall is the true attention mass on the kept tokens (layers >= 1, 32 query rows per chunk, the
evaluation's `attention_cells`), on held-out chunks. Prints a table and writes
assets/results/key_channels.json.

Each channel count is measured at every `--bits` (the label cache stored at 16, 8 or 4 bits,
`core.keysummary`); "values" counts 16-bit values' worth of storage per token and KV head.

    python benchmarks/compare_key_channels.py [--chunks 4] [--chunk-len 1024] [--channels 8 16 24 32 48]
        [--bits 16 8 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from core.budget import Budget
from core.data import document_chunks
from core.eval.measure import attention_cells
from core.keysummary import values_per_token
from core.models import DEFAULT_MODEL, load
from core.policies import make_policy
from core.spec import FIRST_SPARSE_LAYER

OUT = Path(__file__).resolve().parent.parent / "assets" / "results" / "key_channels.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--chunk-len", type=int, default=1024)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 24, 32, 48])
    parser.add_argument("--bits", type=int, nargs="+", default=[16])
    parser.add_argument("--budgets", nargs="+", default=["25%", "10%", "5%"])
    parser.add_argument("--rows", type=int, default=32, help="query rows scored per chunk")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    started = time.perf_counter()
    lm = load(args.model)
    chunks = document_chunks(lm.tokenizer, "heldout", args.chunk_len, args.chunks, 2, seed=0)
    policies = {"oracle": make_policy("oracle"), "tokenbutler": make_policy("tokenbutler")}
    summaries = {f"double-sparsity/{c}" + ("" if bits == 16 else f"/int{bits}"): (c, bits)
                 for c in args.channels for bits in args.bits}
    policies |= {name: make_policy("double-sparsity", channels=c, bits=bits) for name, (c, bits) in summaries.items()}
    budgets = [Budget.parse(b) for b in args.budgets]
    recall: dict[str, dict[str, list[float]]] = {n: {b.label: [] for b in budgets} for n in policies}
    for chunk in chunks:
        cells = attention_cells(lm, chunk.ids, policies, dict.fromkeys(policies, budgets), args.rows, 64)
        for (name, label), cell in cells.items():
            recall[name][label].append(statistics.mean(cell["recall"][FIRST_SPARSE_LAYER:]))
    head_dim = lm.spec.head_dim
    predictor = policies["tokenbutler"].predictor.config
    summaries |= {"tokenbutler": (predictor.dim, predictor.key_bits)}
    rows = {name: {"values_per_token": head_dim if name == "oracle" else values_per_token(*summaries[name]),
                   **{label: statistics.mean(v) for label, v in by.items()}} for name, by in recall.items()}
    print(f"attention recall, {len(chunks)} held-out chunks of {args.chunk_len} tokens (per KV head and token: "
          f"values of the key summary read)")
    print(f"{'method':27} {'values':>6} " + " ".join(f"{b.label:>7}" for b in budgets))
    for name, row in rows.items():
        print(f"{name:27} {row['values_per_token']:>6g} " + " ".join(f"{row[b.label]:7.3f}" for b in budgets))
    doc = {"model": lm.spec.name, "chunks": len(chunks), "chunk_len": args.chunk_len, "rows": args.rows,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "wall_s": round(time.perf_counter() - started, 1), "recall": rows,
           "per_chunk": recall}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
