"""Retrieval task generators: deterministic for a seed, answers where they say, answers only in the context."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from core.models import embedded_model_path
from core.tasks import TASKS, UnknownTaskError, encode_sample, make_samples


@pytest.fixture(scope="module")
def tokenizer():
    folder, file = embedded_model_path()
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=file)


@pytest.mark.parametrize("task", list(TASKS))
def test_samples_are_deterministic_and_vary(task: str) -> None:
    first, again = make_samples(task, 20, seed=1), make_samples(task, 20, seed=1)
    assert first == again
    assert len({s.answer for s in first}) >= 15
    assert make_samples(task, 20, seed=2) != first


@pytest.mark.parametrize("task", list(TASKS))
def test_the_answer_is_recoverable_only_from_the_context(task: str) -> None:
    for sample in make_samples(task, 30, seed=0):
        assert sample.answer.strip() in sample.context
        assert sample.answer.strip() not in sample.question


@pytest.mark.parametrize("task", list(TASKS))
def test_encoded_answer_positions_decode_to_the_answer(tokenizer, task: str) -> None:
    for sample in make_samples(task, 25, seed=0):
        enc = encode_sample(tokenizer, sample)
        answer = enc.input_ids[enc.answer_positions]
        assert tokenizer.decode(answer).strip() == sample.answer.strip()
        assert enc.answer_positions == list(range(enc.answer_positions[0], len(enc.input_ids)))
        assert enc.prompt_len <= enc.answer_positions[0]
        question = tokenizer.decode(enc.input_ids[enc.prompt_len : enc.answer_positions[0]])
        assert question.strip() == sample.question.strip()
        assert 120 < len(enc.input_ids) < 400


def test_unknown_task_and_bad_count_are_refused() -> None:
    with pytest.raises(UnknownTaskError, match="coref"):
        make_samples("sudoku", 3)
    with pytest.raises(ValueError, match="at least 1"):
        make_samples("coref", 0)


@pytest.mark.parametrize("task", list(TASKS))
def test_question_in_the_prompt_leaves_only_the_answer_to_decode(tokenizer, task: str) -> None:
    for sample in make_samples(task, 10, seed=0):
        decoded, in_prompt = encode_sample(tokenizer, sample), encode_sample(tokenizer, sample, question_in_prompt=True)
        assert torch.equal(decoded.input_ids, in_prompt.input_ids)
        assert in_prompt.prompt_len == in_prompt.answer_positions[0] > decoded.prompt_len


@pytest.mark.parametrize(("task", "filler"), [("coref", 1024), ("entities", 4096)])
def test_filler_scales_to_about_the_tokens_asked(tokenizer, task: str, filler: int) -> None:
    for sample in make_samples(task, 3, seed=0, filler_tokens=filler):
        enc = encode_sample(tokenizer, sample)
        assert filler < len(enc.input_ids) < 1.3 * filler + 300
        assert tokenizer.decode(enc.input_ids[enc.answer_positions]).strip() == sample.answer.strip()
    with pytest.raises(ValueError, match="Filler tokens"):
        make_samples(task, 1, filler_tokens=-1)
