"""Masks that really change the forward pass: scale each head's o_proj input and each neuron's down_proj input.

A mask is chosen from scores by ranking, either globally over all prunable units (scores must be
per-layer normalized to compare across layers) or within each layer. Layer 0 stays dense: the
predictor reads its output. Masks may carry a leading batch dimension: row b of the batch runs with
mask b, so many masks of one prompt cost one batched forward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from core.metrics import top_mask
from core.models import LoadedModel
from core.shadow.importance import UnitScores, decoder_layers
from core.spec import FIRST_SPARSE_LAYER, ModelSpec

SCOPES = ("global", "layer")


class SparsityError(ValueError):
    """A sparsity outside [0, 1) or an unknown ranking scope."""


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """The share of units to remove, in [0, 1): removing every head or neuron leaves no model."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value < 1:
        raise SparsityError(f"The {what} must be a number in [0, 1) (0 = dense, 0.5 = half removed), got {value!r}.")
    return float(value)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise SparsityError(f"Unknown ranking scope {scope!r}; choose from {', '.join(SCOPES)}.")
    return scope


@dataclass
class ShadowMask:
    """1 = keep, 0 = remove, per head [..., L, H] and per neuron [..., L, F]."""

    heads: torch.Tensor
    neurons: torch.Tensor

    @classmethod
    def dense(cls, spec: ModelSpec) -> ShadowMask:
        return cls(torch.ones(spec.num_layers, spec.num_heads), torch.ones(spec.num_layers, spec.intermediate_size))

    @classmethod
    def stack(cls, masks: Sequence[ShadowMask]) -> ShadowMask:
        """A batch of masks, one per row of a batched forward."""
        return cls(torch.stack([m.heads for m in masks]), torch.stack([m.neurons for m in masks]))

    def sparsity(self, first_layer: int = FIRST_SPARSE_LAYER) -> dict[str, float]:
        """Achieved share of removed heads and neurons over the prunable layers."""
        return {"heads": 1 - self.heads[..., first_layer:, :].mean().item(),
                "neurons": 1 - self.neurons[..., first_layer:, :].mean().item()}


def _keep_top(values: torch.Tensor, sparsity: float, scope: str, first_layer: int) -> torch.Tensor:
    """[..., L, U] float mask removing the lowest-scored `sparsity` share of units in layers >= first_layer."""
    body = values[..., first_layer:, :]
    ranked = body.flatten(-2) if scope == "global" else body
    total = ranked.shape[-1]
    kept = top_mask(ranked, total - math.floor(sparsity * total + 0.5)).view_as(body)
    mask = torch.ones(values.shape, dtype=torch.float32)
    mask[..., first_layer:, :] = kept.float().cpu()
    return mask


def choose_mask(scores: UnitScores, head_sparsity: float, neuron_sparsity: float, scope: str = "global",
                first_layer: int = FIRST_SPARSE_LAYER) -> ShadowMask:
    """Keep the best-scored heads and neurons; `scores` must already be per-layer normalized for a global scope."""
    check_scope(scope)
    return ShadowMask(
        _keep_top(scores.heads, check_sparsity(head_sparsity, "head sparsity"), scope, first_layer),
        _keep_top(scores.neurons, check_sparsity(neuron_sparsity, "neuron sparsity"), scope, first_layer),
    )


def _scaled(x: torch.Tensor, scale: torch.Tensor, width: int) -> torch.Tensor:
    """[B, T, U*width] input times a per-unit scale [U] or [B, U]."""
    scale = scale.to(device=x.device, dtype=x.dtype).unsqueeze(-2).unsqueeze(-1)
    return (x.unflatten(-1, (-1, width)) * scale).flatten(-2)


def _pre_hook(scale: torch.Tensor, width: int):
    return lambda _, args: (_scaled(args[0], scale, width), *args[1:])


@contextlib.contextmanager
def masked(lm: LoadedModel, mask: ShadowMask) -> Iterator[ShadowMask]:
    """Run the model with `mask` applied (forward pre-hooks on o_proj and down_proj, removed on exit)."""
    layers = decoder_layers(lm)
    if mask.heads.shape[-2:] != (len(layers), lm.spec.num_heads) or mask.neurons.shape[-2:] != (
            len(layers), lm.spec.intermediate_size):
        raise ValueError(f"The mask's shape {tuple(mask.heads.shape)} / {tuple(mask.neurons.shape)} does not fit "
                         f"{lm.spec.name} ({len(layers)} layers x {lm.spec.num_heads} heads, "
                         f"{lm.spec.intermediate_size} neurons).")
    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
            _pre_hook(mask.heads[..., index, :], lm.spec.head_dim)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(_pre_hook(mask.neurons[..., index, :], 1)))
    try:
        yield mask
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Setting:
    """One mask rule: a method's scores, a unit kind pruned at a sparsity, a ranking scope."""

    method: str
    unit: str
    sparsity: float
    scope: str = "global"

    def mask(self, scores: UnitScores) -> ShadowMask:
        heads, neurons = (self.sparsity, 0.0) if self.unit == "heads" else (0.0, self.sparsity)
        return choose_mask(scores, heads, neurons, self.scope)
