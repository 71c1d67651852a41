"""Training data for the predictor: prompts cut from the 'train' split and their true importance, cached.

The expensive part is one forward + backward per prompt; the result (layer-0 features, every pooling, and
per-layer normalized targets) is cached under runs/shadow/ keyed by the model, the criterion, the prompts and
the continuation, so retraining the small network costs seconds. A criterion measured in rounds under masks
(plainact-iterative: 768 prompts took 6,009 s on two processes, about 16 s a prompt each) runs prompt by
prompt, shared among the processes of `accelerate launch`, each saving its prompts as they finish so a
stopped capture resumes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from core.data import token_chunks
from core.eval.cache import digest
from core.eval.stages import eval_processes
from core.models import LoadedModel
from core.shadow.combine import COMBINATIONS, parts, rank_mean
from core.shadow.importance import CRITERIA, UnitScores, capture
from core.shadow.methods import criteria_for, method_scores

CACHE_DIR = Path("runs/shadow")
CACHE_FORMAT = 2  # bump when what a cache file holds changes
ROUND_CRITERIA = ("plainact-iterative",)  # measured in rounds under masks (core.shadow.methods): one prompt at a time
TRAIN_CRITERIA = (*CRITERIA, *ROUND_CRITERIA, *COMBINATIONS)
SAVE_EVERY = 16  # prompts between saves of a process's part of a per-prompt capture


@dataclass
class TargetSet:
    """Predictor inputs (pool -> [N, hidden]) and per-layer normalized targets [N, L, H] / [N, L, F]."""

    features: dict[str, torch.Tensor]
    targets: UnitScores

    def __len__(self) -> int:
        return self.targets.heads.shape[0]

    def subset(self, index: torch.Tensor) -> TargetSet:
        return TargetSet({k: v[index] for k, v in self.features.items()}, self.targets[index])

    def static(self) -> UnitScores:
        """The dataset-average normalized importance: the static mask's scores."""
        return UnitScores(self.targets.heads.mean(dim=0), self.targets.neurons.mean(dim=0))


def training_prompts(lm: LoadedModel, count: int, lengths: Sequence[int], seed: int = 0,
                     continuation: int = 0) -> list[torch.Tensor]:
    """`count` prompts from distinct 'train' chunks, their lengths cycling through `lengths` (held-out text never),
    each followed by the `continuation` tokens its chunk goes on with."""
    if count < 1 or not lengths or min(lengths) < 2 or continuation < 0 or 0 < continuation < 2:
        raise ValueError(f"Need at least one prompt of at least 2 tokens and no or a 2+ token continuation, got "
                         f"count={count}, lengths={list(lengths)}, continuation={continuation}.")
    chunks = token_chunks(lm.tokenizer, "train", max(lengths) + continuation, max_chunks=count, seed=seed)
    return [chunk[: lengths[i % len(lengths)] + continuation] for i, chunk in enumerate(chunks)]


