"""The TokenButler predictor: which past tokens each head of each layer will need, per query.

Design (generation "2.5", see docs/predictor.md):
- Queries: a few *producers*, one every `group_layers` layers starting at layer 1. Producer p reads the
  attention input (normed hidden state) of layer p at the current token and predicts, for layers
  p .. p+group_layers-1 and every query head, a small importance query of `dim` values.
- Keys: no learned key network. For each (layer, KV head) we keep `dim/2` RoPE frequency pairs of the
  real post-RoPE keys already in the KV cache, chosen once by calibration (largest E|q_f||k_f|).
  Selecting whole RoPE pairs commutes with the rotation, so the predicted query is rotated with the
  same cos/sin and the score q'.k' stays relative-position aware; a generic linear key projection
  would not (it would need the absolute position from the hidden state).
- Score of past token j for head h: q'_h . k'_{j, kv(h)} / sqrt(dim): a low-rank, query-aware guess
  of the true logit. The extra cache is `dim` values per (layer >= 1, KV head) per token.
- Where the importance query comes from (`query`): "ahead" (the paper's design) predicts it from the
  producer's hidden state, layers before it is needed, so a layer's selection is known early enough to
  prefetch; "own" takes the layer's real query at the calibrated pairs, weighted per head and pair, plus
  the producer's prediction as a learned correction. "own" starts as Double Sparsity at the same channels
  (weights sqrt(dim/head_dim), correction zero), so Double Sparsity lies inside what it can learn; it
  gives up the prefetch.
- What the extra cache holds (`keys`): "pairs", the calibrated pairs of the real key; or "learned", a
  learned projection of the key before RoPE (the cached key rotated back to position 0) to `dim` values,
  rotated again at the calibrated pairs' frequencies. Any projection keeps the score relative-position
  aware this way, and it starts as the calibrated pairs (the projection picks them), so a learned code
  can only move from there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from core.checkpoint import load_weights, read_config, save_network
from core.keysummary import check_bits, stored, values_per_token
from core.spec import ModelSpec, parameter_count

WEIGHTS_FILE = "predictor.safetensors"
QUERY_SOURCES = ("ahead", "own")
KEY_CODES = ("pairs", "learned")
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "predictor"


@dataclass(frozen=True)
class PredictorConfig:
    """Shape of the predictor and the base model it was trained for."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    fingerprint: str
    base_model: str
    dim: int = 16
    inner: int = 128
    group_layers: int = 4
    first_layer: int = 1
    key_bits: int = 16  # how the key channels are stored in the extra cache (16, 8 or 4: core.keysummary)
    query: str = "ahead"  # one of QUERY_SOURCES: predicted ahead of the layer, or the layer's own query
    keys: str = "pairs"  # one of KEY_CODES: the key's calibrated pairs, or a learned projection of it

    @classmethod
    def for_spec(cls, spec: ModelSpec, **overrides) -> PredictorConfig:
        return cls(
            num_layers=spec.num_layers,
            num_heads=spec.num_heads,
            num_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            hidden_size=spec.hidden_size,
            fingerprint=spec.fingerprint,
            base_model=spec.name,
            **overrides,
        )

    @property
    def predicted_layers(self) -> list[int]:
        return list(range(self.first_layer, self.num_layers))

    @property
    def producer_layers(self) -> list[int]:
        return self.predicted_layers[:: self.group_layers]


class Producer(nn.Module):
    """Hidden state of one layer -> importance queries for the next `group_layers` layers."""

    def __init__(self, hidden: int, inner: int, outputs: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, inner)
        self.down = nn.Linear(inner, outputs)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.up(self.norm(hidden))))


def _reindex_pairs(predictor: Predictor, _incompatible) -> None:
    """After a state dict is loaded, rebuild the index tables from the loaded pairs."""
    predictor._index_pairs()


