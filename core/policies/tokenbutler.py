"""TokenButler: a learned, query-aware predictor ranks past tokens per head at every step.

Forward pre-hooks on the producer layers' attention read the normed hidden state (and RoPE cos/sin)
of the tokens being processed and store each predicted layer's importance queries; the attention
function then asks `scores`, which scores the cached keys' calibrated channels. Nothing is
evicted: a token dropped at one step can be read again when a later query needs it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.checkpoint import CONFIG_FILE, PredictorMismatchError
from core.policies.base import LayerView, Policy
from core.predictor import DEFAULT_DIR, Predictor
from core.spec import weights_fingerprint


@functools.lru_cache(maxsize=1)
def shipped_predictor() -> Predictor:
    """The predictor in assets/predictor, read once per process and shared (it is never trained in place)."""
    return Predictor.load(DEFAULT_DIR)


@dataclass(eq=False)
class TokenButlerPolicy(Policy):
    name = "tokenbutler"
    description = "Learned per-head, per-step importance predictor (TokenButler); cache kept whole."

    sinks: int = 4
    recent: int = 4
    predictor: Predictor | str | Path | None = None  # None: the shipped predictor; a path: one trained there
    pred_queries: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)
    key_cache: dict[int, ProjectedKeys] = field(default_factory=dict, init=False, repr=False)
    _checked: set[int] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.predictor, Predictor):
            self.predictor = shipped_predictor() if self.predictor is None else Predictor.load(self.predictor)

    def reset(self) -> None:
        self.pred_queries = {}
        self.key_cache = {}

    @classmethod
    def available(cls) -> bool:
        return (DEFAULT_DIR / CONFIG_FILE).is_file()

    def _check_model(self, model: torch.nn.Module) -> None:
        """Refuse a predictor trained for another base model (once per model object)."""
        if id(model) in self._checked:
            return
        found = weights_fingerprint(model)
        if found != self.predictor.config.fingerprint:
            raise PredictorMismatchError(
                f"The TokenButler predictor was trained for {self.predictor.config.base_model!r} "
                f"(fingerprint {self.predictor.config.fingerprint}); this model's fingerprint is {found}. "
                "Train a predictor for it with `python -m core train --model <source> --out <folder>`."
            )
        self._checked.add(id(model))

    def attach(self, model: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        self._check_model(model)
        layers = model.model.layers
        device = next(model.parameters()).device
        self.predictor.to(device)

        def make_hook(producer: int):
            def hook(module, args, kwargs):
                hidden = kwargs["hidden_states"]
                cos, sin = kwargs["position_embeddings"]
                start = int(kwargs["position_ids"][0, 0]) if kwargs.get("position_ids") is not None else 0
                with torch.no_grad():
                    for layer, q in self.predictor.queries(producer, hidden, cos, sin).items():
                        self.pred_queries[layer] = (start, q)

            return hook

        return [
            layers[p].self_attn.register_forward_pre_hook(make_hook(p), with_kwargs=True)
            for p in self.predictor.config.producer_layers
        ]

    def scores(self, view: LayerView) -> torch.Tensor:
        start, queries = self.pred_queries[view.layer]
        rows = (view.positions - start).to(queries.device)
        keys = self.key_cache.setdefault(view.layer, ProjectedKeys()).update(self.predictor, view.layer, view.key)
        return self.predictor.score_projected(queries[:, :, rows, :], keys)


class ProjectedKeys:
    """The predictor's own key cache for one layer: the calibrated channels of every cached key,
    appended as the KV cache grows (amortised doubling), so a decode step projects one new key
    instead of re-reading the whole K cache. Stored channel-major ([B, Hkv, dim, capacity]): the
    step's scoring is then one matrix-vector product over contiguous rows (~7x faster on CPU than
    against token-major keys)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.length = 0

    def update(self, predictor: Predictor, layer: int, key: torch.Tensor) -> torch.Tensor:
        """[B, Hkv, T, dim] projected keys of `key` ([B, Hkv, T, head_dim]), reusing the rows seen before."""
        total = key.shape[2]
        fresh = self.buffer is None or total < self.length or self.buffer.shape[:2] != key.shape[:2]
        start = 0 if fresh else self.length
        new = predictor.project_keys(layer, key[:, :, start:]).transpose(-1, -2)  # [B, Hkv, dim, new]
        if fresh or total > self.buffer.shape[-1]:
            grown = new.new_empty(*new.shape[:3], max(2 * total, 64))
            if not fresh:
                grown[..., :start] = self.buffer[..., :start]
            self.buffer = grown
        self.buffer[..., start:total] = new
        self.length = total
        return self.buffer[..., :total].transpose(-1, -2)
