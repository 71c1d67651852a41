"""The offline corpus: a fixed held-out split, chunks of the asked length, clear errors."""

from __future__ import annotations

import pytest
import torch

from core import data
from core.data import CorpusError, load_documents, split_of, token_chunks


class WordTokenizer:
    """One id per whitespace-separated word (enough to count and cut chunks)."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [3 + len(word) % 50 for word in text.split()]}


def test_split_is_fixed_by_document_id_and_holds_out_about_a_tenth() -> None:
    ids = [f"doc/{i}" for i in range(2000)]
    held = [i for i in ids if split_of(i) == "heldout"]
    assert 0.07 < len(held) / len(ids) < 0.13
    assert [split_of(i) for i in ids] == [split_of(i) for i in ids]


def test_train_and_heldout_documents_never_overlap() -> None:
    train = {d.doc_id for d in load_documents("train", ["pydoc"])}
    heldout = {d.doc_id for d in load_documents("heldout", ["pydoc"])}
    assert train and heldout and not train & heldout
    assert all(split_of(i) == "heldout" for i in heldout)


def test_chunks_have_the_length_start_with_bos_and_are_seeded() -> None:
    chunks = token_chunks(WordTokenizer(), "train", 64, max_chunks=5, sources=["pydoc"], seed=3)
    assert len(chunks) == 5 and all(c.shape == (64,) and int(c[0]) == 1 for c in chunks)
    again = token_chunks(WordTokenizer(), "train", 64, max_chunks=5, sources=["pydoc"], seed=3)
    assert all(torch.equal(a, b) for a, b in zip(chunks, again, strict=True))
    other = token_chunks(WordTokenizer(), "train", 64, max_chunks=5, sources=["pydoc"], seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(chunks, other, strict=True))


def test_long_sources_are_cut_into_blocks_at_paragraphs() -> None:
    text = "\n\n".join("word " * 500 for _ in range(30))
    blocks = list(data._blocks("long", text))
    assert len(blocks) > 1 and all(b.doc_id.startswith("long/") for b in blocks)
    assert sum(b.text.count("word") for b in blocks) == 15000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"split": "test"}, "Unknown split"), ({"sources": ["wikipedia"]}, "Unknown sources"),
     ({"length": 1}, "at least 2"), ({"length": 10**9}, "fewer than")],
)
def test_bad_requests_say_what_is_wrong(kwargs: dict, message: str) -> None:
    args = {"split": "heldout", "length": 64, "sources": ["pydoc"]} | kwargs
    with pytest.raises(CorpusError, match=message):
        token_chunks(WordTokenizer(), **args)


def test_a_source_that_is_not_installed_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(data, "available_sources", lambda: ["pydoc"])
    with pytest.raises(CorpusError, match="not installed"):
        load_documents("train", ["jargon"])
