"""Offline text corpus for training and held-out evaluation, with a fixed, leak-checked split.

The text comes from the readers in `core.sources` (packages from the registries, plus the model's own
chat answers once generated). The split is fixed per document: a document whose id hashes to 0 mod 10
is held out, whatever sources are installed. On top of that, training paragraphs that repeat held-out
text (of any installed source, the outside sources included) are dropped (`core.leakage`), so packages
that quote each other cannot carry held-out text into training. Split "outside" is the text of
`OUTSIDE_SOURCES`, never trained on: evaluation text from outside every training source.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from core.leakage import HeldoutIndex, overlap
from core.sources import OUTSIDE_SOURCES, SOURCES, TRAINING_SOURCES, Document, source_documents

SPLITS = ("train", "heldout", "outside")
ORDERS = ("shuffled", "in-order")


class CorpusError(ValueError):
    """No text for the requested split or sources."""


def split_of(doc_id: str) -> str:
    """'heldout' for one document in ten, chosen by a hash of its id (stable across machines and sources)."""
    return "heldout" if int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 10 == 0 else "train"


def available_sources() -> list[str]:
    """The training sources installed on this machine (pydoc always)."""
    return [name for name in TRAINING_SOURCES if SOURCES[name].installed()]


def available_outside() -> list[str]:
    """The outside (never trained on) sources installed on this machine."""
    return [name for name in OUTSIDE_SOURCES if SOURCES[name].installed()]


def missing_sources(split: str) -> list[str]:
    """The sources a split draws from by default that are not installed here: without them the split's
    documents, hence an evaluation's chunks and its cached cells, differ from a machine that has them."""
    known, installed = (OUTSIDE_SOURCES, available_outside()) if split == "outside" else (
        TRAINING_SOURCES, available_sources())
    return [name for name in known if name not in installed]


def missing_sources_note(split: str, missing: Sequence[str]) -> str | None:
    """A warning naming a split's `missing` sources (`missing_sources`) and what installs them, or None when
    every source is here."""
    if not missing:
        return None
    return (f"warning: sources {', '.join(missing)} are not installed here, so the {split} text differs from a "
            f"machine that has them: no cached cell of such a run matches and its results are not comparable "
            f"with the shipped ones. Install them ({install_hints(missing)}); docs/results.md, 'Training and "
            f"held-out text', has the command.")


def install_hints(names: Sequence[str]) -> str:
    """What installs each named source."""
    return "; ".join(f"{n}: {SOURCES[n].package}" for n in names)


@dataclass(frozen=True)
class CleanSource:
    """One source's documents per split, training paragraphs that repeat held-out text dropped."""

    train: list[Document]
    heldout: list[Document]
    dropped_paragraphs: int


@lru_cache(maxsize=4)
def _clean_sources(installed: tuple[str, ...], outside: tuple[str, ...]) -> dict[str, CleanSource]:
    """Every installed source split and cleaned against the held-out text of all of them (read once)."""
    raw = {name: source_documents(name) for name in installed}
    heldout = {name: [d for d in docs if split_of(d.doc_id) == "heldout"] for name, docs in raw.items()}
    outside_docs = [d for name in outside for d in source_documents(name)]
    index = HeldoutIndex.build(d.text for docs in heldout.values() for d in docs + outside_docs)
    cleaned: dict[str, CleanSource] = {}
    for name, docs in raw.items():
        train, dropped = [], 0
        for doc in docs:
            if split_of(doc.doc_id) == "heldout":
                continue
            text, count = index.clean(doc.text)
            dropped += count
            if text.strip():
                train.append(Document(doc.doc_id, text))
        cleaned[name] = CleanSource(train, heldout[name], dropped)
    return cleaned


def _checked(names: Sequence[str] | None, known: Sequence[str], installed: list[str]) -> list[str]:
    chosen = list(names) if names is not None else installed
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise CorpusError(f"Unknown sources {unknown}; choose from {', '.join(known)}.")
    missing = [n for n in chosen if n not in installed]
    if missing:
        raise CorpusError(
            f"Sources {missing} are not installed here (installed: {', '.join(installed)}; {install_hints(missing)})."
        )
    return chosen


def load_documents(split: str, sources: Sequence[str] | None = None) -> list[Document]:
    """Every document of a split from the given sources (default: all installed), in each source's order."""
    if split not in SPLITS:
        raise CorpusError(f"Unknown split {split!r}; choose from {', '.join(SPLITS)}.")
    if split == "outside":
        names = _checked(sources, OUTSIDE_SOURCES, available_outside())
        docs = [doc for name in names for doc in source_documents(name)]
    else:
        names = _checked(sources, TRAINING_SOURCES, available_sources())
        clean = _clean_sources(tuple(available_sources()), tuple(available_outside()))
        docs = [doc for name in names for doc in getattr(clean[name], split)]
    if not docs:
        raise CorpusError(f"No {split} documents in sources {names}.")
    return docs


def _cut(stream: list[int], bos: list[int], body: int) -> tuple[list[torch.Tensor], list[int]]:
    """Whole `body`-token chunks (each after BOS) off the front of a stream, and the tail left over."""
    whole = len(stream) // body
    chunks = [torch.tensor(bos + stream[s : s + body], dtype=torch.long) for s in range(0, whole * body, body)]
    return chunks, stream[whole * body :]


