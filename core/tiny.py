"""A tiny random Llama: the whole pipeline in seconds (`evaluate --quick`) and the fast unit tests' model."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from core.models import LoadedModel, embedded_model_path, from_model

QUICK_MODEL = "quick:tiny-random-llama"


def tiny_model(
    seed: int = 0,
    layers: int = 3,
    tokenizer: PreTrainedTokenizerBase | None = None,
    vocab_size: int | None = None,
    max_positions: int = 2048,
    name: str = QUICK_MODEL,
) -> LoadedModel:
    """A random Llama (hidden 64, 4 heads, 2 KV heads; 3 layers: Quest is sparse from layer 2).

    The tokenizer defaults to the embedded model's (real text, random output) and the vocabulary to its size.
    """
    if tokenizer is None:
        folder, file = embedded_model_path()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=vocab_size or len(tokenizer),
                         max_position_embeddings=max_positions)
    return from_model(LlamaForCausalLM(config), tokenizer, name=name)
