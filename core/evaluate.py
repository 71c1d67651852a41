"""Every policy across a grid of budgets: perplexity (teacher-forced and real decoding), hit accuracy,
attention recall, the co-reference and entities tasks, achieved sparsity. Writes JSON, plotly HTML
and a markdown table under assets/results/; finished cells are cached so an interrupted run resumes.

Perplexity follows the paper (held-out 1024-token chunks) with one change that matches real decoding:
the first `dense_prefix` tokens (64) are a dense prefill and the loss counts only tokens predicted by
later rows, each reading its own budget. Tasks use each sample's own prompt length the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DynamicCache, LlamaConfig, LlamaForCausalLM

from core.attention import SparseSession, activate
from core.budget import Budget
from core.capture import capture_views, views_from_capture
from core.cli import split_csv
from core.decode import forward_teacher
from core.metrics import FIRST_SCORED_LAYER, row_indices, selection_metrics
from core.models import DEFAULT_MODEL, LoadedModel, embedded_model_path, from_model, load
from core.policies import Policy, UnknownPolicyError, make_policy, policy_names
from core.trace import ReadStats

# Kept ratios (sparsity s = 1 - ratio) and token counts. The full grid costs ~3 h on 2 CPU cores; the
# default (s = 20, 40, 50, 60, 80 % and 64 tokens, one chunk, tasks at s = 50 %) fits in ~25 minutes.
FULL_GRID = ("90%", "80%", "70%", "60%", "50%", "40%", "30%", "20%", "10%", "32", "64", "128", "256")
DEFAULT_BUDGETS = ("80%", "60%", "50%", "40%", "20%", "64")
TASKS = ("coref", "entities")
Key = tuple[str, ...]


@dataclass(frozen=True)
class EvalConfig:
    """What to measure and on how much data (defaults: the shipped run; `quick_config()` for tests)."""

    model: str = DEFAULT_MODEL
    policies: tuple[str, ...] = ()  # empty: every registered policy
    budgets: tuple[str, ...] = DEFAULT_BUDGETS  # sparsity s is written as the kept ratio 1 - s
    chunks: int = 1
    chunk_len: int = 1024
    dense_prefix: int = 64
    metric_rows: int = 32  # query rows per chunk scored for hit accuracy / recall (evenly spaced, last included)
    decode_chunks: int = 1  # chunks also run by real token-by-token decoding ...
    decode_len: int = 256  # ... cut to this many tokens
    decode_budgets: tuple[str, ...] = ("50%",)
    samples: int = 100
    tasks: tuple[str, ...] = TASKS
    task_budgets: tuple[str, ...] = ("50%",)  # empty: the same as `budgets`
    seed: int = 0
    out: str = "assets/results"
    cache_dir: str = "runs/eval_cache"
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> EvalConfig:
        """A tiny random model and a few short chunks and samples: the whole pipeline in seconds."""
        small = {"chunks": 2, "chunk_len": 96, "dense_prefix": 16, "metric_rows": 8, "decode_len": 40,
                 "samples": 3, "budgets": ("50%", "32"), "task_budgets": (), "quick": True}
        return cls(**{**small, **overrides})


# --- cache -------------------------------------------------------------------------------------------


@dataclass
class CellCache:
    """Finished cells as JSON lines (append-only, so an interrupted run loses at most the cell in flight)."""

    path: Path
    cells: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.cells[record["key"]] = record["value"]

    def get(self, key: Key) -> dict | None:
        return self.cells.get("|".join(key))

    def put(self, key: Key, value: dict) -> None:
        joined = "|".join(key)
        self.cells[joined] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"key": joined, "value": value}) + "\n")


def digest(*parts: object) -> str:
    """Short stable hash of tensors and plain values (the identity of a cell's data)."""
    h = hashlib.sha1()
    for part in parts:
        h.update(part.cpu().numpy().tobytes() if isinstance(part, torch.Tensor) else repr(part).encode())
    return h.hexdigest()[:12]


def policy_digest(policy: Policy) -> str:
    """A policy's identity: its name, constructor options and the weights of any module among them (a predictor)."""
    names = [n for n in inspect.signature(type(policy).__init__).parameters if n != "self" and hasattr(policy, n)]
    options = {n: getattr(policy, n) for n in names}
    weights = [p.detach().flatten()[:4096].float() for m in options.values() if isinstance(m, torch.nn.Module)
               for p in m.parameters()]
    plain = {n: v for n, v in options.items() if not isinstance(v, torch.nn.Module)}
    return digest(policy.name, plain, *weights)


# --- measurements on one sequence ---------------------------------------------------------------------


def _decode_steps(lm: LoadedModel, session: SparseSession, cache: DynamicCache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed `tokens` [1, n] one per step through the cache under `session`: logits [n, V] (real decoding)."""
    with torch.inference_mode(), activate(session, lm.model):
        rows = [lm.model(input_ids=t, past_key_values=cache, use_cache=True).logits[0] for t in tokens.split(1, dim=1)]
    return torch.cat(rows) if rows else torch.empty(0, lm.spec.vocab_size, device=lm.device)


def decode_forced(
    lm: LoadedModel, input_ids: torch.Tensor, policy: Policy, budget: Budget, prompt_len: int
) -> tuple[torch.Tensor, ReadStats]:
    """Real decoding over given tokens: dense prefill of the first `prompt_len`, then one token per step.

    Returns logits [T - prompt_len + 1, V] for positions prompt_len - 1 .. T - 1 (the teacher-forced
    rows they must match) and the K/V rows read by the decode steps.
    """
    ids = input_ids.view(1, -1).to(lm.device)
    if not 1 <= prompt_len <= ids.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {ids.shape[1]}], got {prompt_len}.")
    policy.begin(lm.spec.num_layers, budget, prompt_len)
    session = SparseSession(policy=policy, budget=budget, mode="decode", prompt_len=prompt_len)
    cache = DynamicCache(config=lm.model.config)
    with torch.inference_mode(), activate(session, lm.model):
        last = lm.model(input_ids=ids[:, :prompt_len], past_key_values=cache, use_cache=True, logits_to_keep=1)
    rows = _decode_steps(lm, session, cache, ids[:, prompt_len:])
    return torch.cat([last.logits[0], rows]), session.stats


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1)


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood of `targets` under [N, V] log-probabilities."""
    return float(torch.nn.functional.nll_loss(log_probs, targets.to(log_probs.device), reduction="sum"))


def chunk_nll(lm: LoadedModel, ids: torch.Tensor, policy: Policy, budget: Budget, prefix: int) -> dict:
    """Teacher-forced summed NLL of the tokens predicted by rows >= prefix, and the reads."""
    logits, stats = forward_teacher(lm, ids, policy, budget, prefix)
    return {"nll": _nll(_log_probs(logits[0, prefix:-1]), ids[prefix + 1 :]), "tokens": ids.numel() - prefix - 1,
            "read": stats.read, "total": stats.total}


def decode_agreement(lm: LoadedModel, ids: torch.Tensor, policy: Policy, budget: Budget, prefix: int) -> dict:
    """The same chunk teacher-forced and really decoded: both NLLs and how far their log-probs differ."""
    teacher_logits, teacher_stats = forward_teacher(lm, ids, policy, budget, prefix)
    decoded, decode_stats = decode_forced(lm, ids, policy, budget, prefix)
    teacher, real = _log_probs(teacher_logits[0, prefix:-1]), _log_probs(decoded[1:-1])
    targets = ids[prefix + 1 :]
    gap = (teacher - real).abs().amax()
    return {
        "nll_teacher": _nll(teacher, targets), "nll_decode": _nll(real, targets), "tokens": targets.numel(),
        "max_logprob_gap": float(gap), "argmax_agree": int((teacher.argmax(-1) == real.argmax(-1)).sum()),
        "read_teacher": teacher_stats.read, "total_teacher": teacher_stats.total,
        "read_decode": decode_stats.read, "total_decode": decode_stats.total,
    }


def task_cells(
    lm: LoadedModel, sample, policies: dict[str, Policy], budgets: dict[str, list[Budget]]
) -> dict[tuple[str, str], dict]:
    """Argmax misses over a sample's answer tokens for every policy and budget, sharing one dense prefill.

    The prompt (rows < prompt_len) is dense for every method, so it is run once; each policy then sees
    that prefill the way decoding shows it (`observe_prefill` on its sparse layers) and the remaining
    tokens up to the answer's end are really decoded, fed the true tokens: the same logits as a
    teacher-forced pass (tests check it), at a fraction of the cost.
    """
    ids = sample.input_ids.view(1, -1).to(lm.device)
    prompt_len = sample.prompt_len
    answer = torch.as_tensor(sample.answer_positions, dtype=torch.long)
    if int(answer.min()) < prompt_len:
        raise ValueError(f"answer positions {answer.tolist()} start inside the prompt (prompt_len {prompt_len}).")
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    cache = DynamicCache(config=lm.model.config)
    dense = SparseSession(make_policy("dense"), Budget.dense(), mode="decode", prompt_len=prompt_len, capture=captured)
    with torch.inference_mode(), activate(dense, lm.model):
        last = lm.model(input_ids=ids[:, :prompt_len], past_key_values=cache, use_cache=True, logits_to_keep=1)
    views = views_from_capture(captured, lm.spec.head_dim**-0.5)
    targets = ids[0, answer].cpu()
    cells = {}
    for name, policy in policies.items():
        for budget in budgets[name]:
            policy.begin(lm.spec.num_layers, budget, prompt_len)
            for layer, view in views.items():
                if policy.is_sparse_layer(layer):
                    policy.observe_prefill(view)
            session = SparseSession(policy=policy, budget=budget, mode="decode", prompt_len=prompt_len)
            steps = _decode_steps(lm, session, cache, ids[:, prompt_len : int(answer.max())])
            cache.crop(-steps.shape[0])  # back to the shared prefill (a negative count removes that many)
            predicted = torch.cat([last.logits[0], steps])[answer - prompt_len].argmax(-1).cpu()
            cells[(name, budget.label)] = {"wrong": int((predicted != targets).sum()), "tokens": answer.numel()}
    return cells


# --- stages: cells keyed by (stage, policy, budget, data), run with progress, reduced per policy x budget -------


@dataclass
class Stage:
    """One measurement over data items; `measure_item`, when set, fills all of an item's cells in one go."""

    name: str
    items: list
    budgets: dict[str, list[Budget]]  # policy -> budgets measured
    measure: Callable[[str, Budget, object], dict] | None
    reduce: Callable[[list[dict]], dict]
    ident: Callable[[object], tuple] = lambda item: (item,)
    measure_item: Callable[[object], dict[tuple[str, str], dict]] | None = None


@dataclass
class Setup:
    """What the stages share: the model, the policies that could be built, budgets and the cell cache."""

    lm: LoadedModel
    config: EvalConfig
    policies: dict[str, Policy]
    budgets: list[Budget]
    cache: CellCache
    identities: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.identities = {name: policy_digest(policy) for name, policy in self.policies.items()}

    def budgets_for(self, budgets: Sequence[Budget]) -> dict[str, list[Budget]]:
        """Dense reads everything whatever the budget: measured once, at 100%."""
        return {n: [Budget.dense()] if p.is_dense else list(budgets) for n, p in self.policies.items()}

    def key(self, stage: Stage, name: str, budget: Budget, item: object) -> Key:
        data = digest(self.lm.spec.fingerprint, self.config.dense_prefix, *stage.ident(item))
        return (stage.name, name, self.identities[name], budget.label, data)


def run_stage(s: Setup, stage: Stage) -> None:
    """Measure every cell not yet cached, with a progress bar; each finished cell is cached at once."""
    jobs: list[Callable[[], dict[Key, dict]]] = []
    for item in stage.items:
        keys = {(n, b.label): (s.key(stage, n, b, item), n, b) for n, bs in stage.budgets.items() for b in bs}
        missing = [entry for entry in keys.values() if s.cache.get(entry[0]) is None]
        if missing and stage.measure_item is not None:
            jobs.append(lambda item=item, keys=keys: {
                keys[nb][0]: value for nb, value in stage.measure_item(item).items() if nb in keys})
        else:
            jobs.extend(lambda k=k, n=n, b=b, item=item: {k: stage.measure(n, b, item)} for k, n, b in missing)
    unit = "cell" if stage.measure_item is None else "item"
    for job in tqdm(jobs, desc=stage.name, unit=unit, disable=not jobs):
        for key, value in job().items():
            s.cache.put(key, value)


def reduce_stage(s: Setup, stage: Stage) -> dict[str, dict[str, dict]]:
    """policy -> budget label -> the stage's reduction over its items."""
    return {
        name: {b.label: stage.reduce([s.cache.get(s.key(stage, name, b, x)) for x in stage.items]) for b in budgets}
        for name, budgets in stage.budgets.items()
    }


def _total(cells: list[dict], field_name: str) -> float:
    return float(sum(c[field_name] for c in cells))


def _sparsity(cells: list[dict], read: str = "read", total: str = "total") -> float:
    return ReadStats(_total(cells, read), _total(cells, total)).sparsity


def reduce_perplexity(cells: list[dict]) -> dict:
    return {"ppl": math.exp(_total(cells, "nll") / _total(cells, "tokens")), "achieved_sparsity": _sparsity(cells),
            "tokens": int(_total(cells, "tokens"))}


def reduce_decode(cells: list[dict]) -> dict:
    tokens = _total(cells, "tokens")
    return {
        "ppl_teacher": math.exp(_total(cells, "nll_teacher") / tokens),
        "ppl_decode": math.exp(_total(cells, "nll_decode") / tokens),
        "max_logprob_gap": max(c["max_logprob_gap"] for c in cells),
        "argmax_agreement": _total(cells, "argmax_agree") / tokens,
        "achieved_sparsity_teacher": _sparsity(cells, "read_teacher", "total_teacher"),
        "achieved_sparsity_decode": _sparsity(cells, "read_decode", "total_decode"),
        "tokens": int(tokens),
    }


def _listed(values: np.ndarray) -> list[float | None]:
    """JSON-safe list: NaN (a layer a policy leaves dense, with no ranking) becomes null."""
    return [None if math.isnan(v) else float(v) for v in values]


def _layer_mean(by_layer: np.ndarray) -> float | None:
    """Mean over layers >= 1, skipping layers a policy leaves dense for rankings (None if it has none)."""
    scored = by_layer[FIRST_SCORED_LAYER:]
    return float(np.nanmean(scored)) if np.isfinite(scored).any() else None


def reduce_attention(cells: list[dict]) -> dict:
    """Per-layer means over chunks, and their mean over layers >= 1 (as the paper)."""
    hit, recall = np.mean([c["hit"] for c in cells], 0), np.mean([c["recall"] for c in cells], 0)
    ranking = None if cells[0]["ranking_hit"] is None else np.array([c["ranking_hit"] for c in cells], float).mean(0)
    return {
        "hit_accuracy": _layer_mean(hit), "recall": _layer_mean(recall), "achieved_sparsity": _sparsity(cells),
        "ranking_hit_accuracy": None if ranking is None else _layer_mean(ranking),
        "hit_by_layer": hit.tolist(), "recall_by_layer": recall.tolist(),
        "ranking_hit_by_layer": None if ranking is None else _listed(ranking),
    }


def reduce_task(cells: list[dict]) -> dict:
    return {"wrong_token_pct": 100.0 * _total(cells, "wrong") / _total(cells, "tokens"),
            "any_miss": float(np.mean([c["wrong"] > 0 for c in cells])), "samples": len(cells)}


def attention_cells(s: Setup, chunk: torch.Tensor) -> dict[tuple[str, str], dict]:
    """One dense capture of a chunk; per policy and budget, per-layer hit, recall and reads on sampled rows."""
    prefix = s.config.dense_prefix
    views = capture_views(s.lm, chunk, list(s.policies.values()), prefix)
    rows = row_indices(s.config.metric_rows, chunk.numel(), prefix)
    cells = {}
    for name, stats in selection_metrics(views, s.policies, s.budgets_for(s.budgets), rows, prefix).items():
        ranking = None if stats.ranking_hit is None else _listed(stats.ranking_hit.mean(-1))
        for label, sel in stats.budgets.items():
            cells[(name, label)] = {"hit": sel.hit.mean(-1).tolist(), "recall": sel.recall.mean(-1).tolist(),
                                    "read": float(sel.read.sum()), "total": float(sel.total.sum()),
                                    "ranking_hit": ranking}
    return cells


def sample_ident(sample) -> tuple:
    """What identifies an encoded task sample in the cache."""
    return sample.input_ids, sample.prompt_len, torch.as_tensor(sample.answer_positions)


def build_stages(s: Setup, chunks: list[torch.Tensor], task_data: dict[str, list]) -> list[Stage]:
    """The measurements, in the order they run (cheapest evidence first)."""
    prefix, policies = s.config.dense_prefix, s.policies
    task_budgets = [Budget.parse(b) for b in s.config.task_budgets] or s.budgets
    stages = [
        Stage("attention", chunks, s.budgets_for(s.budgets), None, reduce_attention,
              ident=lambda c: (c, s.config.metric_rows), measure_item=lambda c: attention_cells(s, c)),
        Stage("perplexity", chunks, s.budgets_for(s.budgets),
              lambda n, b, c: chunk_nll(s.lm, c, policies[n], b, prefix), reduce_perplexity),
        Stage("decode", [c[: s.config.decode_len] for c in chunks[: s.config.decode_chunks]],
              s.budgets_for([Budget.parse(b) for b in s.config.decode_budgets]),
              lambda n, b, c: decode_agreement(s.lm, c, policies[n], b, prefix), reduce_decode),
    ]
    stages += [
        Stage(task, samples, s.budgets_for(task_budgets), None, reduce_task, ident=sample_ident,
              measure_item=lambda x: task_cells(s.lm, x, policies, s.budgets_for(task_budgets)))
        for task, samples in task_data.items()
    ]
    return stages


# --- running a whole evaluation --------------------------------------------------------------------------

QUICK_MODEL = "quick:tiny-random-llama"


def tiny_model(seed: int = 0) -> LoadedModel:
    """A 3-layer random Llama (Quest is sparse from layer 2) with the embedded tokenizer: real text, random output."""
    folder, file = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=len(tokenizer), max_position_embeddings=2048)
    return from_model(LlamaForCausalLM(config), tokenizer, name=QUICK_MODEL)


def load_model(source: str) -> LoadedModel:
    return tiny_model() if source == QUICK_MODEL else load(source)


def check_policy_names(names: Sequence[str]) -> Sequence[str]:
    """Refuse unknown names up front (before a model is loaded)."""
    unknown = [n for n in names if n not in policy_names()]
    if unknown:
        raise UnknownPolicyError(f"Unknown policies {unknown}; choose from: {', '.join(policy_names())}.")
    return names


def build_policies(lm: LoadedModel, names: Sequence[str]) -> tuple[dict[str, Policy], dict[str, str]]:
    """Build each named policy; one that cannot run on this model (no trained predictor, or one trained
    for another model) is skipped with the reason, an unknown name is an error."""
    policies, skipped = {}, {}
    for name in names or policy_names():  # run_evaluation has checked the names
        try:
            policy = make_policy(name)
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


def run_evaluation(config: EvalConfig) -> dict:
    """Measure everything `config` asks for (resuming from the cache) and return the results document."""
    started = time.perf_counter()
    check_policy_names(config.policies)
    lm = load_model(config.model)
    policies, skipped = build_policies(lm, config.policies)
    for name, reason in skipped.items():
        tqdm.write(f"skipping {name}: {reason}")
    budgets = list({b.label: b for b in map(Budget.parse, config.budgets)}.values())
    cache = CellCache(Path(config.cache_dir) / f"eval_{model_slug(lm.spec.name)}.jsonl")
    setup = Setup(lm, config, policies, budgets, cache)
    from core.data import token_chunks  # the corpus module is needed only here

    chunks = token_chunks(lm.tokenizer, "heldout", config.chunk_len, max_chunks=config.chunks, seed=config.seed)
    task_data = {task: task_samples(lm, task, config.samples, config.seed) for task in config.tasks}
    timing = {"setup": time.perf_counter() - started}
    results = {}
    for stage in (stage for stage in build_stages(setup, chunks, task_data) if stage.items):
        begun = time.perf_counter()
        run_stage(setup, stage)
        results[stage.name] = reduce_stage(setup, stage)
        timing[stage.name] = time.perf_counter() - begun
    timing["total"] = time.perf_counter() - started
    return {
        "model": lm.spec.to_dict(), "config": asdict(config), "policies": list(policies), "skipped": skipped,
        "budgets": [budget_info(b) for b in budgets], "data": {"chunks": len(chunks), "chunk_len": config.chunk_len,
        **{task: len(samples) for task, samples in task_data.items()}},
        "timing_s": {k: round(v, 2) for k, v in timing.items()}, "results": results,
    }


def task_samples(lm: LoadedModel, task: str, n: int, seed: int) -> list:
    from core.tasks import encode_sample, make_samples

    return [encode_sample(lm.tokenizer, sample) for sample in make_samples(task, n, seed)]


def model_slug(name: str) -> str:
    """'embedded:smollm2-135m-instruct' -> 'smollm2-135m-instruct' (file-name safe)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.split(":")[-1].split("/")[-1]).strip("-") or "model"


# --- report: JSON, markdown tables, plotly HTML (+ PNG when an exporter is installed) ----------------------

TABLES = (  # (stage, field, title, format)
    ("perplexity", "ppl", "Perplexity, teacher-forced on held-out text (lower is better)", "{:.2f}"),
    ("perplexity", "achieved_sparsity", "Achieved sparsity of the teacher-forced reads (nominal: header)", "{:.1%}"),
    ("attention", "recall", "Attention recall: true attention mass on the kept tokens (layers >= 1)", "{:.3f}"),
    ("attention", "hit_accuracy", "Hit accuracy of the kept set vs the true top-|kept| (layers >= 1)", "{:.3f}"),
    ("coref", "wrong_token_pct", "Co-reference task: % wrong answer tokens (argmax)", "{:.1f}"),
    ("coref", "any_miss", "Co-reference task: share of samples with any wrong answer token", "{:.2f}"),
    ("entities", "wrong_token_pct", "Entities task: % wrong answer tokens (argmax)", "{:.1f}"),
    ("entities", "any_miss", "Entities task: share of samples with any wrong answer token", "{:.2f}"),
)


def column_title(info: dict) -> str:
    return f"s={info['nominal_sparsity']:.0%}" if info["ratio"] is not None else info["label"]


def _value(by_budget: dict, label: str, field_name: str) -> float | None:
    """A policy's value at a budget; a policy measured only at 100% (dense) stands for every budget."""
    dense = Budget.dense().label
    cell = by_budget.get(label) or (by_budget[dense] if set(by_budget) == {dense} else None)
    return None if cell is None else cell.get(field_name)


def _ranking_hit(by_budget: dict, by_layer: bool = False) -> float | list | None:
    """The budget-free ranking hit accuracy (the same in every budget's cell)."""
    return next(iter(by_budget.values()))["ranking_hit_by_layer" if by_layer else "ranking_hit_accuracy"]


def _budget_tables(results: dict, budgets: list[dict]) -> list[str]:
    header = "| policy | " + " | ".join(column_title(b) for b in budgets) + " |"
    lines = []
    for stage, field_name, title, fmt in TABLES:
        if stage not in results:
            continue
        lines += ["", f"## {title}", "", header, "|---|" + "---|" * len(budgets)]
        for name, by_budget in results[stage].items():
            values = [_value(by_budget, b["label"], field_name) for b in budgets]
            lines.append(f"| {name} | " + " | ".join("–" if v is None else fmt.format(v) for v in values) + " |")
    return lines


def _ranking_table(attention: dict) -> list[str]:
    lines = ["", "## Ranking hit accuracy (the paper's: top-50% of the policy's scores vs true top-50%, layers >= 1)",
             "", "| policy | hit accuracy |", "|---|---|"]
    for name, by_budget in attention.items():
        value = _ranking_hit(by_budget)
        lines.append(f"| {name} | {'– (no per-token scores)' if value is None else f'{value:.3f}'} |")
    return lines


LAYER_RECALL_BUDGETS = ("10%", "25%", "50%")  # kept ratios shown layer by layer
CEILING = "oracle"


def _layer_recall_table(attention: dict) -> list[str]:
    """Recall per layer at small budgets: the oracle (ceiling), TokenButler, and the other baseline with the
    best overall recall at that budget, side by side."""
    labels = [b for b in LAYER_RECALL_BUDGETS if CEILING in attention and b in attention[CEILING]]
    if not labels:
        return []
    others = [n for n in attention if n not in (CEILING, "dense")]
    columns = []
    for label in labels:
        scored = [n for n in others if label in attention[n]]
        rivals = [n for n in scored if n != "tokenbutler"]
        best = max(rivals, key=lambda n: attention[n][label]["recall"]) if rivals else None
        columns += [(CEILING, label)] + [(n, label) for n in ("tokenbutler", best) if n in scored]
    lines = ["", "## Attention recall by layer (kept ratio in brackets; the best non-oracle baseline at each budget)",
             "", "| layer | " + " | ".join(f"{n} ({b})" for n, b in columns) + " |", "|---|" + "---|" * len(columns)]
    layers = len(attention[CEILING][labels[0]]["recall_by_layer"])
    for layer in range(layers):
        cells = [f"{attention[n][b]['recall_by_layer'][layer]:.3f}" for n, b in columns]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("| all >= 1 | " + " | ".join(f"{attention[n][b]['recall']:.3f}" for n, b in columns) + " |")
    return lines


def _decode_table(decode: dict) -> list[str]:
    lines = ["", "## Real token-by-token decoding vs teacher-forced (same tokens)", "",
             "| policy | budget | ppl teacher | ppl decode | max abs log-prob gap | argmax agreement | "
             "sparsity teacher | sparsity decode |", "|---|---|---|---|---|---|---|---|"]
    for name, by_budget in decode.items():
        for label, d in by_budget.items():
            lines.append(f"| {name} | {label} | {d['ppl_teacher']:.3f} | {d['ppl_decode']:.3f} | "
                         f"{d['max_logprob_gap']:.2e} | {d['argmax_agreement']:.1%} | "
                         f"{d['achieved_sparsity_teacher']:.1%} | {d['achieved_sparsity_decode']:.1%} |")
    return lines


def markdown_report(doc: dict) -> str:
    """The README tables: one per measurement, policies as rows, budgets as columns."""
    cfg, results, data = doc["config"], doc["results"], doc["data"]
    tasks = ", ".join(f"{t} {data[t]} samples" for t in cfg["tasks"]) or "none"
    lines = [
        f"# Evaluation: {doc['model']['name']}",
        "",
        f"{data['chunks']} held-out chunks of {cfg['chunk_len']} tokens (first {cfg['dense_prefix']} dense); "
        f"hit/recall on {cfg['metric_rows']} rows per chunk; tasks: {tasks}; seed {cfg['seed']}. "
        "s = nominal sparsity (1 - kept ratio); 'N tok' = fixed token budget. "
        f"Run time {doc['timing_s']['total']:.0f} s.",
    ]
    lines += ["", *(f"- skipped **{n}**: {reason}" for n, reason in doc["skipped"].items())] if doc["skipped"] else []
    lines += _budget_tables(results, doc["budgets"])
    lines += _ranking_table(results["attention"]) if "attention" in results else []
    lines += _layer_recall_table(results["attention"]) if "attention" in results else []
    lines += _decode_table(results["decode"]) if "decode" in results else []
    return "\n".join(lines) + "\n"


@dataclass
class Panel:
    """One plot: a line per policy."""

    title: str
    xlabel: str
    series: dict[str, tuple[list[float], list[float]]]


def figure_panels(doc: dict) -> list[Panel]:
    """Measurements against nominal sparsity (ratio budgets), and per-layer quality."""
    results = doc["results"]
    ratios = [b for b in doc["budgets"] if b["ratio"] is not None]
    xs = [100 * b["nominal_sparsity"] for b in ratios]
    panels = []
    for stage, field_name, title, _ in TABLES:
        if stage in results and field_name != "achieved_sparsity":
            series = {n: (xs, [_value(by, b["label"], field_name) for b in ratios]) for n, by in results[stage].items()}
            panels.append(Panel(title, "nominal sparsity (%)", series))
    if "attention" not in results:
        return panels
    ranking = {n: _ranking_hit(by, by_layer=True) for n, by in results["attention"].items()}
    panels.append(Panel("Ranking hit accuracy (top-50%) by layer", "layer",
                        {n: (list(range(len(v))), v) for n, v in ranking.items() if v is not None}))
    if ratios:
        mid = min(ratios, key=lambda b: abs(b["ratio"] - 0.5))["label"]
        recall = {n: _value(by, mid, "recall_by_layer") for n, by in results["attention"].items()}
        panels.append(Panel(f"Attention recall by layer at {mid} kept", "layer",
                            {n: (list(range(len(v))), v) for n, v in recall.items()}))
    return panels


def plotly_figure(panels: list[Panel], title: str):
    from plotly.subplots import make_subplots

    cols = 2
    fig = make_subplots(rows=math.ceil(len(panels) / cols), cols=cols, subplot_titles=[p.title for p in panels])
    names = sorted({n for p in panels for n in p.series}, key=policy_names().index)
    for i, panel in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        for name, (x, y) in panel.series.items():
            fig.add_scatter(x=x, y=y, name=name, legendgroup=name, showlegend=i == 0, mode="lines+markers",
                            line={"color": PALETTE[names.index(name) % len(PALETTE)]}, row=row, col=col)
        fig.update_xaxes(title_text=panel.xlabel, row=row, col=col)
    fig.update_layout(title=title, height=330 * math.ceil(len(panels) / cols), width=1100, template="plotly_white")
    return fig


PALETTE = ("#444444", "#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def write_png(fig, panels: list[Panel], path: Path) -> str:
    """PNG through kaleido (plotly's exporter) or matplotlib, whichever is installed; else say why not."""
    if importlib.util.find_spec("kaleido"):
        fig.write_image(str(path))
        return f"written with kaleido: {path.name}"
    if importlib.util.find_spec("matplotlib"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = math.ceil(len(panels) / 2)
        figure, axes = plt.subplots(rows, 2, figsize=(12, 3.6 * rows), squeeze=False)
        for axis, panel in zip(axes.flat, panels, strict=False):
            for name, (x, y) in panel.series.items():
                axis.plot(x, [math.nan if v is None else v for v in y], marker="o", label=name)
            axis.set_title(panel.title, fontsize=9)
            axis.set_xlabel(panel.xlabel)
        axes.flat[0].legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return f"written with matplotlib: {path.name}"
    return "skipped: neither kaleido nor matplotlib is installed (the HTML has the same figures)"


def write_outputs(doc: dict, out: Path) -> dict[str, Path]:
    """eval_<model>.json, .md and .html (+ .png when possible) under `out`; the PNG note goes in the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"eval_{model_slug(doc['model']['name'])}"
    panels = figure_panels(doc)
    fig = plotly_figure(panels, f"TokenButler Studio evaluation: {doc['model']['name']}")
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "html": stem.with_suffix(".html")}
    fig.write_html(str(paths["html"]), include_plotlyjs="cdn")
    doc["png"] = write_png(fig, panels, stem.with_suffix(".png"))
    paths["json"].write_text(json.dumps(doc, indent=1))
    paths["md"].write_text(markdown_report(doc))
    return paths


# --- command line ------------------------------------------------------------------------------------------


FLAGS = (  # EvalConfig field, type, help (defaults come from EvalConfig, or its quick variant with --quick)
    ("budgets", split_csv,
     f"comma list of kept ratios (50%, 0.5) and token counts (64); full grid: {','.join(FULL_GRID)}"),
    ("chunks", int, "held-out chunks"),
    ("chunk_len", int, "tokens per chunk"),
    ("dense_prefix", int, "dense tokens at the start of each chunk (the loss counts after them)"),
    ("metric_rows", int, "query rows per chunk scored for hit accuracy and recall"),
    ("decode_chunks", int, "chunks also run by real token-by-token decoding"),
    ("decode_len", int, "tokens of each really decoded chunk"),
    ("decode_budgets", split_csv, "budgets of the real-decoding check"),
    ("samples", int, "samples per task"),
    ("tasks", split_csv, "comma list from coref,entities"),
    ("task_budgets", split_csv, "budgets of the tasks (empty: --budgets)"),
    ("seed", int, "data and task seed"),
    ("out", str, "results folder"),
    ("cache_dir", str, "finished-cell cache folder"),
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = EvalConfig()
    parser.add_argument("--model", default=None, help=f"model source (default {DEFAULT_MODEL}; --quick: tiny random)")
    parser.add_argument("--policies", type=split_csv, default=(), help="comma list (default: every registered policy)")
    for name, kind, text in FLAGS:
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"{text} (default {shown})".replace("%", "%%"))  # argparse formats help with %
    parser.add_argument("--quick", action="store_true", help="a tiny random model and a few short chunks (< 1 min)")
    parser.set_defaults(func=cmd_evaluate)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """Flags given override the defaults (or the quick defaults with --quick)."""
    given = {name: getattr(args, name) for name, _, _ in FLAGS if getattr(args, name) is not None}
    given["policies"] = args.policies
    if args.quick:
        return EvalConfig.quick_config(model=args.model or QUICK_MODEL, **given)
    return EvalConfig(model=args.model or DEFAULT_MODEL, **given)


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    doc = run_evaluation(config)
    paths = write_outputs(doc, Path(config.out))
    print(markdown_report(doc))
    print(f"wrote {', '.join(str(p) for p in paths.values())}; PNG {doc['png']}")
    return 0


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    """`python -m core evaluate ...` (the main CLI calls this)."""
    parser = subparsers.add_parser("evaluate", help="measure every policy across budgets", description=__doc__)
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__)).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
