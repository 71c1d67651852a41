"""Perplexity against head and neuron sparsity for every ranking method, and how well the predictor ranks.

Protocol, per held-out window of `window_len` tokens (the 'heldout' split, never seen in training):
- the prompt is the first `prompt_len` tokens: every method ranks heads and neurons from it alone
  (the predictor from layer 0's output pooled over the prompt as it was trained, by default the mean; the
  oracles from the prompt's own loss and activations);
- each mask (global ranking of per-layer normalized scores, layer 0 dense) applies to the whole window,
  and the loss counts the `window_len - prompt_len` tokens after the prompt;
- perplexity = exp(mean loss over all windows' counted tokens); Spearman's rho of every method against
  the prompt's true plainact, within layers and over all prunable units, averaged over windows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from core.data import missing_sources, missing_sources_note, token_chunks
from core.eval.cache import CellCache, Key, digest, module_digest, package_files, source_digest
from core.eval.config import model_slug
from core.eval.intervals import exp_mean_interval, ratio_interval, resample_indices
from core.eval.stages import eval_processes
from core.models import DEFAULT_MODEL, LoadedModel
from core.shadow.importance import capture
from core.shadow.masking import Setting, ShadowMask, check_sparsity
from core.shadow.methods import METHODS, NEEDS_PREDICTOR, check_methods, criteria_for, method_scores
from core.shadow.predictor import DEFAULT_DIR, ShadowPredictor
from core.shadow.ranking import layer_spearman, rank_agreement
from core.shadow.sweep import masked_nll, perplexity
from core.spec import FIRST_SPARSE_LAYER

UNITS = ("heads", "neurons")
# masks every other mask is compared with, paired over windows: the predictor (the goal), the best
# practical criterion on this model, and the direct measure (the truth the criteria are judged by)
PAIRED_REFERENCES = ("predicted", "magnitude", "direct")


@dataclass(frozen=True)
class ShadowEvalConfig:
    """What the shipped evaluation measures (the direct measure dominates: hundreds of forwards a window)."""

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
    cache_dir: str = "assets/shadow_cache"  # finished (window, method) cells, committed; empty: no cache

    def __post_init__(self) -> None:
        for s in self.sparsities:
            check_sparsity(s)
        check_methods(self.methods)
        if not 2 <= self.prompt_len < self.window_len:
            raise ValueError(f"Need 2 <= prompt_len < window_len, got {self.prompt_len} and {self.window_len}.")


def settings_for(config: ShadowEvalConfig) -> list[Setting]:
    grid = [Setting(m, u, s) for u in UNITS for m in config.methods for s in config.sparsities]
    return grid + [Setting(m, "heads", 0.5, "layer") for m in config.layer_scope_methods if m in config.methods]


SHADOW_MEASURING_CODE = ("shadow/importance.py", "shadow/masking.py", "shadow/methods.py", "shadow/direct.py",
                         "shadow/sweep.py", "shadow/ranking.py", "models.py", "metrics.py")


@dataclass
class WindowCells:
    """Finished (window, method) cells: each method of a window is measured once and cached at once, so an
    interrupted run (the direct measure costs hundreds of forwards a window) resumes, and adding a method or
    retraining the predictor measures only what changed. Keyed by the window's tokens, the protocol, the
    measuring code and, for the methods that read it, the predictor's weights."""

    cache: CellCache
    config: ShadowEvalConfig
    predictor_id: str
    code: str = field(default_factory=lambda: source_digest(package_files(SHADOW_MEASURING_CODE)))

    def key(self, window: torch.Tensor, method: str, seed: int) -> Key:
        c = self.config
        scope = method in c.layer_scope_methods
        return ("shadow", self.code, digest(window), method, f"{c.prompt_len}", repr(c.sparsities), f"{scope}",
                self.predictor_id if method in NEEDS_PREDICTOR else "-", f"{seed}" if method == "random" else "-")


