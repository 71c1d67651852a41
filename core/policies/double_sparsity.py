"""Double Sparsity (Yang et al. 2024): approximate attention from a few offline-calibrated channels, top-k per head.

Offline, each head's channels are ranked by their mean |q_i k_i| over calibration text (the paper's
"qk" outlier criterion; `core.calibrate`). At every step the query's values in the `channels` heaviest
channels (fixed offline per KV head) meet a label cache holding the same channels of every cached key;
the approximate attention picks the rows to read, then attention runs exactly over them. No training,
and nothing is evicted.

Departures, for this model's grouped-query attention: channels are ranked per KV head (the mean over
its group's query heads), so one label cache serves the group, and the group's approximate attention
is pooled by its mean. The default, 32 channels of 64 stored in 8 bits (`core.keysummary`: one 16-bit
scale per token and KV head), reads exactly as many bytes per token as the shipped TokenButler
predictor's key cache, and is the best of the label-cache formats of that size measured in
docs/predictor.md (16 channels at 16 bits, 32 at 8, 64 at 4). The paper's ratio, 1/8 of the head
dimension, would be 8 channels; its label cache is stored at 4 bits (`bits=4`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.checkpoint import CONFIG_FILE, PredictorMismatchError, load_weights, read_config, save_network
from core.kernels.select_cpu import CodeQuery, select_topk
from core.keycodes import KeyCodes
from core.keysummary import check_bits, stored, values_per_token
from core.policies.base import LayerView, Policy
from core.policies.driver import choose_newest
from core.spec import ModelSpec, weights_fingerprint

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "double_sparsity"
WEIGHTS_FILE = "channels.safetensors"
CALIBRATE_COMMAND = "python -m core calibrate"


class ChannelRanking(nn.Module):
    """Per layer and KV head, the head dimension's channels from most to least important (a buffer, so
    it is saved, digested and moved like a network's weights)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, config: dict | None = None) -> None:
        super().__init__()
        self.register_buffer("order", torch.arange(head_dim).repeat(layers, kv_heads, 1))
        self.config = dict(config or {})

    @classmethod
    def from_importance(cls, importance: torch.Tensor, config: dict) -> ChannelRanking:
        """[L, Hkv, D] importance -> channels in descending importance (ties to the lower channel)."""
        ranking = cls(*importance.shape, config=config)
        ranking.order.copy_(importance.argsort(dim=-1, descending=True, stable=True))
        return ranking

    def chosen(self, layer: int, channels: int) -> torch.Tensor:
        """[Hkv, r] the `channels` heaviest channels of each KV head of `layer`, in ascending channel order."""
        return self.order[layer, :, :channels].sort(dim=-1).values

    def save(self, folder: str | Path) -> Path:
        return save_network(self, folder, WEIGHTS_FILE, self.config, None)

    @classmethod
    def load(cls, folder: str | Path, spec: ModelSpec | None = None) -> ChannelRanking:
        config = read_config(folder, "Double Sparsity channel calibration", CALIBRATE_COMMAND, spec)
        ranking = cls(config["layers"], config["kv_heads"], config["head_dim"], config)
        load_weights(ranking, folder, WEIGHTS_FILE)
        return ranking


@functools.lru_cache(maxsize=1)
def shipped_ranking() -> ChannelRanking:
    """The calibration in assets/double_sparsity, read once per process."""
    return ChannelRanking.load(DEFAULT_DIR)


