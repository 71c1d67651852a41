"""Shared fixtures: a tiny random Llama (fast unit tests) and the real embedded model (loaded once)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from core import models


class TinyTokenizer:
    """Just enough tokenizer for a random model: one id per character, no chat template."""

    chat_template = None
    eos_token_id = None

    def __call__(self, text: str, return_tensors: str = "pt") -> dict:
        return {"input_ids": torch.tensor([[ord(c) % 128 for c in text]])}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + int(i) % 90) for i in ids)


def tiny_llama(seed: int = 0, layers: int = 4) -> models.LoadedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=128,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None
    return models.from_model(model, TinyTokenizer(), name=f"tiny-llama-{seed}")


@pytest.fixture(scope="session")
def tiny_lm() -> models.LoadedModel:
    return tiny_llama()


@pytest.fixture(scope="session")
def smol() -> models.LoadedModel:
    return models.load()
