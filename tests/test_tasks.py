"""Retrieval task generators: deterministic for a seed, answers where they say, answers only in the context."""

from __future__ import annotations

import pytest
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
