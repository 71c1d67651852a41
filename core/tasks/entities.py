"""Multi-entity retrieval: several made-up people, each with a made-up code word and a city; after the
fillers, a question asks for one person's code word, so the right entity must be told from the distractors."""

from __future__ import annotations

import random

from core.tasks.base import TaskSample, made_up_name
from core.tasks.fillers import filler_paragraphs

CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Tbilisi", "Montreal", "Perth", "Dakar", "Bergen")


def make_entities(seed: int, filler_tokens: int = 0, people: int = 4) -> TaskSample:
    rng = random.Random(f"entities/{seed}")
    names: list[str] = []
    while len(names) < people:
        name = made_up_name(rng, syllables=2)
        if name not in names:
            names.append(name)
    words = [made_up_name(rng, syllables=3).lower() for _ in names]
    cities = rng.sample(CITIES, k=people)
    facts = " ".join(
        f"{n} lives in {c} and the code word of {n} is {w}." for n, c, w in zip(names, cities, words, strict=True)
    )
    fillers = filler_paragraphs(rng, count=2, tokens=filler_tokens)
    target = rng.randrange(people)
    context = "\n\n".join(["The members of the expedition each received a secret code word.", facts, *fillers])
    who = names[target]
    question = f"\n\nThe expedition member who lives in {cities[target]} is {who}. The code word of {who} is"
    return TaskSample(context=context, question=question, answer=f" {words[target]}")
