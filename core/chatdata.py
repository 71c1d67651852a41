"""Chat-formatted training text: the model's own answers to varied instructions, under its chat template.

The page applies the chat template to every prompt, so the predictor should see text shaped like
that: a templated user turn followed by the model's answer. Instructions are drawn (seeded) from
task and topic lists, answers are sampled from the model in batches and appended to
`answers.jsonl` in the cache folder, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.models import LoadedModel
from core.sources import ANSWERS_FILE, read_chat

TASKS = (
    "Explain {t} to a beginner.",
    "Write a short story that involves {t}.",
    "Give three practical tips about {t}.",
    "What are the pros and cons of {t}?",
    "Summarize the history of {t} in a paragraph.",
    "Write a friendly email to a colleague about {t}.",
    "Describe a common misconception about {t} and correct it.",
    "Compare {t} with something similar and explain the difference.",
    "Write a short poem about {t}.",
    "List the steps to get started with {t}.",
    "Answer as a teacher: why does {t} matter?",
    "Write a dialogue between two friends discussing {t}.",
    "What questions should I ask before learning about {t}?",
    "Give an example that illustrates {t}.",
    "Write a product description for something related to {t}.",
    "Explain {t} in exactly five sentences.",
)
TOPICS = (
    "photosynthesis",
    "the water cycle",
    "compound interest",
    "the French Revolution",
    "black holes",
    "sourdough baking",
    "version control with git",
    "recursion in programming",
    "climate change",
    "the immune system",
    "public speaking",
    "gardening in small spaces",
    "the stock market",
    "machine learning",
    "the Roman Empire",
    "volcanoes",
    "time management",
    "healthy sleep",
    "electric cars",
    "the theory of evolution",
    "learning a second language",
    "chess openings",
    "the Internet",
    "renewable energy",
    "meditation",
    "the human heart",
    "supply and demand",
    "ancient Egypt",
    "plate tectonics",
    "writing a resume",
    "prime numbers",
    "bees and pollination",
    "the printing press",
    "cloud computing",
    "marathon training",
    "ocean tides",
    "jazz music",
    "budgeting for a family",
    "the Moon landing",
    "vaccines",
    "databases",
    "origami",
    "the Pythagorean theorem",
    "coral reefs",
    "negotiation",
    "the Renaissance",
    "coffee brewing",
    "password security",
    "the periodic table",
    "first aid",
    "solar eclipses",
    "minimalism",
)


def instructions(count: int, seed: int) -> list[str]:
    """`count` distinct task x topic instructions, in a seeded order."""
    pairs = [task.format(t=topic) for task in TASKS for topic in TOPICS]
    random.Random(seed).shuffle(pairs)
    if count > len(pairs):
        raise ValueError(f"At most {len(pairs)} distinct instructions, asked for {count}.")
    return pairs[:count]


def generate_chat(
    lm: LoadedModel,
    folder: Path,
    count: int = 256,
    seed: int = 0,
    batch: int = 16,
    max_new_tokens: int = 384,
    progress: bool = True,
) -> int:
    """Sample answers for the first `count` instructions not yet in `folder`; returns how many were added."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ANSWERS_FILE
    done = {doc.doc_id for doc in read_chat(folder)}
    todo = [(f"chat/{i:05d}", text) for i, text in enumerate(instructions(count, seed)) if f"chat/{i:05d}" not in done]
    tok = lm.tokenizer
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    added = 0
    for start in tqdm(range(0, len(todo), batch), disable=not progress, desc="chat"):
        part = todo[start : start + batch]
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for _, q in part
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        torch.manual_seed(seed * 100_003 + start)
        with torch.no_grad():
            out = lm.model.generate(
                **enc, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=max_new_tokens, pad_token_id=pad
            )
        with path.open("a") as sink:
            for (doc_id, question), row in zip(part, out[:, enc["input_ids"].shape[1] :], strict=True):
                answer = tok.decode(row, skip_special_tokens=True).strip()
                messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                text = tok.apply_chat_template(messages, tokenize=False)
                sink.write(json.dumps({"id": doc_id, "instruction": question, "text": text}) + "\n")
                added += 1
    return added
