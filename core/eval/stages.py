"""A whole evaluation: stages of cells keyed by (stage, policy, budget, data), run with progress, each finished
cell cached at once, then reduced per policy x budget into the results document."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from core.budget import Budget
from core.data import Chunk, document_chunks, missing_sources, missing_sources_note
from core.eval.cache import CellCache, Key, code_digest, digest, policy_digest
from core.eval.config import CEILING, DENSE, LEARNED, EvalConfig, model_slug
from core.eval.intervals import closure_interval, ratio_interval, resample_indices, share_interval
from core.eval.measure import attention_cells, chunk_nll, decode_agreement, listed, long_prompt_cells, task_cells
from core.models import LoadedModel, load
from core.policies import Policy, parse_spec, policy_from_spec, policy_names
from core.spec import FIRST_SPARSE_LAYER
from core.tasks import encode_sample, make_samples
from core.tiny import QUICK_MODEL, tiny_model
from core.trace import ReadStats

Cell = tuple[str, str]  # (policy, budget label)
BYTE_TOLERANCE = 0.005  # a gap-closure rival may read this much more of the cache (rounding of budgets)


@dataclass
class Stage:
    """One measurement over data items; `measure_item`, when set, fills an item's missing cells in one go
    (given the policies and budgets still missing: what is cached is never measured again)."""

    name: str
    items: list
    budgets: dict[str, list[Budget]]  # policy -> budgets measured
    measure: Callable[[str, Budget, object], dict] | None
    reduce: Callable[[list[dict]], dict]
    ident: Callable[[object], tuple] = lambda item: (item,)
    measure_item: Callable[[object, dict[str, Policy], dict[str, list[Budget]]], dict[Cell, dict]] | None = None


class MissingCellsError(RuntimeError):
    """A report asked to be written from the cache alone found cells that were never measured."""


def eval_processes() -> PartialState:
    """This process among those `accelerate launch` started (gloo on CPU, one GPU each), or alone."""
    return PartialState(cpu=not torch.cuda.is_available())


@dataclass
class Setup:
    """What the stages share: the model, the policies that could be built, budgets and the cell cache."""

    lm: LoadedModel
    config: EvalConfig
    policies: dict[str, Policy]
    budgets: list[Budget]
    cache: CellCache
    processes: PartialState = field(default_factory=eval_processes)  # one, or several under `accelerate launch`
    identities: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.identities = {name: digest(policy_digest(p), code_digest(p)) for name, p in self.policies.items()}

    def budgets_for(self, budgets: Sequence[Budget]) -> dict[str, list[Budget]]:
        """Dense reads everything whatever the budget: measured once, at 100%."""
        return {n: [Budget.dense()] if p.is_dense else list(budgets) for n, p in self.policies.items()}

    def key(self, stage: Stage, name: str, budget: Budget, item: object) -> Key:
        data = digest(self.lm.spec.fingerprint, self.config.dense_prefix, *stage.ident(item))
        return (stage.name, name, self.identities[name], budget.label, data)


def run_stage(s: Setup, stage: Stage) -> dict[str, int]:
    """Measure every cell not yet cached, with a progress bar; each finished cell is cached at once. Returns
    how many of the stage's cells this run measured and how many it read from the cache (older runs).

    Under several processes the work is dealt before looking at the cache (so no two processes can disagree
    on who measures what): whole items where one measurement fills an item's cells, else every n-th cell in
    a fixed order. Each process writes its own cache file, then all wait for each other and read every file,
    so each holds the whole stage."""
    rank, world = s.processes.process_index, s.processes.num_processes
    every_key = [s.key(stage, n, b, item) for item in stage.items for n, bs in stage.budgets.items() for b in bs]
    cached = sum(s.cache.get(k) is not None for k in every_key)
    jobs: list[Callable[[], dict[Key, dict]]] = []
    for i, item in enumerate(stage.items):
        if stage.measure_item is not None and i % world != rank:
            continue  # another process's item
        keys = {(n, b.label): (s.key(stage, n, b, item), n, b) for n, bs in stage.budgets.items() for b in bs}
        if stage.measure_item is not None:
            missing = [e for e in keys.values() if s.cache.get(e[0]) is None]
        else:
            missing = [e for j, e in enumerate(keys.values())
                       if (i * len(keys) + j) % world == rank and s.cache.get(e[0]) is None]
        if missing and stage.measure_item is not None:
            wanted: dict[str, list[Budget]] = {}
            for _, name, budget in missing:
                wanted.setdefault(name, []).append(budget)
            chosen = {name: s.policies[name] for name in wanted}
            jobs.append(lambda item=item, keys=keys, chosen=chosen, wanted=wanted: {
                keys[nb][0]: value for nb, value in stage.measure_item(item, chosen, wanted).items() if nb in keys})
        else:
            jobs.extend(lambda k=k, n=n, b=b, item=item: {k: stage.measure(n, b, item)} for k, n, b in missing)
    if jobs and s.config.cached_only:
        raise MissingCellsError(f"{stage.name}: {len(jobs)} {'cells' if stage.measure_item is None else 'items'} "
                                "are not in the cell cache; run without --cached-only to measure them.")
    unit = "cell" if stage.measure_item is None else "item"
    for job in tqdm(jobs, desc=stage.name, unit=unit, disable=not jobs or not s.processes.is_main_process):
        for key, value in job().items():
            s.cache.put(key, value)
    if world > 1:
        s.processes.wait_for_everyone()
        s.cache.reload()
    return {"measured": len(every_key) - cached, "cached": cached}


def reduce_stage(s: Setup, stage: Stage) -> dict[str, dict[str, dict]]:
    """policy -> budget label -> the stage's reduction over its items."""
    return {
        name: {b.label: stage.reduce([s.cache.get(s.key(stage, name, b, x)) for x in stage.items]) for b in budgets}
        for name, budgets in stage.budgets.items()
    }


