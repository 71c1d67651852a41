"""Perplexity against head and neuron sparsity for every ranking method, and how well the predictor ranks.

Protocol, per held-out window of `window_len` tokens (the 'heldout' split, never seen in training):
- the prompt is the first `prompt_len` tokens: every method ranks heads and neurons from it alone
  (the predictor from layer 0's output at its last token, the oracles from its own loss and activations);
- each mask (global ranking of per-layer normalized scores, layer 0 dense) applies to the whole window,
  and the loss counts the `window_len - prompt_len` tokens after the prompt;
- perplexity = exp(mean loss over all windows' counted tokens); Spearman's rho of every method against
  the prompt's true plainact, within layers and over all prunable units, averaged over windows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from core.data import token_chunks
from core.eval.intervals import exp_mean_interval, resample_indices
from core.models import DEFAULT_MODEL, LoadedModel
from core.shadow.importance import capture
from core.shadow.masking import Setting, ShadowMask, check_sparsity
from core.shadow.methods import METHODS, check_methods, criteria_for, method_scores
from core.shadow.predictor import DEFAULT_DIR, ShadowPredictor
from core.shadow.ranking import layer_spearman, rank_agreement
from core.shadow.sweep import masked_nll, perplexity
from core.spec import FIRST_SPARSE_LAYER

UNITS = ("heads", "neurons")


@dataclass(frozen=True)
class ShadowEvalConfig:
    """What the shipped evaluation measures (defaults: about 8 minutes on one CPU thread)."""

    model: str = DEFAULT_MODEL
    predictor: str = str(DEFAULT_DIR)
    windows: int = 40
    bootstrap: int = 2000  # resamples of the 95% intervals over windows
    window_len: int = 256
    prompt_len: int = 128
    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75)
    methods: tuple[str, ...] = METHODS
    layer_scope_methods: tuple[str, ...] = ("predicted", "plainact")  # also ranked per layer, heads at 50 %
    seed: int = 0
    out: str = "assets/results"

    def __post_init__(self) -> None:
        for s in self.sparsities:
            check_sparsity(s)
        check_methods(self.methods)
        if not 2 <= self.prompt_len < self.window_len:
            raise ValueError(f"Need 2 <= prompt_len < window_len, got {self.prompt_len} and {self.window_len}.")


def settings_for(config: ShadowEvalConfig) -> list[Setting]:
    grid = [Setting(m, u, s) for u in UNITS for m in config.methods for s in config.sparsities]
    return grid + [Setting(m, "heads", 0.5, "layer") for m in config.layer_scope_methods if m in config.methods]


def evaluate_window(lm: LoadedModel, window: torch.Tensor, config: ShadowEvalConfig, settings: list[Setting],
                    predictor: ShadowPredictor, seed: int) -> dict:
    """Losses of the dense model and of every setting on one window, and every method's rank agreement."""
    cap = capture(lm, window[: config.prompt_len], criteria_for(config.methods))
    scores = method_scores(cap, config.methods, predictor, seed, lm, window[: config.prompt_len])
    true = scores["plainact"] if "plainact" in scores else cap.scores["plainact"].normalized()
    masks = [ShadowMask.dense(lm.spec)] + [s.mask(scores[s.method][0]) for s in settings]
    losses = masked_nll(lm, window, masks, start=config.prompt_len)
    return {
        "dense": losses[0],
        "losses": losses[1:],
        "agreement": {m: rank_agreement(scores[m], true) for m in config.methods if m != "plainact"},
        "by_layer": {m: {u: layer_spearman(getattr(scores[m], u), getattr(true, u))[0].tolist() for u in UNITS}
                     for m in config.methods if m != "plainact"},
    }


def _mean(values) -> float:
    return float(np.mean(values))


def reduce_windows(cells: list[dict], settings: list[Setting], resamples: int = 2000, seed: int = 0) -> dict:
    """Corpus perplexities (windows count equally: equal token counts) with bootstrap 95% intervals over
    windows (the same draws for every setting), and mean rank agreements."""
    draws = resample_indices(len(cells), resamples, seed)
    ppl: dict = {"dense": perplexity(_mean([c["dense"] for c in cells])), "global": {}, "layer": {}, "interval": {}}
    for i, s in enumerate(settings):
        losses = [c["losses"][i] for c in cells]
        cell = ppl[s.scope].setdefault(s.unit, {}).setdefault(s.method, {})
        cell[f"{s.sparsity:g}"] = perplexity(_mean(losses))
        bounds = ppl["interval"].setdefault(s.scope, {}).setdefault(s.unit, {}).setdefault(s.method, {})
        bounds[f"{s.sparsity:g}"] = exp_mean_interval(losses, draws)
    methods = list(cells[0]["agreement"])
    agreement = {m: {k: _mean([c["agreement"][m][k] for c in cells]) for k in cells[0]["agreement"][m]}
                 for m in methods}
    by_layer = {m: {u: np.mean([c["by_layer"][m][u] for c in cells], axis=0).tolist() for u in UNITS}
                for m in methods}
    return {"perplexity": ppl, "rank_correlation": agreement, "rank_correlation_by_layer": by_layer}


def heldout_windows(lm: LoadedModel, config: ShadowEvalConfig) -> list[torch.Tensor]:
    """The evaluation's text: the first `windows` chunks of the held-out split (seeded order)."""
    return token_chunks(lm.tokenizer, "heldout", config.window_len, max_chunks=config.windows, seed=config.seed)


def run_shadow_evaluation(lm: LoadedModel, config: ShadowEvalConfig, predictor: ShadowPredictor,
                          windows: list[torch.Tensor], progress: bool = True) -> dict:
    """The whole protocol on `windows` (token ids of `config.window_len`); returns the results document."""
    started = time.perf_counter()
    settings = settings_for(config)
    cells = [evaluate_window(lm, w, config, settings, predictor, config.seed + i)
             for i, w in enumerate(tqdm(windows, desc="shadow eval", unit="window", disable=not progress))]
    return {
        "model": lm.spec.to_dict(),
        "config": asdict(config),
        "predictor": {**asdict(predictor.config), **predictor.overheads(lm.parameter_count)},
        "protocol": {"windows": len(windows), "counted_tokens_per_window": config.window_len - config.prompt_len,
                     "first_sparse_layer": FIRST_SPARSE_LAYER},
        **reduce_windows(cells, settings, config.bootstrap, config.seed),
        "timing_s": round(time.perf_counter() - started, 1),
    }
