"""The shape facts of a base model every layer needs, with nothing above them imported.

`ModelSpec` (sizes + a fingerprint of architecture and weights), the parameter count that every
predictor's overhead is a share of, and the fingerprint a predictor uses to refuse foreign models.
Policies, predictors, checkpoints and the app import this module, never the loader.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

FIRST_SPARSE_LAYER = 1  # layer 0 stays dense for every method, and averages run over layers >= 1 (as the paper)


@dataclass(frozen=True)
class ModelSpec:
    """The shape facts every other module needs, plus a fingerprint of architecture and weights."""

    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    fingerprint: str

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group)."""
        return self.num_heads // self.num_kv_heads

    @property
    def kv_values_per_token(self) -> int:
        """Values the KV cache holds per token (K and V, all layers)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the architecture and a sample of the weights, so predictors can refuse foreign models.

    The sample is read at bf16 precision, so the same weights loaded in fp32 (CPU) or bf16 (CUDA)
    give the same fingerprint."""
    cfg = model.config
    digest = hashlib.sha256()
    arch = [
        cfg.model_type,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.hidden_size,
        cfg.vocab_size,
        cfg.intermediate_size,
    ]
    digest.update(json.dumps(arch).encode())
    samples = [model.get_input_embeddings().weight, model.model.layers[-1].self_attn.k_proj.weight]
    for weight in samples:
        digest.update(weight.detach().flatten()[:4096].to(torch.bfloat16).float().cpu().numpy().round(3).tobytes())
    return digest.hexdigest()[:16]


def spec_from_model(model: torch.nn.Module, name: str) -> ModelSpec:
    """The spec of a built transformers decoder (its config and a fingerprint of its weights)."""
    cfg = model.config
    return ModelSpec(
        name=name,
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_key_value_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        max_context=cfg.max_position_embeddings,
        fingerprint=weights_fingerprint(model),
    )