def _total(cells: list[dict], field_name: str) -> float:
    return float(sum(c.get(field_name, 0.0) for c in cells))


def _reads(cells: list[dict], read: str = "read", total: str = "total") -> ReadStats:
    return ReadStats(_total(cells, read), _total(cells, total), _total(cells, "side"))


def reduce_perplexity(cells: list[dict]) -> dict:
    """Perplexity over all chunks, achieved sparsity in rows and in bytes, and the per-chunk values (kept
    for the intervals and for anyone who wants to see the spread)."""
    reads = _reads(cells)
    return {"ppl": math.exp(_total(cells, "nll") / _total(cells, "tokens")), "achieved_sparsity": reads.sparsity,
            "byte_sparsity": reads.byte_sparsity, "tokens": int(_total(cells, "tokens")),
            "chunk_nll": [c["nll"] for c in cells], "chunk_tokens": [c["tokens"] for c in cells]}


def reduce_decode(cells: list[dict]) -> dict:
    tokens = _total(cells, "tokens")
    return {
        "ppl_teacher": math.exp(_total(cells, "nll_teacher") / tokens),
        "ppl_decode": math.exp(_total(cells, "nll_decode") / tokens),
        "max_logprob_gap": max(c["max_logprob_gap"] for c in cells),
        "argmax_agreement": _total(cells, "argmax_agree") / tokens,
        "achieved_sparsity_teacher": _reads(cells, "read_teacher", "total_teacher").sparsity,
        "achieved_sparsity_decode": _reads(cells, "read_decode", "total_decode").sparsity,
        "tokens": int(tokens),
    }


def _layer_mean(by_layer: np.ndarray) -> float | None:
    """Mean over the sparse layers, skipping layers a policy leaves dense for rankings (None if it has none)."""
    scored = by_layer[FIRST_SPARSE_LAYER:]
    return float(np.nanmean(scored)) if np.isfinite(scored).any() else None


def _chunk_mean(cells: list[dict], field_name: str) -> np.ndarray | None:
    if cells[0].get(field_name) is None:
        return None
    return np.array([c[field_name] for c in cells], float).mean(0)


