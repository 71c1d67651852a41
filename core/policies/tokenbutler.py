"""TokenButler: a learned, query-aware predictor ranks past tokens per head at every step.

Forward pre-hooks on the producer layers' attention read the normed hidden state (and RoPE cos/sin)
of the tokens being processed and store each predicted layer's importance queries; the attention
function then asks `scores`, which scores the cached keys' calibrated channels. Nothing is
evicted: a token dropped at one step can be read again when a later query needs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.checkpoint import CONFIG_FILE, PredictorMismatchError
from core.kernels.select_cpu import CodeQuery, select_topk
from core.keycodes import KeyCodes
from core.keysummary import values_per_token
from core.policies.base import LayerView, Policy
from core.policies.driver import choose_newest
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
    # layer -> (position of the queries' first row, a device tensor; queries [B, Hq, T, dim]), set by the hooks
    pred_queries: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)
    key_cache: dict[int, GroupKeys] = field(default_factory=dict, init=False, repr=False)  # per producer
    ahead: dict[int, tuple[int, int, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)
    _checked: set[int] = field(default_factory=set, init=False, repr=False)
    _rotary: torch.nn.Module | None = field(default=None, init=False, repr=False)  # the model's RoPE tables

    def __post_init__(self) -> None:
        if not isinstance(self.predictor, Predictor):
            self.predictor = shipped_predictor() if self.predictor is None else Predictor.load(self.predictor)

    def reset(self) -> None:
        self.pred_queries = {}
        self.key_cache = {}
        self.ahead = {}

    def _keys(self, layer: int) -> tuple[GroupKeys, int]:
        """The key cache of `layer`'s group (`Predictor.key_group`) and the layer's slot in it."""
        first = self.predictor.key_group(layer)
        group = self.key_cache.get(first)
        if group is None:
            size = 1 if self.predictor.own_query else len(self.predictor.layers_of(first))
            group = self.key_cache[first] = GroupKeys(size, self._rope)
        return group, layer - first

    def _rope(self, start: int, stop: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's RoPE tables (cos, sin) at positions [start, stop): what a learned key code needs."""
        if self._rotary is None:
            raise ValueError("This predictor's learned key code needs the model's rotary embedding (rotary_emb).")
        return self._rotary(like, torch.arange(start, stop, device=like.device)[None])

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
        self._rotary = getattr(model.model, "rotary_emb", None)

        def make_hook(producer: int):
            def hook(module, args, kwargs):
                hidden = kwargs["hidden_states"]
                cos, sin = kwargs["position_embeddings"]
                position_ids = kwargs.get("position_ids")  # a device tensor, never read on the host here
                start = position_ids[0, 0] if position_ids is not None else torch.zeros((), dtype=torch.long)
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
        importance = self.predictor.layer_queries(view.layer, queries[:, :, rows, :], view.query)
        return self.predictor.score_projected(importance, keys)

    def decode_indices(self, view: LayerView, keep: int) -> torch.Tensor | None:
        """A decode step's rows for every layer of a key group at once, at the group's first layer.

        The current token is always read, so the past tokens' scores decide everything, and with queries
        predicted ahead they are known before the later layers of the group run: one fused selection over
        the group's stored key codes (`core.kernels.select_cpu`) serves all its layers (with the layer's
        own query, a group is one layer). None when the group's key cache is not yet filled up to this
        step (the first step after a prefill)."""
        t, layer = view.context, view.layer
        cached = self.ahead.pop(layer, None)
        group, slot = self._keys(layer)
        if cached is not None and cached[:2] == (t, keep):
            group.append(slot, self.predictor, layer, view.key)
            return cached[2]
        layers = [layer + i for i in range(group.size - slot)]
        ready = slot == 0 and all(group.lengths[i] == t - 1 for i in range(group.size))
        fresh = [lay in self.pred_queries and int(self.pred_queries[lay][0]) == t - 1 for lay in layers]
        if not ready or not all(fresh):
            return None
        newest = view.query[:, :, -1:, :]
        queries = torch.stack(  # [G, B, Hq, dim]
            [
                self.predictor.layer_queries(lay, self.pred_queries[lay][1][:, :, -1:, :], newest)[:, :, 0]
                for lay in layers
            ]
        )
        g, b, hq, dim = queries.shape
        hkv = view.key.shape[1]
        per_row = queries.reshape(g * b * hkv, hq // hkv, dim)  # the code cache's rows: layer, batch, KV head

        def best(start: int, stop: int, count: int) -> torch.Tensor:
            return select_topk(group.codes, per_row, dim**-0.5, count, start, stop, t - 1).view(g, b, hkv, count)

        indices = choose_newest(self, t, keep, best, (g, b, hkv), view.key.device)
        if indices is None:
            return None
        for i, lay in enumerate(layers[1:], start=1):
            self.ahead[lay] = (t, keep, indices[i])
        group.append(slot, self.predictor, layer, view.key)
        return indices[0]

    def static_prefill(self, view: LayerView, capacity: int) -> KeyCodes:
        """The layer's calibrated key channels of the prompt, stored in a code cache of `capacity` tokens."""
        b, hkv, t, _ = view.key.shape
        config = self.predictor.config
        codes = KeyCodes(b * hkv, config.dim, config.key_bits, capacity, view.key.device)
        rope = self._rope(0, t, view.key) if self.predictor.learned_keys else None
        codes.write(0, self.predictor.pick_keys(view.layer, view.key, rope).reshape(b * hkv, t, config.dim))
        # the slot the producer's hook fills at every step, there from the start: a compiled step sees the same keys
        self.pred_queries.setdefault(
            view.layer, (view.positions[-1], view.key.new_zeros(b, view.query.shape[1], 1, config.dim))
        )
        return codes

    def static_codes(self, state: KeyCodes, view: LayerView) -> CodeQuery:
        """The new key's channels written at its device-side position; the producer hook's queries meet them."""
        b, hq, _, _ = view.query.shape
        hkv, dim = view.key.shape[1], self.predictor.config.dim
        rope = self._rotary(view.key, view.positions[None]) if self.predictor.learned_keys else None
        new = self.predictor.pick_keys(view.layer, view.key.index_select(2, view.positions), rope)
        state.write_at(view.positions, new.reshape(b * hkv, 1, dim))
        predicted = self.pred_queries[view.layer][1][:, :, -1:, :]  # this step's (its hook ran first)
        queries = self.predictor.layer_queries(view.layer, predicted, view.query[:, :, -1:, :])[:, :, 0]
        return CodeQuery(state, queries.reshape(b * hkv, hq // hkv, dim), dim**-0.5, "max")


class GroupKeys:
    """The predictor's own key cache for one key group: the calibrated channels of every cached
    key of each of its layers, stored at the predictor's `key_bits` (`core.keycodes.KeyCodes`, one row
    per layer, batch and KV head) and appended as the KV cache grows, so a decode step projects one new
    key instead of re-reading the whole K cache, and one fused selection scores the whole group."""

    def __init__(
        self, size: int, rope: Callable[[int, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> None:
        self.size = size
        self.rope = rope  # RoPE tables at positions [start, stop), read only for a learned key code
        self.codes: KeyCodes | None = None
        self.lengths = [0] * size
        self.batch_heads = (0, 0)

    def _rows(self, slot: int) -> slice:
        count = self.batch_heads[0] * self.batch_heads[1]
        return slice(slot * count, (slot + 1) * count)

    def append(self, slot: int, predictor: Predictor, layer: int, key: torch.Tensor) -> None:
        """Store the channels of `key` ([B, Hkv, T, head_dim]) not stored yet for this slot (all of them
        when a new, shorter or reshaped sequence starts over)."""
        b, hkv, total, _ = key.shape
        config = predictor.config
        if self.codes is None or self.batch_heads != (b, hkv):
            self.codes = KeyCodes(self.size * b * hkv, config.dim, config.key_bits, max(2 * total, 64), key.device)
            self.lengths = [0] * self.size
            self.batch_heads = (b, hkv)
        start = 0 if total < self.lengths[slot] else self.lengths[slot]
        if total > start:
            rope = self.rope(start, total, key) if self.rope is not None and predictor.learned_keys else None
            picked = predictor.pick_keys(layer, key[:, :, start:], rope)
            self.codes.write(start, picked.reshape(b * hkv, total - start, config.dim), self._rows(slot))
        self.lengths[slot] = total

    def update(self, slot: int, predictor: Predictor, layer: int, key: torch.Tensor) -> torch.Tensor:
        """[B, Hkv, T, dim] stored channels of `key`, read back (the unfused path: traces, teacher forcing)."""
        self.append(slot, predictor, layer, key)
        b, hkv, total, _ = key.shape
        return self.codes.values(total, self._rows(slot)).view(b, hkv, total, predictor.config.dim)
