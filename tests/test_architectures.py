"""The decode path and its invariants on every supported decoder (tiny random configs, built offline)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig

from core.budget import Budget
from core.models import ModelLoadError, check_architecture, from_model
from tests.conftest import TinyTokenizer, tiny_llama
from tests.test_policies import EVERY_METHOD, assert_teacher_rows_equal_decode_steps, run

OTHER_ARCHITECTURES = ["mistral", "qwen2", "qwen3"]  # llama: tests/test_policies.py


@pytest.fixture(scope="module", params=OTHER_ARCHITECTURES)
def arch_lm(request):
    return tiny_llama(arch=request.param)


@pytest.mark.parametrize("name", ["oracle", "streaming", "quest", "h2o", "snapkv", "tokenbutler"])
def test_a_budget_past_the_context_equals_dense(arch_lm, name):
    dense = run(arch_lm, "dense", Budget.dense(), steps=6)
    sparse = run(arch_lm, name, Budget(tokens=10_000), steps=6)
    for a, b in zip(dense, sparse, strict=True):
        assert torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_teacher_row_equals_decode_step(arch_lm, name):
    assert_teacher_rows_equal_decode_steps(arch_lm, name, steps=6)


def test_other_decoders_are_refused_naming_the_supported_ones():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128))
    with pytest.raises(ModelLoadError, match="supported decoders: llama, mistral, qwen2, qwen3"):
        from_model(gpt2, TinyTokenizer())
    with pytest.raises(ModelLoadError, match="sliding-window"):
        check_architecture(MistralConfig(sliding_window=4096))