def token_chunks(
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    length: int,
    max_chunks: int | None = None,
    sources: Sequence[str] | None = None,
    seed: int = 0,
    order: str = "shuffled",
) -> list[torch.Tensor]:
    """Non-overlapping `length`-token chunks of a split, documents joined by EOS.

    "shuffled": the documents in a seeded random order, chunks in stream order (short mixed text).
    "in-order": each source's documents in their own order, so a long chunk is consecutive text of
    one source (no shuffled fragments); the chunks, not the documents, are then shuffled by `seed`.
    Each chunk starts with BOS when the tokenizer has one, as the model saw text in training.
    """
    if length < 2:
        raise CorpusError(f"Chunk length must be at least 2 tokens, got {length}.")
    if order not in ORDERS:
        raise CorpusError(f"Unknown order {order!r}; choose from {', '.join(ORDERS)}.")
    docs = load_documents(split, sources)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    body = length - len(bos)
    if order == "shuffled":
        random.Random(seed).shuffle(docs)
    chunks: list[torch.Tensor] = []
    stream: list[int] = []
    source = None
    for doc in docs:
        name = doc.doc_id.split("/", 1)[0]
        if order == "in-order" and name != source:
            stream, source = [], name  # a chunk never spans two sources
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + eos
        new, stream = _cut(stream, bos, body)
        chunks += new
        if order == "shuffled" and max_chunks is not None and len(chunks) >= max_chunks:
            return chunks[:max_chunks]
    if not chunks:
        raise CorpusError(f"The {split} split holds fewer than {length} tokens.")
    if order == "in-order":
        random.Random(seed).shuffle(chunks)
    return chunks[:max_chunks] if max_chunks is not None else chunks


@dataclass(frozen=True)
class Chunk:
    """An evaluation chunk: its tokens (BOS first), its source and the documents it spans."""

    ids: torch.Tensor
    source: str
    documents: tuple[str, ...]


def _source_chunks(tokenizer: PreTrainedTokenizerBase, docs: list[Document], length: int) -> dict[str, list[Chunk]]:
    """Per source, its documents' consecutive text (joined by EOS) cut into `length`-token chunks."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    body = length - len(bos)
    by_source: dict[str, list[Chunk]] = {}
    stream: list[int] = []
    owners: list[str] = []  # the document of each token of the stream
    for doc in docs:
        name = doc.doc_id.split("/", 1)[0]
        if name not in by_source:
            by_source[name], stream, owners = [], [], []
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"] + eos
        stream += ids
        owners += [doc.doc_id] * len(ids)
        while len(stream) >= body:
            tokens = torch.tensor(bos + stream[:body], dtype=torch.long)
            by_source[name].append(Chunk(tokens, name, tuple(dict.fromkeys(owners[:body]))))
            stream, owners = stream[body:], owners[body:]
    return by_source


def document_chunks(
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    length: int,
    count: int,
    per_document: int = 2,
    sources: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Chunk]:
    """Up to `count` evaluation chunks of `length` tokens, each consecutive text of one source, taken from
    the sources in turn (seeded order within each) and never more than `per_document` touching one
    document: a measurement over many documents of every source, not over one long document."""
    if length < 2 or count < 1 or per_document < 1:
        raise CorpusError(f"Need length >= 2, count >= 1 and per_document >= 1; got {length}, {count}, {per_document}.")
    rng = random.Random(seed)
    queues = list(_source_chunks(tokenizer, load_documents(split, sources), length).values())
    for queue in queues:
        rng.shuffle(queue)
    used: Counter[str] = Counter()
    picked: list[Chunk] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            while queue and len(picked) < count:
                chunk = queue.pop()
                if all(used[d] < per_document for d in chunk.documents):
                    used.update(chunk.documents)
                    picked.append(chunk)
                    break
    if not picked:
        raise CorpusError(f"The {split} split holds no {length}-token chunk of one source.")
    return picked


def corpus_stats(tokenizer: PreTrainedTokenizerBase) -> dict:
    """Documents and tokens per source and split, paragraphs dropped for leakage, and the shingle overlap left."""
    clean = _clean_sources(tuple(available_sources()), tuple(available_outside()))
    count = lambda docs: sum(len(tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in docs)  # noqa: E731
    stats: dict = {"sources": {}}
    for name, parts in clean.items():
        stats["sources"][name] = {
            "package": SOURCES[name].package,
            "train": {"documents": len(parts.train), "tokens": count(parts.train)},
            "heldout": {"documents": len(parts.heldout), "tokens": count(parts.heldout)},
            "dropped_paragraphs": parts.dropped_paragraphs,
        }
    for name in available_outside():
        docs = source_documents(name)
        stats["sources"][name] = {
            "package": SOURCES[name].package,
            "outside": {"documents": len(docs), "tokens": count(docs)},
        }
    heldout_index = HeldoutIndex.build(d.text for parts in clean.values() for d in parts.heldout)
    raw_train = (d.text for name in clean for d in source_documents(name) if split_of(d.doc_id) == "train")
    stats["heldout_shingles_in_train"] = {
        "before_cleaning": overlap(heldout_index.shingles, raw_train),
        "after_cleaning": overlap(heldout_index.shingles, (d.text for parts in clean.values() for d in parts.train)),
    }
    return stats
