"""Offline text corpus for training and held-out evaluation.

Documents come from text that installs from the package registries: Python's own documentation as
shipped with the interpreter (`pydoc_data.topics`, always present) and, when their Debian packages are
installed, the Python 3.11 manual sources (python3.11-doc), the Debian Reference (debian-reference-en)
and the Jargon File (jargon-text). The split is fixed per document: a document whose id hashes to 0
mod 10 is held out, so training never sees a held-out document whatever sources are installed.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

SPLITS = ("train", "heldout")
PYTHON_DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")
JARGON_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
BLOCK_CHARS = 12_000  # long single-file sources are cut into documents of about this size


class CorpusError(ValueError):
    """No text for the requested split or sources."""


@dataclass(frozen=True)
class Document:
    """One unit of the split: an id that decides its split, and its text."""

    doc_id: str
    text: str

    @property
    def split(self) -> str:
        return split_of(self.doc_id)


def split_of(doc_id: str) -> str:
    """'heldout' for one document in ten, chosen by a hash of its id (stable across machines and sources)."""
    return "heldout" if int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 10 == 0 else "train"


def _pydoc() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc/{name}", topics[name])


def _python_manual() -> Iterator[Document]:
    for path in sorted(PYTHON_DOC_SOURCES.rglob("*.txt")):
        yield Document(f"python-doc/{path.relative_to(PYTHON_DOC_SOURCES)}", path.read_text(errors="replace"))


def _blocks(prefix: str, text: str) -> Iterator[Document]:
    """Cut one long text at paragraph ends into documents of about BLOCK_CHARS."""
    block, size, index = [], 0, 0
    for paragraph in re.split(r"\n\s*\n", text):
        block.append(paragraph)
        size += len(paragraph)
        if size >= BLOCK_CHARS:
            yield Document(f"{prefix}/{index:04d}", "\n\n".join(block))
            block, size, index = [], 0, index + 1
    if block:
        yield Document(f"{prefix}/{index:04d}", "\n\n".join(block))


def _gzip_blocks(prefix: str, path: Path) -> Callable[[], Iterator[Document]]:
    return lambda: _blocks(prefix, gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))


SOURCES: dict[str, tuple[Path | None, Callable[[], Iterator[Document]]]] = {
    "pydoc": (None, _pydoc),
    "python-doc": (PYTHON_DOC_SOURCES, _python_manual),
    "debian-reference": (DEBIAN_REFERENCE, _gzip_blocks("debian-reference", DEBIAN_REFERENCE)),
    "jargon": (JARGON_FILE, _gzip_blocks("jargon", JARGON_FILE)),
}


def available_sources() -> list[str]:
    """The sources installed on this machine (pydoc always)."""
    return [name for name, (path, _) in SOURCES.items() if path is None or path.exists()]


def _source_documents(name: str) -> list[Document]:
    """The non-empty documents of one source, both splits."""
    return [doc for doc in SOURCES[name][1]() if doc.text.strip()]


def load_documents(split: str, sources: Sequence[str] | None = None) -> list[Document]:
    """Every document of a split from the given sources (default: all installed), in a stable order."""
    if split not in SPLITS:
        raise CorpusError(f"Unknown split {split!r}; choose from {', '.join(SPLITS)}.")
    installed = available_sources()
    names = list(sources) if sources is not None else installed
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise CorpusError(f"Unknown sources {unknown}; choose from {', '.join(SOURCES)}.")
    missing = [n for n in names if n not in installed]
    if missing:
        raise CorpusError(f"Sources {missing} are not installed here (installed: {', '.join(installed)}).")
    docs = [doc for name in names for doc in _source_documents(name) if doc.split == split]
    if not docs:
        raise CorpusError(f"No {split} documents in sources {names}.")
    return docs


def token_chunks(
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    length: int,
    max_chunks: int | None = None,
    sources: Sequence[str] | None = None,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Non-overlapping `length`-token chunks of a split, documents joined by EOS, in a seeded shuffled order.

    Each chunk starts with BOS when the tokenizer has one, as the model saw text in training.
    """
    if length < 2:
        raise CorpusError(f"Chunk length must be at least 2 tokens, got {length}.")
    docs = load_documents(split, sources)
    random.Random(seed).shuffle(docs)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = length - len(bos)
    chunks: list[torch.Tensor] = []
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
        whole = len(stream) // body
        for start in range(0, whole * body, body):
            chunks.append(torch.tensor(bos + stream[start : start + body], dtype=torch.long))
            if max_chunks is not None and len(chunks) >= max_chunks:
                return chunks
        stream = stream[whole * body :]  # the tail carries over to the next document
    if not chunks:
        raise CorpusError(f"The {split} split holds fewer than {length} tokens.")
    return chunks


def corpus_stats(tokenizer: PreTrainedTokenizerBase, sources: Sequence[str] | None = None) -> dict[str, dict]:
    """Documents and tokens per source and split (for the README's corpus description)."""
    stats: dict[str, dict] = {}
    for name in sources or available_sources():
        docs = _source_documents(name)  # read once, counted per split
        for split in SPLITS:
            chosen = [d for d in docs if d.split == split]
            tokens = sum(len(tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in chosen)
            stats.setdefault(name, {})[split] = {"documents": len(chosen), "tokens": tokens}
    return stats