def reduce_attention(cells: list[dict]) -> dict:
    """Per-layer means over chunks, and their mean over layers >= FIRST_SPARSE_LAYER (as the paper)."""
    hit, recall = _chunk_mean(cells, "hit"), _chunk_mean(cells, "recall")
    ranking, last = _chunk_mean(cells, "ranking_hit"), _chunk_mean(cells, "ranking_hit_last")
    return {
        "hit_accuracy": _layer_mean(hit), "recall": _layer_mean(recall), "achieved_sparsity": _reads(cells).sparsity,
        "ranking_hit_accuracy": None if ranking is None else _layer_mean(ranking),
        "ranking_hit_accuracy_last": None if last is None else _layer_mean(last),
        "hit_by_layer": hit.tolist(), "recall_by_layer": recall.tolist(),
        "ranking_hit_by_layer": None if ranking is None else listed(ranking),
    }


def task_reducer(resamples: int, seed: int) -> Callable[[list[dict]], dict]:
    """Wrong answer tokens in % with a bootstrap 95% interval over samples."""

    def reduce(cells: list[dict]) -> dict:
        wrong, tokens = [c["wrong"] for c in cells], [c["tokens"] for c in cells]
        draws = resample_indices(len(cells), resamples, seed)
        return {"wrong_token_pct": 100.0 * sum(wrong) / sum(tokens),
                "wrong_token_pct_ci": share_interval(wrong, tokens, draws),
                "any_miss": float(np.mean([w > 0 for w in wrong])), "samples": len(cells)}

    return reduce


def relative_to_dense(by_policy: dict[str, dict[str, dict]], resamples: int, seed: int) -> None:
    """Add each cell's perplexity over dense's on the same chunks, with its paired bootstrap interval."""
    dense = by_policy.get("dense", {}).get(Budget.dense().label)
    if dense is None:
        return
    draws = resample_indices(len(dense["chunk_nll"]), resamples, seed)
    for by_budget in by_policy.values():
        for cell in by_budget.values():
            cell["ppl_vs_dense"] = cell["ppl"] / dense["ppl"]
            cell["ppl_vs_dense_ci"] = ratio_interval(cell["chunk_nll"], dense["chunk_nll"], cell["chunk_tokens"], draws)


def gap_closure(by_policy: dict[str, dict[str, dict]], resamples: int, seed: int) -> None:
    """At every budget where the oracle, the learned method and a rival were measured, add to the learned
    method's cell the share of the gap between the best rival (lowest perplexity) and the oracle that it
    closes, with a paired bootstrap interval over chunks (and the same against every rival, `gap_closed_by_rival`:
    the best rival differs by budget and protocol). A rival counts only if it read no more bytes than
    the learned method (SnapKV outside its regime reads nearly everything: beating dense-like perplexity
    is not what a method reading a tenth of the cache is asked to do)."""
    learned, ceiling = by_policy.get(LEARNED, {}), by_policy.get(CEILING, {})
    for label, mine in learned.items():
        rivals = {n: by[label] for n, by in by_policy.items() if n not in (DENSE, CEILING, LEARNED) and label in by
                  and by[label]["byte_sparsity"] >= mine["byte_sparsity"] - BYTE_TOLERANCE
                  and math.isfinite(by[label]["ppl"])}
        if label not in ceiling or not rivals:
            continue
        top = ceiling[label]
        draws = resample_indices(len(mine["chunk_nll"]), resamples, seed)
        against = {
            name: {"value": 1.0 - (mine["ppl"] - top["ppl"]) / (cell["ppl"] - top["ppl"]), "rival": name,
                   "ci": closure_interval(mine["chunk_nll"], top["chunk_nll"], cell["chunk_nll"],
                                          mine["chunk_tokens"], draws)}
            for name, cell in rivals.items() if cell["ppl"] > top["ppl"]
        }
        if against:
            mine["gap_closed_by_rival"] = against
            mine["gap_closed"] = against[min(against, key=lambda n: rivals[n]["ppl"])]


