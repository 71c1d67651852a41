"""The cells of one sequence: teacher-forced NLL, real decoding against teacher forcing, task misses,
and hit accuracy / attention recall from one dense capture."""

from __future__ import annotations

import math

import numpy as np
import torch

from core.attention import SparseSession
from core.budget import Budget
from core.capture import capture_views
from core.decode import (
    GenerationConfig,
    decode_forced,
    decode_tokens,
    forward_teacher,
    forward_teacher_after,
    prefill_prompt,
)
from core.metrics import row_indices, selection_metrics
from core.models import LoadedModel
from core.policies import Policy
from core.trace import ReadStats


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1)


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood of `targets` under [N, V] log-probabilities."""
    return float(torch.nn.functional.nll_loss(log_probs, targets.to(log_probs.device), reduction="sum"))


def listed(values: np.ndarray) -> list[float | None]:
    """JSON-safe list: NaN (a layer a policy leaves dense, with no ranking) becomes null."""
    return [None if math.isnan(v) else float(v) for v in values]


def _nll_cell(logits: torch.Tensor, targets: torch.Tensor, stats: ReadStats) -> dict:
    """A perplexity cell: summed NLL of `targets` under [N, V] logits, their count, and the reads."""
    return {"nll": _nll(_log_probs(logits), targets), "tokens": targets.numel(), "read": stats.read,
            "total": stats.total, "side": stats.side}


def chunk_nll(lm: LoadedModel, ids: torch.Tensor, policy: Policy, budget: Budget, prefix: int) -> dict:
    """Teacher-forced summed NLL of the tokens predicted by rows >= prefix, and the reads."""
    logits, stats = forward_teacher(lm, ids, policy, budget, prefix)
    return _nll_cell(logits[0, prefix:-1], ids[prefix + 1 :], stats)


def long_prompt_cells(
    lm: LoadedModel, ids: torch.Tensor, policies: dict[str, Policy], budgets: dict[str, list[Budget]], prompt_len: int
) -> dict[tuple[str, str], dict]:
    """`chunk_nll` with a long prompt for every policy and budget, sharing one dense prefill of the prompt:
    each pass runs only the rows after it (`forward_teacher_after`, which equals the whole pass there)."""
    shared = prefill_prompt(lm, ids[:prompt_len], GenerationConfig(max_new_tokens=ids.numel() - prompt_len))
    cells = {}
    for name, policy in policies.items():
        for budget in budgets[name]:
            logits, stats = forward_teacher_after(lm, shared, ids[prompt_len:], policy, budget)
            cells[(name, budget.label)] = _nll_cell(logits[0, :-1], ids[prompt_len + 1 :], stats)
    return cells


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
    that prefill the way decoding shows it (`SparseSession.observe_prefill`) and the remaining
    tokens up to the answer's end are really decoded, fed the true tokens: the same logits as a
    teacher-forced pass (tests check it), at a fraction of the cost.
    """
    ids = sample.input_ids.view(1, -1).to(lm.device)
    prompt_len = sample.prompt_len
    answer = torch.as_tensor(sample.answer_positions, dtype=torch.long)
    if int(answer.min()) < prompt_len:
        raise ValueError(f"answer positions {answer.tolist()} start inside the prompt (prompt_len {prompt_len}).")
    shared = prefill_prompt(lm, ids[:, :prompt_len], GenerationConfig(max_new_tokens=ids.shape[1] - prompt_len + 1))
    cache, last, views = shared.cache, shared.logits, shared.views
    targets = ids[0, answer].cpu()
    cells = {}
    for name, policy in policies.items():
        for budget in budgets[name]:
            policy.reset()
            session = SparseSession(policy=policy, budget=budget, mode="decode", prompt_len=prompt_len)
            session.observe_prefill(views)
            steps = decode_tokens(lm, session, cache, ids[:, prompt_len : int(answer.max())])
            cache.crop(-steps.shape[0])  # back to the shared prefill (a negative count removes that many)
            predicted = torch.cat([last, steps])[answer - prompt_len].argmax(-1).cpu()
            cells[(name, budget.label)] = {"wrong": int((predicted != targets).sum()), "tokens": answer.numel()}
    return cells


def attention_cells(
    lm: LoadedModel, chunk: torch.Tensor, policies: dict[str, Policy], budgets: dict[str, list[Budget]],
    metric_rows: int, prefix: int,
) -> dict[tuple[str, str], dict]:
    """One dense capture of a chunk; per policy and budget, per-layer hit, recall and reads on sampled rows."""
    views = capture_views(lm, chunk, list(policies.values()))
    rows = row_indices(metric_rows, chunk.numel(), prefix)
    cells = {}
    for name, stats in selection_metrics(views, policies, budgets, rows, prefix).items():
        ranking = None if stats.ranking_hit is None else listed(stats.ranking_hit.mean(-1))
        last = None if stats.ranking_hit_last is None else listed(stats.ranking_hit_last.mean(-1))
        for label, sel in stats.budgets.items():
            cells[(name, label)] = {"hit": sel.hit.mean(-1).tolist(), "recall": sel.recall.mean(-1).tolist(),
                                    "read": float(sel.read.sum()), "total": float(sel.total.sum()),
                                    "ranking_hit": ranking, "ranking_hit_last": last}
    return cells
