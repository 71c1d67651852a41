"""A tiny random decoder (Llama; Mistral, Qwen2, Qwen3 on request): the whole pipeline in seconds
(`evaluate --quick`) and the fast unit tests' model."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

from core.models import LoadedModel, embedded_model_path, from_model

QUICK_MODEL = "quick:tiny-random-llama"


ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


def _tiny_config(arch: str, **shape):
    """The same small shape in each supported architecture's config (full attention everywhere)."""
    if arch == "llama":
        return LlamaConfig(**shape)
    if arch == "mistral":
        return MistralConfig(sliding_window=None, **shape)
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **shape)
    if arch == "qwen3":
        return Qwen3Config(use_sliding_window=False, head_dim=16, **shape)
    raise ValueError(f"Unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}.")


def tiny_model(
    seed: int = 0,
    layers: int = 3,
    tokenizer: PreTrainedTokenizerBase | None = None,
    vocab_size: int | None = None,
    max_positions: int = 2048,
    name: str = QUICK_MODEL,
    arch: str = "llama",
) -> LoadedModel:
    """A random decoder (hidden 64, 4 heads, 2 KV heads; 3 layers: Quest is sparse from layer 2).

    The tokenizer defaults to the embedded model's (real text, random output) and the vocabulary to its size.
    """
    if tokenizer is None:
        folder, file = embedded_model_path()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    torch.manual_seed(seed)
    config = _tiny_config(
        arch, num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=vocab_size or len(tokenizer), max_position_embeddings=max_positions,
    )
    return from_model(AutoModelForCausalLM.from_config(config), tokenizer, name=name)