def against_rivals(by_policy: dict[str, dict[str, dict]], resamples: int, seed: int) -> None:
    """At every budget, add to the learned method's cell its perplexity over each other method's on the same
    chunks (`ppl_over_rival`), with a paired bootstrap interval: well defined even where a rival ties the
    oracle and the gap closure has no denominator."""
    for label, mine in by_policy.get(LEARNED, {}).items():
        draws = resample_indices(len(mine["chunk_nll"]), resamples, seed)
        mine["ppl_over_rival"] = {
            name: {"value": mine["ppl"] / by[label]["ppl"],
                   "ci": ratio_interval(mine["chunk_nll"], by[label]["chunk_nll"], mine["chunk_tokens"], draws)}
            for name, by in by_policy.items()
            if name not in (DENSE, LEARNED) and label in by and math.isfinite(by[label]["ppl"])
        }


def sample_ident(sample) -> tuple:
    """What identifies an encoded task sample in the cache."""
    return sample.input_ids, sample.prompt_len, torch.as_tensor(sample.answer_positions)


@dataclass(frozen=True)
class TaskSetting:
    """One task in one setting: where its question sits and how much filler stands before it."""

    task: str
    question_in_prompt: bool = False
    filler_tokens: int = 0

    @property
    def stage(self) -> str:
        """'coref', 'coref/question-in-prompt', 'coref/filler-4096', ..."""
        filler = f"/filler-{self.filler_tokens}" if self.filler_tokens else ""
        return self.task + filler + ("/question-in-prompt" if self.question_in_prompt else "")


def task_settings(config: EvalConfig) -> list[TaskSetting]:
    return [TaskSetting(task, placement == "question-in-prompt", filler)
            for task in config.tasks for filler in config.task_filler_tokens for placement in config.task_prompts]


def build_stages(s: Setup, chunks: list[Chunk], task_data: dict[TaskSetting, list]) -> list[Stage]:
    """The measurements, in the order they run (cheapest evidence first)."""
    prefix, policies, config = s.config.dense_prefix, s.policies, s.config
    task_budgets = [Budget.parse(b) for b in config.task_budgets] or s.budgets
    ids = lambda c: (c.ids,)  # noqa: E731
    stages = [
        Stage("attention", chunks, s.budgets_for(s.budgets), None, reduce_attention,
              ident=lambda c: (c.ids, config.metric_rows),
              measure_item=lambda c, chosen, wanted: attention_cells(s.lm, c.ids, chosen, wanted,
                                                                     config.metric_rows, prefix)),
    ]
    if config.short_prompt:
        stages.append(Stage("perplexity", chunks, s.budgets_for(s.budgets),
                            lambda n, b, c: chunk_nll(s.lm, c.ids, policies[n], b, prefix), reduce_perplexity,
                            ident=ids))
    if 0 < config.long_prompt < config.chunk_len - 1:
        stages.append(Stage("perplexity_long_prompt", chunks, s.budgets_for(s.budgets), None, reduce_perplexity,
                            ident=lambda c: (c.ids, "prompt", config.long_prompt),
                            measure_item=lambda c, chosen, wanted: long_prompt_cells(s.lm, c.ids, chosen, wanted,
                                                                                     config.long_prompt)))
    stages.append(Stage("decode", [c.ids[: config.decode_len] for c in chunks[: config.decode_chunks]],
                        s.budgets_for([Budget.parse(b) for b in config.decode_budgets]),
                        lambda n, b, c: decode_agreement(s.lm, c, policies[n], b, prefix), reduce_decode))
    stages += [
        Stage(setting.stage, samples, s.budgets_for(task_budgets), None, task_reducer(config.bootstrap, config.seed),
              ident=sample_ident, measure_item=lambda x, chosen, wanted: task_cells(s.lm, x, chosen, wanted))
        for setting, samples in task_data.items()
    ]
    return stages


# --- running a whole evaluation --------------------------------------------------------------------------


def load_model(source: str, processes: PartialState) -> LoadedModel:
    """The model, on this process's own GPU when several processes share a machine with GPUs."""
    if source == QUICK_MODEL:
        return tiny_model()
    return load(source, device=str(processes.device) if processes.device.type == "cuda" else None)


