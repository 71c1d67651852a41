"""TokenButler: a learned, query-aware predictor ranks past tokens per head at every step.

Forward pre-hooks on the producer layers' attention read the normed hidden state (and RoPE cos/sin)
of the tokens being processed and store each predicted layer's importance queries; the attention
function then asks `scores`, which scores the cached keys' calibrated channels. Nothing is
evicted: a token dropped at one step can be read again when a later query needs it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.checkpoint import CONFIG_FILE, PredictorMismatchError
from core.keysummary import values_per_token
from core.policies.base import LayerView, Policy
from core.policies.driver import newest_rows
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
    key_cache: dict[int, GroupKeys] = field(default_factory=dict, init=False, repr=False)  # per producer
    ahead: dict[int, tuple[int, int, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)
    _checked: set[int] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.predictor, Predictor):
            self.predictor = shipped_predictor() if self.predictor is None else Predictor.load(self.predictor)

    def reset(self) -> None:
        self.pred_queries = {}
        self.key_cache = {}
        self.ahead = {}

    def _keys(self, layer: int) -> tuple[GroupKeys, int]:
        """The key cache of `layer`'s producer group and the layer's slot in it."""
        producer = layer - (layer - self.predictor.config.first_layer) % self.predictor.config.group_layers
        group = self.key_cache.get(producer)
        if group is None:
            group = self.key_cache[producer] = GroupKeys(len(self.predictor.layers_of(producer)))
        return group, layer - producer

    @classmethod
    def available(cls) -> bool:
        return (DEFAULT_DIR / CONFIG_FILE).is_file()

    def side_reads(self, past: torch.Tensor, kept: torch.Tensor, head_dim: int) -> float:
        """The predictor's key cache, read whole at every step: `dim` channels per past token (codes and a
        scale when stored below 16 bits)."""
        config = self.predictor.config
        return float(past.sum()) * values_per_token(config.dim, config.key_bits) / (2 * head_dim)

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
        group, slot = self._keys(view.layer)
        keys = group.update(slot, self.predictor, view.layer, view.key)
        return self.predictor.score_projected(queries[:, :, rows, :], keys)

    def decode_indices(self, view: LayerView, keep: int) -> torch.Tensor | None:
        """A decode step's rows for every layer of a producer group at once, at the group's first layer.

        The current token is always read, so the past tokens' scores decide everything and they are
        known before the later layers of the group run: one batched score over the group's key cache
        and one top-k serve all its layers (a quarter of the per-layer small operations). None when
        the group's key cache is not yet filled up to this step (the first step after a prefill)."""
        t, layer = view.context, view.layer
        cached = self.ahead.pop(layer, None)
        group, slot = self._keys(layer)
        if cached is not None and cached[:2] == (t, keep):
            group.update(slot, self.predictor, layer, view.key)
            return cached[2]
        layers = [layer + i for i in range(group.size - slot)]
        ready = slot == 0 and all(group.lengths[i] == t - 1 for i in range(group.size))
        if not ready or any(self.pred_queries.get(lay, (None,))[0] != t - 1 for lay in layers):
            return None
        queries = torch.stack([self.pred_queries[lay][1][:, :, -1, :] for lay in layers])  # [G, B, Hq, dim]
        pooled = group.pooled_scores(queries, t - 1, self.predictor.config.dim)  # [G, B, Hkv, t - 1]
        pooled = torch.cat([pooled, pooled.new_zeros(*pooled.shape[:-1], 1)], dim=-1)  # the current token
        indices = newest_rows(self, pooled, keep)
        if indices is None:
            return None
        for i, lay in enumerate(layers[1:], start=1):
            self.ahead[lay] = (t, keep, indices[i])
        group.update(slot, self.predictor, layer, view.key)
        return indices[0]


class GroupKeys:
    """The predictor's own key cache for one producer group: the calibrated channels of every cached
    key of each of its layers, appended as the KV cache grows (amortised doubling), so a decode step
    projects one new key instead of re-reading the whole K cache. Stored channel-major
    ([G, B, Hkv, dim, capacity]): scoring is one matrix-vector product over contiguous rows (~7x
    faster on CPU than against token-major keys), and one for the whole group at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffer: torch.Tensor | None = None
        self.lengths = [0] * size

    def update(self, slot: int, predictor: Predictor, layer: int, key: torch.Tensor) -> torch.Tensor:
        """[B, Hkv, T, dim] projected keys of `key` ([B, Hkv, T, head_dim]), reusing the rows seen before."""
        total = key.shape[2]
        length = self.lengths[slot]
        fresh = self.buffer is None or total < length or self.buffer.shape[1:3] != key.shape[:2]
        start = 0 if fresh else length
        new = predictor.project_keys(layer, key[:, :, start:]).transpose(-1, -2)  # [B, Hkv, dim, new]
        if self.buffer is None or self.buffer.shape[1:3] != key.shape[:2]:
            self.buffer = new.new_empty(self.size, *new.shape[:3], max(2 * total, 64))
            self.lengths = [0] * self.size
        elif total > self.buffer.shape[-1]:
            grown = self.buffer.new_empty(*self.buffer.shape[:-1], 2 * total)
            grown[..., : self.buffer.shape[-1]] = self.buffer
            self.buffer = grown
        self.buffer[slot, ..., start:total] = new
        self.lengths[slot] = total
        return self.buffer[slot, ..., :total].transpose(-1, -2)

    def pooled_scores(self, queries: torch.Tensor, upto: int, dim: int) -> torch.Tensor:
        """[G, B, Hq, dim] one query row per layer -> [G, B, Hkv, upto] scores, max over each GQA group."""
        g, b, hq, _ = queries.shape
        hkv = self.buffer.shape[2]
        grouped = queries.reshape(g, b, hkv, hq // hkv, dim)
        keys = self.buffer[..., :upto].to(queries.dtype)  # [G, B, Hkv, dim, upto]
        return (torch.matmul(grouped, keys) / math.sqrt(dim)).amax(dim=3)