@dataclass(eq=False)
class DoubleSparsityPolicy(Policy):
    name = "double-sparsity"
    description = "Approximate attention from 32 calibrated heavy channels in 8 bits, top-k (Double Sparsity)."
    pool = "mean"

    channels: int = 32
    bits: int = 8  # how the label cache is stored (16, 8 or 4 bits)
    ranking: ChannelRanking | str | Path | None = None  # None: the shipped calibration; a path: one saved there
    codes: dict[int, KeyCodes] = field(default_factory=dict, init=False, repr=False)  # layer -> stored labels
    channel_index: dict[tuple, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"Double Sparsity needs at least one channel, got {self.channels}.")
        check_bits(self.bits)
        if not isinstance(self.ranking, ChannelRanking):
            self.ranking = shipped_ranking() if self.ranking is None else ChannelRanking.load(self.ranking)

    @classmethod
    def available(cls) -> bool:
        return (DEFAULT_DIR / CONFIG_FILE).is_file()

    def reset(self) -> None:
        self.codes = {}

    def attach(self, model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """No hooks; refuses a calibration made for another base model."""
        found = weights_fingerprint(model)
        if found != self.ranking.config.get("fingerprint"):
            raise PredictorMismatchError(
                f"The Double Sparsity calibration was made for {self.ranking.config.get('base_model')!r} "
                f"(fingerprint {self.ranking.config.get('fingerprint')}); this model's fingerprint is {found}. "
                f"Calibrate one for it with `{CALIBRATE_COMMAND} --model <source> --out <folder>`."
            )
        return []

    def side_reads(self, past: torch.Tensor, kept: torch.Tensor, head_dim: int) -> float:
        """The label cache, read whole at every step: `channels` codes (and a scale below 16 bits) per past token."""
        return float(past.sum()) * values_per_token(min(self.channels, head_dim), self.bits) / (2 * head_dim)

    def _chosen(self, view: LayerView) -> torch.Tensor:
        """[Hkv, r] the view's layer's calibrated channels on its device, looked up once per layer."""
        channels = min(self.channels, view.query.shape[-1])
        key = (view.layer, channels, view.key.device)
        if key not in self.channel_index:
            self.channel_index[key] = self.ranking.chosen(view.layer, channels).to(view.key.device)
        return self.channel_index[key]

    def _label_cache(self, view: LayerView, chosen: torch.Tensor) -> torch.Tensor:
        """[B, Hkv, T, r] the chosen channels of every key as stored: a decode step reads the layer's stored
        label codes back (`_stored_labels`), any other pass gathers afresh."""
        b, hkv, t, _ = view.key.shape
        if not _is_decode_step(view):
            return stored(label_rows(view.key, chosen), self.bits).view(b, hkv, t, -1)
        return self._stored_labels(view, chosen).values(t).view(b, hkv, t, -1)

    def scores(self, view: LayerView) -> torch.Tensor:
        """Softmax of the approximate logits q[channels] . k[channels] (the true scale), per query head."""
        b, hq, q, d = view.query.shape
        hkv = view.key.shape[1]
        chosen = self._chosen(view)  # [Hkv, r]
        labels = self._label_cache(view, chosen)
        grouped = view.query.float().reshape(b, hkv, (hq // hkv) * q, d)
        index = chosen[None, :, None, :].expand(b, hkv, grouped.shape[2], -1)
        picked = torch.gather(grouped, -1, index)
        logits = (torch.matmul(picked, labels.transpose(-1, -2)) * view.scale).view(b, hq, q, -1)
        return torch.softmax(logits.masked_fill(~view.causal(), float("-inf")), dim=-1)

    def _stored_labels(self, view: LayerView, chosen: torch.Tensor) -> KeyCodes:
        """The layer's label cache as stored codes (`core.keycodes`), extended by a decode step's new rows;
        started over for a new sequence (another shape, fewer tokens, or another last stored row)."""
        b, hkv, t, _ = view.key.shape

        def labels(start: int, stop: int) -> torch.Tensor:
            return label_rows(view.key[:, :, start:stop], chosen)

        codes = self.codes.get(view.layer)
        n = 0 if codes is None else codes.length
        if codes is None or codes.rows != b * hkv or n > t or not codes.holds(n - 1, labels(n - 1, n)):
            codes = self.codes[view.layer] = KeyCodes(b * hkv, chosen.shape[-1], self.bits, 2 * t, view.key.device)
            n = 0
        if n < t:
            codes.write(n, labels(n, t))
        return codes

    def decode_indices(self, view: LayerView, keep: int) -> torch.Tensor | None:
        """A decode step's rows by one fused selection over the stored label cache (`core.kernels.select_cpu`):
        each head's softmax of the approximate logits, averaged over its group, as `scores` pools them."""
        if not _is_decode_step(view):
            return None
        b, hkv, t = view.key.shape[0], view.key.shape[1], view.context
        query = self._code_query(self._stored_labels(view, self._chosen(view)), view)

        def best(start: int, stop: int, count: int) -> torch.Tensor:
            chosen = select_topk(query.cache, query.queries, query.multiplier, count, start, stop, t, query.pool)
            return chosen.view(b, hkv, count)

        return choose_newest(self, t, keep, best, (b, hkv), view.key.device)

    def static_prefill(self, view: LayerView, capacity: int) -> KeyCodes:
        """The prompt's labels stored in a label cache of `capacity` tokens."""
        b, hkv = view.key.shape[:2]
        chosen = self._chosen(view)
        codes = KeyCodes(b * hkv, chosen.shape[-1], self.bits, capacity, view.key.device)
        codes.write(0, label_rows(view.key, chosen))
        return codes

    def static_codes(self, state: KeyCodes, view: LayerView) -> CodeQuery:
        """The new key's label written at its device-side position; the query's chosen channels meet the cache."""
        state.write_at(view.positions, label_rows(view.key.index_select(2, view.positions), self._chosen(view)))
        return self._code_query(state, view)

    def _code_query(self, codes: KeyCodes, view: LayerView) -> CodeQuery:
        """The newest query row's chosen channels [B * Hkv, group, r] against the label codes, softmax-mean pooled."""
        b, hq, _, d = view.query.shape
        hkv = view.key.shape[1]
        chosen = self._chosen(view)  # [Hkv, r]
        grouped = view.query[:, :, -1, :].float().reshape(b, hkv, hq // hkv, d)
        picked = torch.gather(grouped, -1, chosen[None, :, None, :].expand(b, -1, hq // hkv, -1))
        return CodeQuery(codes, picked.reshape(b * hkv, hq // hkv, -1), view.scale, "softmax-mean")


def label_rows(key: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """[B, Hkv, n, D] keys -> [B * Hkv, n, r] their `chosen` ([Hkv, r]) channels, the label cache's rows."""
    b, hkv, n, _ = key.shape
    picked = torch.gather(key.float(), -1, chosen[None, :, None, :].expand(b, hkv, n, -1))
    return picked.reshape(b * hkv, n, -1)


def _is_decode_step(view: LayerView) -> bool:
    """One query row, the newest token: the pass that extends the stored label cache."""
    return view.positions.numel() == 1 and int(view.positions[0]) == view.context - 1