def check_policy_names(names: Sequence[str]) -> Sequence[str]:
    """Refuse unknown names and options up front (before a model is loaded); a name may carry options,
    'double-sparsity:channels=16:bits=4' (`core.policies.parse_spec`), and is its own method in the results."""
    for name in names:
        parse_spec(name)
    return names


def build_policies(lm: LoadedModel, names: Sequence[str]) -> tuple[dict[str, Policy], dict[str, str]]:
    """Build each named policy; one that cannot run on this model (no trained predictor, or one trained
    for another model) is skipped with the reason, an unknown name is an error."""
    policies, skipped = {}, {}
    for name in names or policy_names():  # run_evaluation has checked the names
        try:
            policy = policy_from_spec(name)
            for handle in policy.attach(lm.model):  # attaching checks the predictor fits this model
                handle.remove()
        except (FileNotFoundError, ValueError) as err:
            skipped[name] = str(err)
            continue
        policies[name] = policy
    return policies, skipped


def budget_info(budget: Budget) -> dict:
    nominal = None if budget.ratio is None else round(1.0 - budget.ratio, 6)
    return {"label": budget.label, "ratio": budget.ratio, "tokens": budget.tokens, "nominal_sparsity": nominal}


def task_samples(lm: LoadedModel, setting: TaskSetting, n: int, seed: int) -> list:
    samples = make_samples(setting.task, n, seed, setting.filler_tokens)
    return [encode_sample(lm.tokenizer, sample, setting.question_in_prompt) for sample in samples]


def chunk_info(chunk: Chunk) -> dict:
    return {"source": chunk.source, "documents": list(chunk.documents)}


def run_evaluation(config: EvalConfig) -> dict:
    """Measure everything `config` asks for (resuming from the cache) and return the results document."""
    started = time.perf_counter()
    check_policy_names(config.policies)
    processes = eval_processes()
    lm = load_model(config.model, processes)
    policies, skipped = build_policies(lm, config.policies)
    for name, reason in skipped.items():
        tqdm.write(f"skipping {name}: {reason}")
    budgets = list({b.label: b for b in map(Budget.parse, config.budgets)}.values())
    cache = CellCache(Path(config.cache_dir) / f"eval_{model_slug(lm.spec.name)}.jsonl", processes.process_index)
    setup = Setup(lm, config, policies, budgets, cache, processes)
    chunks = document_chunks(lm.tokenizer, config.split, config.chunk_len, config.chunks, config.per_document,
                             seed=config.seed)
    missing = missing_sources(config.split)
    if note := missing_sources_note(config.split, missing):
        tqdm.write(note)
    task_data = {t: task_samples(lm, t, config.samples, config.seed) for t in task_settings(config)}
    timing = {"setup": time.perf_counter() - started}
    results, cells = {}, {"measured": 0, "cached": 0}
    for stage in (stage for stage in build_stages(setup, chunks, task_data) if stage.items):
        begun = time.perf_counter()
        for origin, count in run_stage(setup, stage).items():
            cells[origin] += count
        results[stage.name] = reduce_stage(setup, stage)
        if stage.name.startswith("perplexity"):
            relative_to_dense(results[stage.name], config.bootstrap, config.seed)
            gap_closure(results[stage.name], config.bootstrap, config.seed)
            against_rivals(results[stage.name], config.bootstrap, config.seed)
        timing[stage.name] = time.perf_counter() - begun
    timing["total"] = time.perf_counter() - started
    return {
        "model": lm.spec.to_dict(), "config": asdict(config), "policies": list(policies), "skipped": skipped,
        "budgets": [budget_info(b) for b in budgets],
        "data": {"chunks": len(chunks), "chunk_len": config.chunk_len, "split": config.split,
                 "chunk_sources": [chunk_info(c) for c in chunks],
                 "missing_sources": missing,
                 **{t.stage: len(samples) for t, samples in task_data.items()}},
        "timing_s": {k: round(v, 2) for k, v in timing.items()}, "cells": cells, "results": results,
    }
