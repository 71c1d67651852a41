"""The ShadowLLM predictor: layer 0's output over the prompt -> the importance of every head and neuron.

One network for all layers (ShadowLLM, unlike DejaVu's one per layer). Its input is layer 0's output
pooled over the prompt ('mean' by default; 'last', ShadowLLM's last prompt token, predicts no better than
the static mask here: docs/shadowllm.md), standardized per vector. A shared trunk (with dropout: a few
hundred prompts train it) feeds a full head output (L x H) and a low-rank neuron output
(width -> rank -> L x F), so every neuron gets its own score within about 1% of the base model's
parameters. Outputs live in the per-layer normalized space of the targets. The checkpoint also carries
the static mask: the training prompts' average normalized importance, a baseline and the page's reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from core.checkpoint import load_weights, read_config, save_network
from core.shadow.importance import POOLS, UnitScores
from core.spec import ModelSpec, parameter_count

WEIGHTS_FILE = "shadow.safetensors"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "assets" / "shadow"


@dataclass(frozen=True)
class ShadowConfig:
    """Shape of the predictor and the base model it was trained for."""

    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_size: int
    fingerprint: str
    base_model: str
    criterion: str = "plainact"
    continuation: int = 0  # targets from the tokens after each training prompt (0: from the prompt itself)
    pool: str = "mean"
    width: int = 512
    neuron_rank: int = 16
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"Unknown pooling {self.pool!r}; choose from {', '.join(POOLS)}.")

    @property
    def target(self) -> str:
        """What the predictor learned, in words (the tab and the report say it)."""
        return target_words(self.criterion, self.continuation)

    @classmethod
    def for_spec(cls, spec: ModelSpec, **overrides) -> ShadowConfig:
        return cls(num_layers=spec.num_layers, num_heads=spec.num_heads, intermediate_size=spec.intermediate_size,
                   hidden_size=spec.hidden_size, fingerprint=spec.fingerprint, base_model=spec.name, **overrides)


def target_words(criterion: str, continuation: int) -> str:
    span = f"the {continuation} tokens after each prompt" if continuation else "the prompt itself"
    return f"{criterion} of {span}"


def standardized(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per vector. ShadowLLM min-max scales instead; measured here, that trains worse
    (one large dimension squeezes every other into a sliver of [0, 1])."""
    return (x - x.mean(dim=-1, keepdim=True)) / x.std(dim=-1, keepdim=True).clamp_min(1e-6)


class ShadowPredictor(nn.Module):
    """Shared trunk, a head output and a low-rank neuron output; static (dataset-average) scores as buffers."""

    def __init__(self, config: ShadowConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.trunk = nn.Sequential(nn.Linear(c.hidden_size, c.width), nn.GELU(), nn.Dropout(c.dropout))
        self.heads = nn.Linear(c.width, c.num_layers * c.num_heads)
        self.neuron_code = nn.Linear(c.width, c.neuron_rank)
        self.neurons = nn.Linear(c.neuron_rank, c.num_layers * c.intermediate_size)
        self.register_buffer("static_heads", torch.ones(c.num_layers, c.num_heads))
        self.register_buffer("static_neurons", torch.ones(c.num_layers, c.intermediate_size))

    def forward(self, feature: torch.Tensor) -> UnitScores:
        """[B, hidden] pooled layer-0 outputs -> normalized scores [B, L, H] and [B, L, F]."""
        h = self.trunk(standardized(feature.float()))
        c = self.config
        return UnitScores(self.heads(h).unflatten(-1, (c.num_layers, c.num_heads)),
                          self.neurons(self.neuron_code(h)).unflatten(-1, (c.num_layers, c.intermediate_size)))

    def predict(self, features: dict[str, torch.Tensor]) -> UnitScores:
        """Scores from a capture's pooled features (this predictor's pooling picked)."""
        return self(features[self.config.pool])

    def static(self) -> UnitScores:
        """The static mask's scores: the training prompts' mean normalized importance."""
        return UnitScores(self.static_heads, self.static_neurons)

    def set_static(self, static: UnitScores) -> None:
        """Store the dataset average and start the output biases there (training then learns the departures)."""
        with torch.no_grad():
            self.static_heads.copy_(static.heads)
            self.static_neurons.copy_(static.neurons)
            self.heads.bias.copy_(static.heads.flatten())
            self.neurons.bias.copy_(static.neurons.flatten())

    def parameter_count(self) -> int:
        return parameter_count(self)

    def overheads(self, base_parameters: int) -> dict[str, float]:
        """Parameters, absolute and relative to the base model."""
        return {"parameters": self.parameter_count(), "parameter_share": self.parameter_count() / base_parameters}

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """Weights (and static scores) as safetensors + a JSON config carrying the base model's fingerprint."""
        return save_network(self, folder, WEIGHTS_FILE, asdict(self.config), extra)

    @classmethod
    def load(cls, folder: str | Path, spec: ModelSpec | None = None) -> ShadowPredictor:
        """Load a saved predictor; with `spec`, refuse one trained for another base model."""
        config = read_config(folder, "ShadowLLM predictor", "python -m core shadow-train", spec)
        predictor = cls(ShadowConfig(**config))
        load_weights(predictor, folder, WEIGHTS_FILE)
        return predictor.eval()
