"""Training data for the predictor: prompts cut from the 'train' split and their true importance, cached.

The expensive part is one forward + backward per prompt; the result (layer-0 features, every pooling, and
per-layer normalized targets) is cached under runs/shadow/ keyed by the model, the criterion, the prompts and
the continuation, so retraining the small network costs seconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.data import token_chunks
from core.eval.cache import digest
from core.models import LoadedModel
from core.shadow.importance import UnitScores, capture

CACHE_DIR = Path("runs/shadow")
CACHE_FORMAT = 2  # bump when what a cache file holds changes


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


def _from_tensors(tensors: dict[str, torch.Tensor]) -> TargetSet:
    features = {k.removeprefix("feature_"): v for k, v in tensors.items() if k.startswith("feature_")}
    return TargetSet(features, UnitScores(tensors["heads"], tensors["neurons"]))


def _to_tensors(data: TargetSet) -> dict[str, torch.Tensor]:
    return {"heads": data.targets.heads, "neurons": data.targets.neurons,
            **{f"feature_{pool}": f for pool, f in data.features.items()}}


def cached_targets(lm: LoadedModel, prompts: Sequence[torch.Tensor], criterion: str = "plainact",
                   batch_size: int = 8, cache_dir: str | Path = CACHE_DIR, progress: bool = True,
                   continuation: int = 0) -> TargetSet:
    """`collect_targets`, read from / written to `cache_dir` (keyed by model fingerprint, criterion, prompts and
    continuation)."""
    key = digest(CACHE_FORMAT, lm.spec.fingerprint, criterion, continuation, *prompts)
    path = Path(cache_dir) / f"targets-{key}.pt"
    if path.is_file():
        return _from_tensors(torch.load(path))
    targets = collect_targets(lm, prompts, criterion, batch_size, progress, continuation)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_to_tensors(targets), path)
    return targets
