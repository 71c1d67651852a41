"""Co-referential retrieval in the published shape: a made-up place is named early, unrelated paragraphs
follow, and a question that refers back must be answered with the place's name."""

from __future__ import annotations

import random

from core.tasks.base import TaskSample, made_up_name
from core.tasks.fillers import filler_paragraphs

INTROS = (
    "Last spring our family travelled to a small town in the mountains that none of us had visited before. "
    "We stayed for two weeks, walked every morning and ate every evening by the fire. The place is:",
    "My grandmother was born in a village by the sea, where the fishing boats leave before dawn and return "
    "at noon with their nets full. She spoke of it often. The place is:",
    "The research station where the team spent the winter sits on a plateau above the ice, three days from "
    "the nearest harbour. The place is:",
    "Every summer the orchestra gives a concert in an old castle courtyard, and people come from far away "
    "to hear it under the open sky. The place is:",
)
QUESTIONS = (
    "Now, think back to the beginning. Where did our story take place? The place is:",
    "Remember the place mentioned at the start. What was it called? The place is:",
    "Question: which place was described in the first paragraph? The place is:",
)


def make_coref(seed: int, filler_tokens: int = 0) -> TaskSample:
    rng = random.Random(f"coref/{seed}")
    name = made_up_name(rng, syllables=rng.randint(2, 3))
    parts = [f"{rng.choice(INTROS)} {name}.", *filler_paragraphs(rng, count=3, tokens=filler_tokens)]
    return TaskSample(context="\n\n".join(parts) + "\n\n", question=rng.choice(QUESTIONS), answer=f" {name}")
