"""True importance of every head and MLP neuron for a prompt, from one forward (+ backward) pass.

Units: a head is its slice of the o_proj input (attention output before mixing), a neuron one channel of
the down_proj input (silu(gate) * up). With a = the unit's activation and g = dL/da for the prompt's
language-model loss, per unit and summed over the prompt's tokens:
- plainact: |sum over the unit's dims of a * g|     (ShadowLLM's pick: good to prune by, easy to predict)
- fisher:   (sum over the unit's dims of a * g)^2 / 2
- magnitude: mean over tokens of ||a||_2              (DejaVu-like; needs no backward)
- contribution: mean over tokens of ||W a||_2, W the unit's columns of o_proj / down_proj: what the unit
  adds to the residual stream (activation-aware like Wanda; needs no backward)
A neuron is a unit of width 1, so heads and neurons share one formula.

Scores are compared after per-layer normalization: log(score / layer mean + NORMALIZE_EPS). Dividing by the
layer's mean lets one global ranking span layers; the log keeps a few dominant units from swamping the
predictor's squared-error loss, and leaves every ranking unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.decode import PromptError
from core.models import LoadedModel

CRITERIA = ("plainact", "fisher", "magnitude", "contribution")
GRADIENT_CRITERIA = ("plainact", "fisher")
POOLS = ("mean", "last")
NORMALIZE_EPS = 0.01


@dataclass
class UnitScores:
    """One value per head [..., L, H] and per neuron [..., L, F]; a leading batch dimension is optional."""

    heads: torch.Tensor
    neurons: torch.Tensor

    def normalized(self) -> UnitScores:
        """log(score / layer mean + eps): comparable across layers (the predictor's targets, the ranking's scores)."""
        return UnitScores(_layer_normalized(self.heads), _layer_normalized(self.neurons))

    def __getitem__(self, index: int | slice) -> UnitScores:
        return UnitScores(self.heads[index], self.neurons[index])


def _layer_normalized(values: torch.Tensor) -> torch.Tensor:
    ratio = values / values.mean(dim=-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    return (ratio + NORMALIZE_EPS).log()


@dataclass
class Capture:
    """What one pass over a batch of prompts yields: the predictor's inputs and each criterion's scores."""

    features: dict[str, torch.Tensor]  # pool -> [B, hidden]: layer 0's output pooled over the prompt (CPU, fp32)
    scores: dict[str, UnitScores]  # criterion -> raw (unnormalized) scores [B, L, ...] (CPU, fp32)


def decoder_layers(lm: LoadedModel) -> nn.ModuleList:
    return lm.model.model.layers


def check_ids(ids: torch.Tensor) -> torch.Tensor:
    """[B, T] token ids with T >= 2 (a loss needs a next token); a 1-D prompt becomes a batch of one."""
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise PromptError(f"A prompt needs at least 2 tokens to score heads and neurons, got shape {tuple(ids.shape)}.")
    return ids


@contextlib.contextmanager
def _recording(lm: LoadedModel) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Keep every layer's o_proj and down_proj inputs and layer 0's output while the block runs."""
    seen: dict[str, list[torch.Tensor]] = {"heads": [], "neurons": [], "layer0": []}
    layers = decoder_layers(lm)
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(lambda _, args: seen["heads"].append(args[0]))
               for layer in layers]
    handles += [layer.mlp.down_proj.register_forward_pre_hook(lambda _, args: seen["neurons"].append(args[0]))
                for layer in layers]
    handles.append(layers[0].register_forward_hook(
        lambda _, __, out: seen["layer0"].append(out[0] if isinstance(out, tuple) else out)))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _unit_scores(
    acts: torch.Tensor, grads: torch.Tensor | None, out_weight: torch.Tensor, width: int, criteria: Sequence[str]
) -> dict[str, torch.Tensor]:
    """[B, T, U*width] activations (and gradients) -> {criterion: [B, U]} scores of U units of `width` dims;
    `out_weight` [E, U*width] maps the activations to the residual stream.

    The activation x gradient contribution is formed once and shared by plainact and fisher."""
    a = acts.detach().float().unflatten(-1, (-1, width))
    contribution = None if grads is None else (a * grads.float().unflatten(-1, (-1, width))).sum(dim=-1)

    def written() -> torch.Tensor:  # ||W_u a_u|| per token and unit: [B, T, U]
        w = out_weight.detach().float().unflatten(-1, (-1, width))  # [E, U, width]
        if width == 1:
            return a[..., 0].abs() * w[..., 0].norm(dim=0)
        return torch.einsum("btuw,euw->btue", a, w).norm(dim=-1)

    formulas = {
        "magnitude": lambda: a.norm(dim=-1).mean(dim=1),
        "contribution": lambda: written().mean(dim=1),
        "plainact": lambda: contribution.abs().sum(dim=1),
        "fisher": lambda: contribution.pow(2).sum(dim=1) / 2,
    }
    return {c: formulas[c]() for c in criteria}


