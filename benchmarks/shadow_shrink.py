"""Does shrinking a ShadowLLM predictor's scores toward its static mask help? (1 - a) * predicted + a * static,
head masks at 25/50/75%, perplexity on held-out windows the evaluation does not use.

The windows are `--skip`..`--windows` of the evaluation's seeded held-out order (by default 40-69: the
shipped evaluation reads the first 40), so a chosen `a` is never tuned on the windows it is reported on.
Each window's first 128 tokens choose the masks and its last 128 are scored, as in `shadow-evaluate`.
Prints one line per sparsity; the magnitude oracle is measured beside.

    python benchmarks/shadow_shrink.py --predictors assets/shadow runs/shadow/magnitude-c128 [--skip 40 --windows 70]
"""

from __future__ import annotations

import argparse
import math

import torch

from core.models import DEFAULT_MODEL, load
from core.shadow import ShadowPredictor, UnitScores, capture
from core.shadow.evaluate import ShadowEvalConfig, heldout_windows
from core.shadow.masking import Setting
from core.shadow.methods import criteria_for, method_scores
from core.shadow.sweep import masked_nll

SPARSITIES = (0.25, 0.5, 0.75)


def shrunk(predicted: UnitScores, static: UnitScores, a: float) -> UnitScores:
    return UnitScores((1 - a) * predicted.heads + a * static.heads, (1 - a) * predicted.neurons + a * static.neurons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--predictors", nargs="+", default=["assets/shadow"])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--skip", type=int, default=40, help="the evaluation's windows, left out")
    parser.add_argument("--windows", type=int, default=70)
    args = parser.parse_args()
    lm = load(args.model)
    config = ShadowEvalConfig(windows=args.windows)
    windows = heldout_windows(lm, config)[args.skip :]
    predictors = {path: ShadowPredictor.load(path, lm.spec) for path in args.predictors}
    losses: dict[tuple, list[float]] = {}
    for window in windows:
        prompt = window[: config.prompt_len]
        cap = capture(lm, prompt, criteria_for(["magnitude"]))
        rankings = {("magnitude oracle",): method_scores(cap, ["magnitude"])["magnitude"][0]}
        for path, predictor in predictors.items():
            scores = method_scores(cap, ["predicted", "static"], predictor)
            for a in args.shares:
                rankings[(path, a)] = shrunk(scores["predicted"][0], scores["static"][0], a)
        keys = [(*name, s) for name in rankings for s in SPARSITIES]
        masks = [Setting("shrunk", "heads", s).mask(rankings[name]) for name in rankings for s in SPARSITIES]
        for key, loss in zip(keys, masked_nll(lm, window, masks, start=config.prompt_len), strict=True):
            losses.setdefault(key, []).append(loss)
    print(f"perplexity of held-out windows {args.skip}-{args.skip + len(windows) - 1}, heads removed")
    for s in SPARSITIES:
        print(f"{s:.0%}: magnitude oracle {math.exp(sum(losses['magnitude oracle', s]) / len(windows)):.2f}")
        for path in predictors:
            print(f"   {path}: " + "  ".join(f"a={a:g} {math.exp(sum(losses[path, a, s]) / len(windows)):.2f}"
                                         for a in args.shares))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
