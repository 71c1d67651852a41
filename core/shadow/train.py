"""Fit the predictor to cached targets: MSE on per-layer normalized scores, AdamW with a cosine schedule.

The output biases start at the static (dataset-average) scores, so the network only has to learn how a
prompt departs from the average. A seeded share of the prompts is held back to report validation loss
and rank correlation every few epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from core.shadow.dataset import TargetSet
from core.shadow.importance import UnitScores
from core.shadow.predictor import ShadowPredictor
from core.shadow.ranking import rank_agreement


@dataclass(frozen=True)
class ShadowTrainConfig:
    """Optimisation settings (the network's shape lives in ShadowConfig)."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    val_share: float = 0.1
    val_every: int = 10  # epochs between validations (rank correlations over every neuron cost more than an epoch)
    seed: int = 0


def split(data: TargetSet, val_share: float, seed: int) -> tuple[TargetSet, TargetSet]:
    """A seeded train / validation split of the prompts (validation keeps at least one when asked for any)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_share * len(data))) if val_share > 0 else 0
    if n_val >= len(data):
        raise ValueError(f"{len(data)} prompts cannot spare {n_val} for validation; collect more or lower val_share.")
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def score_loss(predicted: UnitScores, target: UnitScores) -> torch.Tensor:
    """Mean squared error on heads plus that on neurons (each a mean, so neither swamps the other)."""
    return nn.functional.mse_loss(predicted.heads, target.heads) + nn.functional.mse_loss(predicted.neurons,
                                                                                          target.neurons)


@torch.no_grad()
def validate(predictor: ShadowPredictor, data: TargetSet) -> dict[str, float]:
    predicted = predictor.predict(data.features)
    return {"val_loss": score_loss(predicted, data.targets).item(), **rank_agreement(predicted, data.targets)}


def train_predictor(predictor: ShadowPredictor, data: TargetSet, config: ShadowTrainConfig | None = None,
                    progress: bool = True) -> list[dict[str, float]]:
    """Train in place; one history entry per epoch (train loss, and validation metrics every `val_every` epochs)."""
    config = config or ShadowTrainConfig()
    train_set, val_set = split(data, config.val_share, config.seed)
    predictor.set_static(train_set.static())
    predictor.train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    history = []
    bar = tqdm(range(config.epochs), desc="shadow predictor", unit="epoch", disable=not progress)
    for epoch in bar:
        order = torch.randperm(len(train_set), generator=generator)
        total = 0.0
        for start in range(0, len(train_set), config.batch_size):
            batch = train_set.subset(order[start : start + config.batch_size])
            loss = score_loss(predictor.predict(batch.features), batch.targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        entry = {"epoch": epoch + 1, "loss": total / len(train_set)}
        if len(val_set) and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
            predictor.eval()
            entry |= validate(predictor, val_set)
            predictor.train()
        history.append(entry)
        bar.set_postfix({k: f"{v:.4f}" for k, v in entry.items() if k in ("loss", "val_loss")})
    predictor.eval()
    return history
