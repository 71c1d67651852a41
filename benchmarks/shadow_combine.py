"""Does combining two criteria prune better than either? The mean of two methods' global ranks, judged like
`shadow-evaluate` (first 128 tokens of a held-out window choose the masks, the last 128 are scored).

The rule is fixed beforehand (equal weights, no tuning), so it is measured on the evaluation's own windows
and its single criteria must reproduce the evaluation's figures. Windows are split over shards so two
processes share the work; `--report` merges the shards into perplexities with bootstrap intervals and
paired ratios against magnitude (the best single criterion at 50% of heads on the default model).

    OMP_NUM_THREADS=1 python benchmarks/shadow_combine.py --shard 0/2 --out runs/shadow/combine0.json &
    OMP_NUM_THREADS=1 python benchmarks/shadow_combine.py --shard 1/2 --out runs/shadow/combine1.json
    python benchmarks/shadow_combine.py --report runs/shadow/combine0.json runs/shadow/combine1.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.eval.intervals import exp_mean_interval, resample_indices
from core.models import DEFAULT_MODEL, load
from core.shadow import capture
from core.shadow.combine import rank_mean
from core.shadow.evaluate import UNITS, ShadowEvalConfig, heldout_windows, paired_over
from core.shadow.masking import Setting, ShadowMask
from core.shadow.methods import criteria_for, method_scores
from core.shadow.sweep import masked_nll, perplexity

SINGLES = ("magnitude", "plainact-iterative", "contribution")
PAIRS = (("magnitude", "plainact-iterative"), ("magnitude", "contribution"))
REFERENCE = "magnitude"
OUT = Path("assets/results/shadow_combine.json")


def window_losses(lm, window: torch.Tensor, prompt_len: int, sparsities: tuple[float, ...]) -> dict[str, float]:
    """{'dense' | 'method|unit|sparsity': mean loss of the window's last tokens} for the singles and pairs."""
    prompt = window[:prompt_len]
    cap = capture(lm, prompt, criteria_for(list(SINGLES)))
    found = method_scores(cap, list(SINGLES), lm=lm, prompt=prompt)
    rankings = {m: found[m][0] for m in SINGLES}
    rankings |= {f"{a}+{b}": rank_mean(rankings[a], rankings[b]) for a, b in PAIRS}
    names = ["dense"] + [f"{m}|{u}|{s:g}" for m in rankings for u in UNITS for s in sparsities]
    masks = [ShadowMask.dense(lm.spec)] + [Setting(m, u, s).mask(rankings[m])
                                           for m in rankings for u in UNITS for s in sparsities]
    return dict(zip(names, masked_nll(lm, window, masks, start=prompt_len), strict=True))


def measure(shard: int, shards: int, out: Path) -> None:
    """This shard's windows (every `shards`-th), appended to `out` as they finish, so a stopped run resumes."""
    lm = load(DEFAULT_MODEL)
    config = ShadowEvalConfig()
    done = json.loads(out.read_text()) if out.exists() else {}
    windows = heldout_windows(lm, config)
    for i in tqdm([i for i in range(len(windows)) if i % shards == shard and str(i) not in done], unit="window"):
        done[str(i)] = window_losses(lm, windows[i], config.prompt_len, config.sparsities)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done))


def report(parts: list[Path], out: Path, resamples: int = 2000, seed: int = 0) -> dict:
    """Perplexity [95%] of every ranking and its ratio over magnitude's, paired over windows."""
    windows = {}
    for part in parts:
        windows |= json.loads(part.read_text())
    order = sorted(windows, key=int)
    draws = resample_indices(len(order), resamples, seed)
    losses = {name: [windows[i][name] for i in order] for name in windows[order[0]]}
    by_setting = {Setting(m, u, float(s)): values for name, values in losses.items() if name != "dense"
                  for m, u, s in [name.split("|")]}
    doc: dict = {"windows": len(order), "dense": perplexity(sum(losses["dense"]) / len(order)), "perplexity": {},
                 f"over_{REFERENCE}": paired_over(by_setting, draws, REFERENCE)}
    for setting, values in by_setting.items():
        doc["perplexity"].setdefault(setting.unit, {}).setdefault(setting.method, {})[f"{setting.sparsity:g}"] = [
            perplexity(sum(values) / len(values)), *exp_mean_interval(values, draws)]
    out.write_text(json.dumps(doc, indent=1))
    print(f"{doc['windows']} windows, dense perplexity {doc['dense']:.2f}; perplexity [95%], then "
          f"{REFERENCE}'s perplexity over each (below 1: {REFERENCE} prunes better)")
    for unit, by_method in doc["perplexity"].items():
        for method, by in by_method.items():
            ratios = doc[f"over_{REFERENCE}"].get(unit, {}).get(method, {})
            cells = [f"{s}: {p:.1f} [{lo:.1f}, {hi:.1f}]" + (" x{:.3f} [{:.3f}, {:.3f}]".format(*ratios[s])
                                                             if s in ratios else "") for s, (p, lo, hi) in by.items()]
            print(f"{unit:8s} {method:32s} " + " | ".join(cells))
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", default="0/1", help="i/n: measure every n-th window starting at i")
    parser.add_argument("--out", type=Path, default=Path("runs/shadow/combine.json"), help="this shard's losses")
    parser.add_argument("--report", type=Path, nargs="+", help="merge these shards' files and write --json")
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    if args.report:
        report(args.report, args.json)
        return
    shard, shards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < shards:
        raise SystemExit(f"--shard must be i/n with 0 <= i < n, got {args.shard}")
    measure(shard, shards, args.out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
