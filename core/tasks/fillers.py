"""Filler paragraphs on unrelated topics that stand between a fact and the question about it."""

from __future__ import annotations

import random

PHILOSOPHY = (
    "Philosophers have long asked whether knowledge begins with the senses or with reason. Empiricists "
    "hold that every idea is built from experience, while rationalists argue that some truths are known "
    "before any experience at all.",
    "The Stoics taught that we should distinguish what is in our power from what is not. Our judgements "
    "and choices are ours; fortune, reputation and the weather are not, and worrying about them is wasted effort.",
    "A thought experiment asks whether a ship whose planks are replaced one by one remains the same ship. "
    "The puzzle has no easy answer, and it returns whenever we ask what makes a person the same over time.",
    "Utilitarians judge an action by its consequences for the happiness of everyone affected. Their critics "
    "reply that some acts are wrong whatever good they produce, because people have rights that cannot be traded.",
    "Socrates claimed that he knew only that he knew nothing. His method was to ask questions until the "
    "confident speaker discovered that his definitions did not hold together.",
    "Existentialists argue that existence comes before essence: we are not born with a fixed nature but "
    "make ourselves through the choices we take, and we remain responsible for them.",
)
FOOD = (
    "A good bread needs only flour, water, salt and time. The long rise lets the yeast develop flavour, and "
    "a hot oven with a little steam gives the crust its colour and crackle.",
    "Fresh tomatoes, olive oil and basil make a simple sauce that tastes of summer. Cook it briefly so that "
    "the fruit keeps its brightness, and season it only at the end.",
    "Rice is cooked in many ways around the world: steamed until fluffy, simmered slowly into a creamy "
    "risotto, or fried the next day with eggs, onions and whatever vegetables are left.",
    "Soup is the most forgiving dish in the kitchen. Onions softened in butter, a few root vegetables, a "
    "handful of lentils and enough stock will feed a family on a cold evening.",
    "Cheese makers age their wheels in cool cellars for months. As the cheese rests, its texture firms and "
    "its taste deepens, and a rind forms that protects the paste inside.",
    "Spices travelled for centuries along trade routes from the east. Pepper, cinnamon and cloves were once "
    "worth their weight in silver, and they changed the cooking of every country they reached.",
)
NATURE = (
    "In autumn the forests of the north turn red and gold as the trees draw the green from their leaves. "
    "Soon the branches are bare, and the first snow settles on the quiet paths.",
    "Rivers carve their valleys over thousands of years. A stream that looks gentle in summer can carry "
    "boulders in the spring floods, moving the land a little further toward the sea.",
    "Bees visit hundreds of flowers on a single trip, carrying pollen from one to the next. Without them "
    "many fruits and vegetables would give only a fraction of their harvest.",
    "On a clear night far from any city, thousands of stars are visible, and the pale band of the galaxy "
    "stretches from one horizon to the other.",
    "Desert plants store water in thick stems and leaves and open their pores only at night, when the air "
    "is cool, so that they lose as little moisture as possible.",
)
TOPICS = (PHILOSOPHY, FOOD, NATURE)


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(12, 89), rng.randint(12, 89)
    return f"A quick sum to keep the mind awake: {a} plus {b} equals {a + b}."


CHARS_PER_TOKEN = 4.5  # of this English filler under the SmolLM2 tokenizer (measured: 4.4-4.7)


def filler_paragraphs(rng: random.Random, count: int = 3, tokens: int = 0) -> list[str]:
    """`count` paragraphs, each from a different topic where possible, then an arithmetic statement; with
    `tokens`, paragraphs (an arithmetic statement after every third) until about that many tokens."""
    if tokens <= 0:
        topics = rng.sample(TOPICS, k=min(count, len(TOPICS)))
        topics += [rng.choice(TOPICS) for _ in range(count - len(TOPICS))]
        return [rng.choice(topic) for topic in topics] + [arithmetic(rng)]
    paragraphs: list[str] = []
    while sum(map(len, paragraphs)) < tokens * CHARS_PER_TOKEN:
        paragraphs += [rng.choice(rng.choice(TOPICS)) for _ in range(3)] + [arithmetic(rng)]
    return paragraphs