class Predictor(nn.Module):
    """All producers plus the calibrated key channels; scores every predicted layer's past tokens."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        if config.dim % 2 or config.dim > config.head_dim:
            raise ValueError(f"dim must be even and <= head_dim ({config.head_dim}), got {config.dim}.")
        check_bits(config.key_bits)
        if config.query not in QUERY_SOURCES:
            raise ValueError(f"query must be one of {QUERY_SOURCES}, got {config.query!r}.")
        if config.keys not in KEY_CODES:
            raise ValueError(f"keys must be one of {KEY_CODES}, got {config.keys!r}.")
        self.config = config
        per_layer = config.num_heads * config.dim
        self.producers = nn.ModuleDict(
            {
                str(p): Producer(config.hidden_size, config.inner, per_layer * len(self.layers_of(p)))
                for p in config.producer_layers
            }
        )
        if self.own_query:  # starts as Double Sparsity: the real query's channels, no correction
            for producer in self.producers.values():
                nn.init.zeros_(producer.down.weight)
                nn.init.zeros_(producer.down.bias)
            start = math.sqrt(config.dim / config.head_dim)  # the score q'.k'/sqrt(dim) is then the channels' logit
            self.own_weight = nn.Parameter(torch.full((config.num_layers, config.num_heads, config.dim // 2), start))
        default_pairs = torch.arange(config.dim // 2).expand(config.num_layers, config.num_kv_heads, -1)
        self.register_buffer("pairs", default_pairs.clone())
        self.register_buffer("channels", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("rope_columns", torch.empty(0, dtype=torch.long), persistent=False)
        if self.learned_keys:  # [L, Hkv, dim, head_dim], set to pick the calibrated pairs by `set_pairs`
            self.key_projection = nn.Parameter(torch.zeros(config.num_layers, config.num_kv_heads, config.dim,
                                                           config.head_dim))
        self._index_pairs()
        self._pick_pairs()
        self.register_load_state_dict_post_hook(_reindex_pairs)

    def _index_pairs(self) -> None:
        """Index tables derived from `pairs`, built once instead of at every decode step: `channels`
        [L, Hkv, dim] of the real key (each pair's first half, then its second halves) and
        `rope_columns` [L, Hq, dim/2] of the RoPE tables each query head's pairs rotate by."""
        group = self.config.num_heads // self.config.num_kv_heads
        self.channels = torch.cat([self.pairs, self.pairs + self.config.head_dim // 2], dim=-1)
        self.rope_columns = self.pairs.repeat_interleave(group, dim=1).contiguous()

    def _pick_pairs(self) -> None:
        """Set the learned key projection to the one that picks the calibrated pairs (no-op for "pairs")."""
        if self.learned_keys:
            with torch.no_grad():
                self.key_projection.zero_().scatter_(-1, self.channels[..., None], 1.0)

    @property
    def own_query(self) -> bool:
        return self.config.query == "own"

    @property
    def learned_keys(self) -> bool:
        return self.config.keys == "learned"

    def key_group(self, layer: int) -> int:
        """The first layer of the layers whose importance queries are known at once, so one fused pass
        selects for all of them: the producer's group ahead of the layer, the layer alone with its own query."""
        if self.own_query:
            return layer
        return layer - (layer - self.config.first_layer) % self.config.group_layers

    def layers_of(self, producer: int) -> list[int]:
        """Layers whose queries producer `producer` predicts."""
        last = min(producer + self.config.group_layers, self.config.num_layers)
        return list(range(producer, last))

    def set_pairs(self, pairs: torch.Tensor) -> None:
        """Install calibrated RoPE pairs [num_layers, num_kv_heads, dim/2]: the one way to change `pairs`
        besides loading a state dict (both rebuild the index tables derived from them)."""
        self.pairs.copy_(pairs.to(self.pairs))
        self._index_pairs()
        self._pick_pairs()

    def key_channels(self, layer: int) -> torch.Tensor:
        """[Hkv, dim] channel indices of the real key: the selected pairs' first halves, then second halves."""
        return self.channels[layer]

    def pick_keys(self, layer: int, key: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> torch.Tensor:
        """[B, Hkv, T, head_dim] post-RoPE keys -> [B, Hkv, T, dim], before storing: the calibrated channels,
        or the learned code, which needs the keys' RoPE tables `rope` (cos, sin [B or 1, T, head_dim])."""
        if not self.learned_keys:
            idx = self.channels[layer].to(key.device)
            return torch.gather(key, -1, idx[None, :, None, :].expand(key.shape[0], -1, key.shape[2], -1))
        if rope is None:
            raise ValueError("A learned key code needs the keys' RoPE tables (cos, sin).")
        cos, sin = (table[:, None].to(self.key_projection.dtype) for table in rope)  # [B, 1, T, head_dim]
        half = self.config.head_dim // 2
        x, y = key[..., :half].to(cos.dtype), key[..., half:].to(cos.dtype)
        c, s = cos[..., :half], sin[..., :half]
        unrotated = torch.cat([x * c + y * s, y * c - x * s], dim=-1)  # the key at position 0
        code = torch.einsum("bhtd,hcd->bhtc", unrotated, self.key_projection[layer])
        columns = self.pairs[layer].to(key.device)  # [Hkv, dim/2]: each KV head's frequencies
        c, s = (table[:, 0][..., columns].permute(0, 2, 1, 3) for table in (cos, sin))  # [B, Hkv, T, dim/2]
        a, b = code[..., : self.config.dim // 2], code[..., self.config.dim // 2 :]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    def project_keys(self, layer: int, key: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> torch.Tensor:
        """[B, Hkv, T, head_dim] post-RoPE keys -> [B, Hkv, T, dim]: what the extra cache holds, read back
        at its `key_bits` (training sees the same stored keys as decoding)."""
        return stored(self.pick_keys(layer, key, rope), self.config.key_bits)

    def queries(self, producer: int, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> dict:
        """Rotated importance queries {layer: [B, Hq, T, dim]} from hidden [B, T, E] and RoPE cos/sin.

        Rotated in the producer's own layout [B, T, G, Hq, dim], with the RoPE tables read at every
        head's pairs by one index, and only then viewed per layer (the same values as rotating per head)."""
        cfg = self.config
        out = self.producers[str(producer)](hidden.to(self.producers[str(producer)].up.weight.dtype))
        b, t = hidden.shape[:2]
        layers = self.layers_of(producer)
        g, half = len(layers), cfg.dim // 2
        out = out.view(b, t, g, cfg.num_heads, cfg.dim)
        columns = self.rope_columns[layers[0] : layers[-1] + 1].reshape(-1).to(cos.device)

        def at_pairs(table: torch.Tensor) -> torch.Tensor:  # [B, T, head_dim] -> [B, T, G, Hq, half]
            return table.index_select(-1, columns).view(table.shape[0], t, g, cfg.num_heads, half).to(out.dtype)

        c, s = at_pairs(cos), at_pairs(sin)
        x, y = out[..., :half], out[..., half:]
        rotated = torch.cat([x * c - y * s, y * c + x * s], dim=-1).permute(2, 0, 3, 1, 4)  # [G, B, Hq, T, dim]
        return {layer: rotated[i] for i, layer in enumerate(layers)}

    def layer_queries(self, layer: int, predicted: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """[B, Hq, Q, dim] importance queries of `layer` from the producer's `predicted` ones and the layer's
        `real` post-RoPE queries [B, Hq, Q, head_dim]: the prediction as is ("ahead"), or the real query at
        the layer's calibrated pairs, weighted per head and pair, plus the prediction ("own"). A weight per
        pair scales both halves alike, so the result still rotates with the keys' channels."""
        if not self.own_query:
            return predicted
        group = self.config.num_heads // self.config.num_kv_heads
        idx = self.channels[layer].repeat_interleave(group, dim=0).to(real.device)  # [Hq, dim]
        b, hq, q, _ = real.shape
        picked = torch.gather(real, -1, idx[None, :, None, :].expand(b, hq, q, -1))
        weight = self.own_weight[layer].repeat(1, 2)[None, :, None, :]  # [1, Hq, 1, dim]
        return (picked.to(weight.dtype) * weight + predicted.to(weight.dtype)).to(predicted.dtype)

    def scores(self, layer: int, query: torch.Tensor, key: torch.Tensor,
               rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """[B, Hq, Q, dim] predicted queries x [B, Hkv, T, head_dim] real keys -> [B, Hq, Q, T] logits."""
        return self.score_projected(query, self.project_keys(layer, key, rope))

    def score_projected(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[B, Hq, Q, dim] x [B, Hkv, T, dim] projected keys -> [B, Hq, Q, T] logits.

        The query heads of a GQA group are stacked into one matmul against their shared keys, so the
        keys are never copied per head."""
        b, hq, q, dim = query.shape
        hkv = keys.shape[1]
        stacked = query.reshape(b, hkv, (hq // hkv) * q, dim)
        logits = torch.matmul(stacked, keys.to(query.dtype).transpose(-1, -2)) / math.sqrt(self.config.dim)
        return logits.view(b, hq, q, -1)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """Weights as safetensors + a JSON config carrying the base model's fingerprint."""
        return save_network(self, folder, WEIGHTS_FILE, asdict(self.config), extra)

    @classmethod
    def load(cls, folder: str | Path, spec: ModelSpec | None = None, device: str | torch.device = "cpu") -> Predictor:
        """Load a saved predictor; with `spec`, refuse one trained for another base model."""
        predictor = cls(PredictorConfig(**read_config(folder, "predictor", "python -m core train", spec)))
        load_weights(predictor, folder, WEIGHTS_FILE)
        return predictor.to(device).eval()

    def parameter_count(self) -> int:
        return parameter_count(self)

    def overheads(self, spec: ModelSpec, base_parameters: int) -> dict[str, float]:
        """Parameters relative to the base model and extra per-token cache relative to its KV cache."""
        per_head = values_per_token(self.config.dim, self.config.key_bits)
        extra_cache = len(self.config.predicted_layers) * self.config.num_kv_heads * per_head
        return {
            "parameters": self.parameter_count(),
            "parameter_share": self.parameter_count() / base_parameters,
            "cache_values_per_token": extra_cache,
            "cache_share": extra_cache / spec.kv_values_per_token,
        }


def calibrate_pairs(
    captures: list[dict[int, tuple[torch.Tensor, torch.Tensor]]], config: PredictorConfig
) -> torch.Tensor:
    """Pick, per (layer, KV head), the RoPE pairs with the largest mean |q_f| |k_f| over the captured passes.

    captures: per pass, {layer: (query [B,Hq,T,D], key [B,Hkv,T,D])} post-RoPE.
    """
    half_d = config.head_dim // 2
    group = config.num_heads // config.num_kv_heads
    weight = torch.zeros(config.num_layers, config.num_kv_heads, half_d)
    for capture in captures:
        for layer, (query, key) in capture.items():
            qn = torch.hypot(query[..., :half_d], query[..., half_d:]).float()  # [B,Hq,T,half]
            kn = torch.hypot(key[..., :half_d], key[..., half_d:]).float()  # [B,Hkv,T,half]
            qn = qn.view(qn.shape[0], config.num_kv_heads, group, -1, half_d).mean(dim=(0, 2, 3))
            weight[layer] += (qn * kn.mean(dim=(0, 2))).cpu()
    return weight.topk(config.dim // 2, dim=-1).indices.sort(dim=-1).values