def collect_targets(lm: LoadedModel, prompts: Sequence[torch.Tensor], criterion: str = "plainact",
                    batch_size: int = 8, progress: bool = True, continuation: int = 0) -> TargetSet:
    """True importance of each prompt (equal-length prompts batched), normalized within each layer; with a
    `continuation`, features from each prompt and importance from the tokens after it (`capture`)."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        by_length[len(prompt)].append(index)
    batches = [idx[i : i + batch_size] for idx in by_length.values() for i in range(0, len(idx), batch_size)]
    rows: list[dict[str, torch.Tensor]] = [{}] * len(prompts)
    for batch in tqdm(batches, desc=f"{criterion} targets", unit="batch", disable=not progress):
        ids = torch.stack([prompts[i] for i in batch])
        cap = capture(lm, ids, [criterion], prompt_len=ids.shape[1] - continuation if continuation else 0)
        scores = cap.scores[criterion].normalized()
        for row, index in enumerate(batch):
            rows[index] = {"heads": scores.heads[row], "neurons": scores.neurons[row],
                           **{f"feature_{pool}": f[row] for pool, f in cap.features.items()}}
    stacked = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
    return _from_tensors(stacked)


def collect_round_targets(lm: LoadedModel, prompts: Sequence[torch.Tensor], criterion: str, part: Path | None,
                          progress: bool = True, processes: PartialState | None = None) -> TargetSet | None:
    """A round criterion's scores (a removal order, comparable across layers as it is) for each prompt, one by
    one. Each process takes every n-th prompt in order of length (balanced work), saves its rows to `part`
    with its rank every `SAVE_EVERY` prompts and resumes from it; the main process returns all prompts'
    targets, the others None."""
    processes = processes or eval_processes()
    rank, world = processes.process_index, processes.num_processes
    part_files = [part.with_suffix(f".rank{r}.pt") for r in range(world)] if part else []
    own = part_files[rank] if part_files else None
    rows: dict[int, dict[str, torch.Tensor]] = torch.load(own) if own and own.is_file() else {}
    by_length = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    todo = [i for i in by_length[rank::world] if i not in rows]
    for count, index in enumerate(tqdm(todo, desc=f"{criterion} targets", unit="prompt",
                                       disable=not progress or not processes.is_main_process), start=1):
        prompt = prompts[index]
        cap = capture(lm, prompt[None], criteria_for([criterion]))
        scores = method_scores(cap, [criterion], lm=lm, prompt=prompt)[criterion]
        rows[index] = {"heads": scores.heads[0], "neurons": scores.neurons[0],
                       **{f"feature_{pool}": f[0] for pool, f in cap.features.items()}}
        if own and (count % SAVE_EVERY == 0 or count == len(todo)):
            torch.save(rows, own)
    if world > 1:
        processes.wait_for_everyone()
    if not processes.is_main_process:
        return None
    for other in part_files:
        rows |= torch.load(other)
    stacked = {key: torch.stack([rows[i][key] for i in range(len(prompts))]) for key in rows[0]}
    return _from_tensors(stacked)


def _from_tensors(tensors: dict[str, torch.Tensor]) -> TargetSet:
    features = {k.removeprefix("feature_"): v for k, v in tensors.items() if k.startswith("feature_")}
    return TargetSet(features, UnitScores(tensors["heads"], tensors["neurons"]))


def _to_tensors(data: TargetSet) -> dict[str, torch.Tensor]:
    return {"heads": data.targets.heads, "neurons": data.targets.neurons,
            **{f"feature_{pool}": f for pool, f in data.features.items()}}


def cached_targets(lm: LoadedModel, prompts: Sequence[torch.Tensor], criterion: str = "plainact",
                   batch_size: int = 8, cache_dir: str | Path = CACHE_DIR, progress: bool = True,
                   continuation: int = 0) -> TargetSet | None:
    """`collect_targets` (or `collect_round_targets`), read from / written to `cache_dir` (keyed by model
    fingerprint, criterion, prompts and continuation); None in a process of `accelerate launch` but the main one."""
    if criterion in COMBINATIONS:  # each part cached on its own (every part asked first: processes meet in each)
        found = [cached_targets(lm, prompts, part, batch_size, cache_dir, progress, continuation)
                 for part in parts(criterion)]
        if any(f is None for f in found):
            return None
        return TargetSet(found[0].features, rank_mean(*(f.targets for f in found)))
    key = digest(CACHE_FORMAT, lm.spec.fingerprint, criterion, continuation, *prompts)
    path = Path(cache_dir) / f"targets-{key}.pt"
    if path.is_file():
        return _from_tensors(torch.load(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if criterion in ROUND_CRITERIA:
        if continuation:
            raise ValueError(f"{criterion} is measured on the prompt itself; it takes no continuation.")
        targets = collect_round_targets(lm, prompts, criterion, path, progress)
        if targets is None:  # another process of `accelerate launch`: the main one saves and trains
            return None
    elif not eval_processes().is_main_process:  # a batched capture is the main process's alone
        return None
    else:
        targets = collect_targets(lm, prompts, criterion, batch_size, progress, continuation)
    torch.save(_to_tensors(targets), path)
    for part in path.parent.glob(f"{path.stem}.rank*.pt"):  # the processes' parts, now in the whole file
        part.unlink()
    return targets