def evaluate_window(lm: LoadedModel, window: torch.Tensor, settings: list[Setting], predictor: ShadowPredictor,
                    seed: int, cells: WindowCells) -> dict:
    """Losses of the dense model and of every setting on one window, and every method's rank agreement with
    the prompt's true plainact; only the methods not yet cached are measured (in one batched pass of masks)."""
    config = cells.config
    wanted = ["dense", *config.methods]
    missing = [m for m in wanted if cells.cache.get(cells.key(window, m, seed)) is None]
    if missing:
        _measure_methods(lm, window, settings, predictor, seed, cells, missing)
    found = {m: cells.cache.get(cells.key(window, m, seed)) for m in wanted}
    position = {m: 0 for m in config.methods}
    losses = []
    for s in settings:
        losses.append(found[s.method]["losses"][position[s.method]])
        position[s.method] += 1
    rivals = [m for m in config.methods if m != "plainact"]
    return {"dense": found["dense"]["loss"], "losses": losses,
            "agreement": {m: found[m]["agreement"] for m in rivals},
            "by_layer": {m: found[m]["by_layer"] for m in rivals}}


def _measure_methods(lm: LoadedModel, window: torch.Tensor, settings: list[Setting], predictor: ShadowPredictor,
                     seed: int, cells: WindowCells, missing: list[str]) -> None:
    prompt_len = cells.config.prompt_len
    methods = [m for m in missing if m != "dense"]
    masks = [ShadowMask.dense(lm.spec)] if "dense" in missing else []
    values: dict[str, dict] = {}
    if methods:
        cap = capture(lm, window[:prompt_len], criteria_for(methods))
        scores = method_scores(cap, methods, predictor, seed, lm, window[:prompt_len])
        true = cap.scores["plainact"].normalized()
        for m in methods:
            mine = [s.mask(scores[m][0]) for s in settings if s.method == m]
            masks += mine
            values[m] = {"count": len(mine), "agreement": None, "by_layer": None}
            if m != "plainact":
                values[m]["agreement"] = rank_agreement(scores[m], true)
                values[m]["by_layer"] = {u: layer_spearman(getattr(scores[m], u), getattr(true, u))[0].tolist()
                                         for u in UNITS}
    losses = masked_nll(lm, window, masks, start=prompt_len)
    if "dense" in missing:
        cells.cache.put(cells.key(window, "dense", seed), {"loss": losses.pop(0)})
    for m in methods:
        count = values[m].pop("count")
        cells.cache.put(cells.key(window, m, seed), {**values[m], "losses": losses[:count]})
        losses = losses[count:]


def _mean(values) -> float:
    return float(np.mean(values))


def reduce_windows(cells: list[dict], settings: list[Setting], resamples: int = 2000, seed: int = 0) -> dict:
    """Corpus perplexities (windows count equally: equal token counts) with bootstrap 95% intervals over
    windows (the same draws for every setting), and mean rank agreements."""
    draws = resample_indices(len(cells), resamples, seed)
    ppl: dict = {"dense": perplexity(_mean([c["dense"] for c in cells])), "global": {}, "layer": {}, "interval": {}}
    by_setting = {}
    for i, s in enumerate(settings):
        losses = by_setting[s] = [c["losses"][i] for c in cells]
        cell = ppl[s.scope].setdefault(s.unit, {}).setdefault(s.method, {})
        cell[f"{s.sparsity:g}"] = perplexity(_mean(losses))
        bounds = ppl["interval"].setdefault(s.scope, {}).setdefault(s.unit, {}).setdefault(s.method, {})
        bounds[f"{s.sparsity:g}"] = exp_mean_interval(losses, draws)
    ppl["paired_over"] = {ref: paired_over(by_setting, draws, ref) for ref in PAIRED_REFERENCES
                          if any(s.method == ref for s in settings)}
    methods = list(cells[0]["agreement"])
    agreement = {m: {k: _mean([c["agreement"][m][k] for c in cells]) for k in cells[0]["agreement"][m]}
                 for m in methods}
    by_layer = {m: {u: np.mean([c["by_layer"][m][u] for c in cells], axis=0).tolist() for u in UNITS}
                for m in methods}
    return {"perplexity": ppl, "rank_correlation": agreement, "rank_correlation_by_layer": by_layer}


