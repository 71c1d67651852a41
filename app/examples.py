"""Example prompts chosen to show the point: a fact stated early must be read again much later.

A rule that ignores the query (a recent window, permanent eviction) tends to drop the early tokens;
a query-aware method finds them again when the question arrives.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.state import default_method

FILLER = (
    "The harbour was quiet that season. Fishing boats came in late and left before dawn, and the gulls "
    "followed them out past the breakwater. The market opened at six and closed at noon; the bakery on the "
    "corner sold bread until it ran out, usually around ten. In the afternoons the wind turned and the "
    "smell of salt and diesel drifted up the hill towards the old church. Nobody hurried. The post arrived "
    "twice a week by ferry, and the ferry itself was often late because of the tide. Children played on "
    "the slipway and the harbour master pretended not to see them. "
)


@dataclass(frozen=True)
class Example:
    """A prompt with the settings that show it best."""

    title: str
    prompt: str
    method: str
    ratio: float
    max_new_tokens: int


def coreference_prompt(paragraphs: int = 3) -> str:
    """A name introduced once, then filler, then a question only that name answers."""
    return (
        "Dr. Ilse Marwick-Okafor arrived on the island in March to run the lighthouse. "
        + FILLER * paragraphs
        + "Question: who arrived on the island in March to run the lighthouse? Answer with the full name."
    )


def locker_prompt(lockers: int = 48, asked: int = 17, seed: int = 7) -> str:
    """A long list of locker codes, then a question about one of them."""
    rng = random.Random(seed)
    lines = [f"Locker {n}: code {rng.randint(1000, 9999)}." for n in range(1, lockers + 1)]
    return "Here are the locker codes.\n" + "\n".join(lines) + f"\nWhat is the code of locker {asked}?"


CHAT_PROMPT = "Explain in two sentences why the sky is blue."

EXAMPLES = [
    Example("Co-reference after filler", coreference_prompt(), default_method(), 0.25, 24),
    Example("Long recall (locker codes)", locker_prompt(), default_method(), 0.25, 16),
    Example("Plain chat", CHAT_PROMPT, default_method(), 0.5, 48),
]
