"""Keep held-out text out of training at the text level, not only at the document level.

The split is per document, but packages quote each other (pydoc's topics are extracts of the
reference manual), so the same paragraph can sit in a training document of one source and a
held-out document of another. Paragraphs are compared after normalization (lower case, words only):
a training paragraph is dropped when it equals a held-out paragraph or when at least half of its
10-word shingles occur in the held-out text. `overlap` measures what is left.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SHINGLE = 10  # words per shingle
DROP_SHARE = 0.5  # a training paragraph with this share of held-out shingles is dropped
_WORD = re.compile(r"[a-z0-9]+")
_PARAGRAPH = re.compile(r"\n\s*\n")


def words(text: str) -> list[str]:
    """The normalized words of a text."""
    return _WORD.findall(text.lower())


def shingles(tokens: list[str]) -> set[int]:
    """Hashes of every run of SHINGLE consecutive words."""
    return {hash(" ".join(tokens[i : i + SHINGLE])) for i in range(len(tokens) - SHINGLE + 1)}


def paragraphs(text: str) -> list[str]:
    return _PARAGRAPH.split(text)


@dataclass
class HeldoutIndex:
    """The held-out text as normalized paragraphs and shingles."""

    paragraphs: set[str]
    shingles: set[int]

    @classmethod
    def build(cls, texts: Iterable[str]) -> HeldoutIndex:
        paras, shing = set(), set()
        for text in texts:
            for paragraph in paragraphs(text):
                tokens = words(paragraph)
                if tokens:
                    paras.add(" ".join(tokens))
                    shing |= shingles(tokens)
        return cls(paras, shing)

    def leaks(self, paragraph: str) -> bool:
        """Whether a training paragraph repeats held-out text."""
        tokens = words(paragraph)
        if not tokens:
            return False
        if " ".join(tokens) in self.paragraphs:
            return True
        own = shingles(tokens)
        return bool(own) and len(own & self.shingles) >= DROP_SHARE * len(own)

    def clean(self, text: str) -> tuple[str, int]:
        """The text without its leaking paragraphs, and how many were dropped."""
        kept = [p for p in paragraphs(text) if not self.leaks(p)]
        return "\n\n".join(kept), len(paragraphs(text)) - len(kept)


def overlap(heldout: set[int], train_texts: Iterable[str]) -> float:
    """Share of the held-out shingles that also occur somewhere in the training text."""
    if not heldout:
        return 0.0
    seen: set[int] = set()
    for text in train_texts:
        for paragraph in paragraphs(text):
            seen |= shingles(words(paragraph)) & heldout
    return len(seen) / len(heldout)