def _layer_scores(acts: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
                  out_weights: Sequence[torch.Tensor], width: int, criteria: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-layer unit scores stacked to {criterion: [B, L, U]}."""
    per_layer = [_unit_scores(a, g, w, width, criteria) for a, g, w in zip(acts, grads, out_weights, strict=True)]
    return {c: torch.stack([layer[c] for layer in per_layer], dim=1).cpu() for c in criteria}


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each prompt's mean next-token loss: every prompt gets its own gradient."""
    nll = nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    return nll.mean(dim=1).sum()


def capture(lm: LoadedModel, ids: torch.Tensor, criteria: Sequence[str] = CRITERIA, prompt_len: int = 0) -> Capture:
    """Scores of every head and neuron for each prompt of `ids` [B, T] (equal lengths), plus the predictor input.

    With `prompt_len` > 0 the predictor input comes from the first `prompt_len` tokens and the scores from
    the rest (the continuation: its activations, and the loss of predicting its tokens), so a predictor can
    learn what the text after a prompt will need. The backward pass runs only when a gradient criterion is
    asked for and reaches only the recorded inputs.
    """
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown:
        raise ValueError(f"Unknown importance criteria {unknown}; choose from {', '.join(CRITERIA)}.")
    ids = check_ids(ids).to(lm.device)
    if not 0 <= prompt_len <= ids.shape[1] - 2:
        raise PromptError(f"A continuation needs at least 2 tokens after the prompt: prompt_len {prompt_len}, "
                          f"{ids.shape[1]} tokens.")
    needs_grad = any(c in GRADIENT_CRITERIA for c in criteria)
    embeds = lm.model.get_input_embeddings()(ids).detach().requires_grad_(needs_grad)
    with torch.set_grad_enabled(needs_grad), _recording(lm) as seen:
        logits = lm.model(inputs_embeds=embeds).logits
        acts = seen["heads"] + seen["neurons"]
        loss = _lm_loss(logits[:, prompt_len:], ids[:, prompt_len:]) if needs_grad else None
        grads = [g[:, prompt_len:] for g in torch.autograd.grad(loss, acts)] if needs_grad else [None] * len(acts)
        acts = [a[:, prompt_len:] for a in acts]
    n = len(seen["heads"])
    layers = decoder_layers(lm)
    heads = _layer_scores(acts[:n], grads[:n], [la.self_attn.o_proj.weight for la in layers], lm.spec.head_dim,
                          criteria)
    neurons = _layer_scores(acts[n:], grads[n:], [la.mlp.down_proj.weight for la in layers], 1, criteria)
    scores = {c: UnitScores(heads[c], neurons[c]) for c in criteria}
    layer0 = seen["layer0"][0].detach().float().cpu()
    return Capture(features=pooled(layer0[:, :prompt_len] if prompt_len else layer0), scores=scores)


def pooled(layer0: torch.Tensor) -> dict[str, torch.Tensor]:
    """[B, T, hidden] layer-0 outputs -> the predictor's candidate inputs [B, hidden].

    'last' is ShadowLLM's (the last prompt token); 'mean' averages every token after the first (the first is
    BOS, an attention sink with an outsized state). The mean says far more about a whole prompt's importance:
    see docs/shadowllm.md.
    """
    return {"mean": layer0[:, 1:].mean(dim=1), "last": layer0[:, -1]}