def paired_over(by_setting: dict[Setting, list[float]], draws: np.ndarray, reference: str) -> dict:
    """The `reference` mask's perplexity over each other method's at the same setting, paired over windows
    (global ranking): {unit: {method: {sparsity: [ratio, low, high]}}}; below 1 the reference prunes better,
    and an interval wholly on one side of 1 separates the two."""
    out: dict = {}
    for s, losses in by_setting.items():
        mine = by_setting.get(Setting(reference, s.unit, s.sparsity, s.scope))
        if s.scope != "global" or s.method == reference or mine is None:
            continue
        ratio = perplexity(_mean(mine) - _mean(losses))
        low, high = ratio_interval(mine, losses, [1] * len(losses), draws)
        out.setdefault(s.unit, {}).setdefault(s.method, {})[f"{s.sparsity:g}"] = [ratio, low, high]
    return out


def heldout_windows(lm: LoadedModel, config: ShadowEvalConfig) -> list[torch.Tensor]:
    """The evaluation's text: the first `windows` chunks of the held-out split (seeded order)."""
    if note := missing_sources_note("heldout", missing_sources("heldout")):
        tqdm.write(note)
    return token_chunks(lm.tokenizer, "heldout", config.window_len, max_chunks=config.windows, seed=config.seed)


def run_shadow_evaluation(lm: LoadedModel, config: ShadowEvalConfig, predictor: ShadowPredictor,
                          windows: list[torch.Tensor], progress: bool = True,
                          processes: PartialState | None = None) -> dict | None:
    """The whole protocol on `windows` (token ids of `config.window_len`), resuming from the cell cache
    under `config.cache_dir` (none when empty); returns the results document.

    Under `accelerate launch` (or `processes` given) each process measures every n-th window into its own
    cache file; after all have finished, the main process reads every file and returns the document, the
    others return None."""
    started = time.perf_counter()
    processes = processes or eval_processes()
    rank, world = processes.process_index, processes.num_processes
    settings = settings_for(config)
    path = Path(config.cache_dir) / f"shadow_{model_slug(lm.spec.name)}.jsonl" if config.cache_dir else None
    cells = WindowCells(CellCache(path, rank=rank), config, module_digest(predictor))
    wanted = [(w, m, config.seed + i) for i, w in enumerate(windows) for m in ("dense", *config.methods)]
    fresh = sum(cells.cache.get(cells.key(*cell)) is None for cell in wanted)
    mine = [(i, w) for i, w in enumerate(windows) if i % world == rank]
    for i, w in tqdm(mine, desc="shadow eval", unit="window", disable=not progress or not processes.is_main_process):
        evaluate_window(lm, w, settings, predictor, config.seed + i, cells)
    if world > 1:
        processes.wait_for_everyone()
        cells.cache.reload()
    if not processes.is_main_process:
        return None
    measured = [evaluate_window(lm, w, settings, predictor, config.seed + i, cells) for i, w in enumerate(windows)]
    return {
        "model": lm.spec.to_dict(),
        "config": asdict(config),
        "predictor": {**asdict(predictor.config), **predictor.overheads(lm.parameter_count)},
        "protocol": {"windows": len(windows), "counted_tokens_per_window": config.window_len - config.prompt_len,
                     "first_sparse_layer": FIRST_SPARSE_LAYER},
        **reduce_windows(measured, settings, config.bootstrap, config.seed),
        "timing_s": round(time.perf_counter() - started, 1),
        "cells": {"measured": fresh, "cached": len(wanted) - fresh},
    }
