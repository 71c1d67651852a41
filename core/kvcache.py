"""A KV cache that never copies itself: rows are written into buffers reserved up front.

transformers' DynamicCache concatenates the whole cache at every step in every layer, O(context)
copying that dense and sparse decoding both pay and that hides what reading fewer rows saves.
`PreallocatedLayer` reserves `capacity` rows (prompt + new tokens; doubled if ever outrun) and hands
attention a view of the filled part, so a decode step writes one row and reads only what attention
reads. The view keeps each head's rows contiguous; gathering selected rows never copies the cache.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's K/V in reserved buffers; `keys`/`values` are views of the filled rows."""

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._reserve(key_states, value_states, max(self.capacity, key_states.shape[-2]))
        self.keys, self.values = self._keys[:, :, :0], self._values[:, :, :0]
        self.is_initialized = True

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, rows: int) -> None:
        """Buffers of `rows` rows holding what is filled so far."""
        filled = 0 if self._keys is None else self.keys.shape[-2]
        b, h, _, dk = key_states.shape
        keys = key_states.new_empty(b, h, rows, dk)
        values = value_states.new_empty(b, h, rows, value_states.shape[-1])
        if filled:
            keys[:, :, :filled] = self.keys
            values[:, :, :filled] = self.values
        self._keys, self._values = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._reserve(key_states, value_states, max(end, 2 * self._keys.shape[-2]))
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def reset(self) -> None:
        self._keys = self._values = None
        super().reset()


def preallocated_cache(config: PretrainedConfig, capacity: int) -> Cache:
    """One `PreallocatedLayer` of `capacity` rows per decoder layer."""
    layers = config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(layers)])


def fork_cache(cache: Cache, capacity: int) -> Cache:
    """A copy of a filled cache with room for `capacity` rows, so several runs can decode from one prefill."""
    layers = []
    for old in cache.layers:
        layer = PreallocatedLayer(capacity)
        layer.update(old.keys, old.values)
        layers.append(layer)
    return Cache(layers=layers)
