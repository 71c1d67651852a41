"""Shared fixtures: a tiny random Llama (fast unit tests) and the real embedded model (loaded once)."""

from __future__ import annotations

import pytest
import torch

from core import models
from core.tiny import tiny_model


class TinyTokenizer:
    """Just enough tokenizer for a random model: one id per character, no chat template."""

    chat_template = None
    eos_token_id = None

    def __call__(self, text: str, return_tensors: str = "pt") -> dict:
        return {"input_ids": torch.tensor([[ord(c) % 128 for c in text]])}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + int(i) % 90) for i in ids)


def tiny_llama(seed: int = 0, layers: int = 4, arch: str = "llama") -> models.LoadedModel:
    """core.tiny's random decoder (Llama unless `arch`) with a 128-id character tokenizer, a 256-token
    context and no EOS."""
    lm = tiny_model(seed, layers, tokenizer=TinyTokenizer(), vocab_size=128, max_positions=256,
                    name=f"tiny-{arch}-{seed}", arch=arch)
    lm.model.generation_config.eos_token_id = None
    return lm


@pytest.fixture(scope="session")
def tiny_lm() -> models.LoadedModel:
    return tiny_llama()


@pytest.fixture(scope="session")
def smol() -> models.LoadedModel:
    return models.load()
