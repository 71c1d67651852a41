"""What a task sample is, and how it becomes tokens with known answer positions."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

SYLLABLES = ("ka", "vel", "mor", "ti", "zan", "quo", "rhu", "bex", "li", "dra", "osk", "pim", "nu", "fer",
             "gal", "yth", "sev", "aru", "tob", "wen", "cri", "jol", "ump", "eth")


@dataclass(frozen=True)
class TaskSample:
    """A prompt that ends with a question, then the answer the model must reproduce from the context.

    `text = context + question + answer`; the answer is scored, the context is what a policy must keep.
    """

    context: str
    question: str
    answer: str

    @property
    def text(self) -> str:
        return self.context + self.question + self.answer


@dataclass(frozen=True)
class EncodedSample:
    """Token ids (BOS first when the tokenizer has one), the answer's token positions, and where the
    dense prompt ends: by default the question and the answer are decoded token by token under the
    policy; with the question in the prompt (SnapKV's setting) only the answer is."""

    input_ids: torch.Tensor
    answer_positions: list[int]
    prompt_len: int


def made_up_name(rng: random.Random, syllables: int = 3) -> str:
    """A pronounceable word no model has memorised, so it can only be recalled from the context."""
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def encode_sample(
    tokenizer: PreTrainedTokenizerBase, sample: TaskSample, question_in_prompt: bool = False
) -> EncodedSample:
    """Tokenise the whole text at once (as the model would see it) and locate the answer's tokens by offsets;
    the prompt ends before the question, or before the answer with `question_in_prompt`."""
    enc = tokenizer(sample.text, add_special_tokens=False, return_offsets_mapping=True)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    answer_start = len(sample.context) + len(sample.question)
    question_start = len(sample.context)
    answer = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > answer_start and a < len(sample.text)]
    prompt_end = answer_start if question_in_prompt else question_start
    before_question = [i for i, (_, b) in enumerate(enc["offset_mapping"]) if b <= prompt_end]
    if not answer or not before_question:
        raise ValueError(f"Could not locate the answer or the question in {sample.text[-80:]!r}.")
    shift = len(bos)
    return EncodedSample(
        input_ids=torch.tensor(bos + enc["input_ids"], dtype=torch.long),
        answer_positions=[i + shift for i in answer],
        prompt_len=before_question[-1] + 1 + shift,
    )
