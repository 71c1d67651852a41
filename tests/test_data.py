"""The offline corpus: a fixed held-out split, chunks of the asked length, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core import data
from core.data import CorpusError, document_chunks, load_documents, split_of, token_chunks
from core.leakage import HeldoutIndex, overlap
from core.sources import Document, Source, blocks, fortune_text, html_text


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
    docs = list(blocks("long", text))
    assert len(docs) > 1 and all(b.doc_id.startswith("long/") for b in docs)
    assert sum(b.text.count("word") for b in docs) == 15000


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


def test_a_training_paragraph_that_repeats_heldout_text_is_dropped() -> None:
    held = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun all day."
    index = HeldoutIndex.build([held + "\n\nAnother held-out paragraph."])
    near_copy = held.upper().replace(",", "") + " And one more clause."
    kept = "A paragraph about something else entirely, written for the training split only, twelve words."
    text, dropped = index.clean(f"{near_copy}\n\n{kept}\n\nanother HELD-OUT paragraph")
    assert dropped == 2 and text == kept
    assert overlap(index.shingles, [kept]) == 0.0
    assert overlap(index.shingles, [held]) == 1.0


def test_in_order_chunks_are_consecutive_text_of_one_source() -> None:
    tok = WordTokenizer()
    chunks = token_chunks(tok, "train", 32, sources=["pydoc"], order="in-order", seed=0)
    stream = []
    for doc in load_documents("train", ["pydoc"]):
        stream += tok(doc.text)["input_ids"] + [tok.eos_token_id]
    text = " ".join(map(str, stream))
    assert all(" ".join(map(str, c[1:].tolist())) in text for c in chunks[:20])
    with pytest.raises(CorpusError, match="Unknown order"):
        token_chunks(tok, "train", 32, sources=["pydoc"], order="random")


def test_page_and_fortune_text_become_paragraphs() -> None:
    page = "<html><head><title>x</title><style>p{}</style></head><body><nav>menu</nav><h1>Title</h1>"
    page += "<p>First   para.</p><p>Second <b>bold</b> para.</p><script>var a;</script></body></html>"
    assert html_text(page) == "Title\n\nFirst para.\n\nSecond bold para."
    assert fortune_text("one\nline\n%\ntwo\n%\n") == "one\nline\n\ntwo"


def test_outside_text_is_in_neither_split(monkeypatch) -> None:
    with pytest.raises(CorpusError, match="Unknown sources"):
        load_documents("train", ["gnu-info"])
    monkeypatch.setattr(data, "available_outside", lambda: [])
    with pytest.raises(CorpusError, match="not installed"):
        load_documents("outside", ["gnu-info"])


def test_evaluation_chunks_spread_over_sources_and_documents(monkeypatch) -> None:
    """One long document and many short ones per source: chunks alternate sources, each is one source's
    consecutive text, and no document is touched by more than `per_document` chunks."""
    docs = [Document("a/long", "w " * 1000)] + [Document(f"a/{i}", "w " * 30) for i in range(20)]
    docs += [Document(f"b/{i}", "x " * 50) for i in range(30)]
    monkeypatch.setattr(data, "load_documents", lambda split, sources=None: docs)
    chunks = document_chunks(WordTokenizer(), "heldout", 65, count=12, per_document=2, seed=1)
    assert len(chunks) == 12 and all(c.ids.numel() == 65 and c.ids[0] == 1 for c in chunks)
    assert [c.source for c in chunks[:4]] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    touched = [d for c in chunks for d in c.documents]
    assert max(touched.count(d) for d in set(touched)) <= 2 and touched.count("a/long") <= 2
    assert all(d.startswith(c.source + "/") for c in chunks for d in c.documents)
    again = document_chunks(WordTokenizer(), "heldout", 65, count=12, seed=1)  # seeded
    assert [c.documents for c in again] == [c.documents for c in chunks]
    assert len(document_chunks(WordTokenizer(), "heldout", 65, count=500)) < 500  # as many as the cap allows
    with pytest.raises(CorpusError, match="per_document"):
        document_chunks(WordTokenizer(), "heldout", 65, count=3, per_document=0)


def test_a_split_missing_sources_is_named_with_what_installs_them(monkeypatch) -> None:
    present = {n: Source(n, f"pkg-{n}", lambda: None, iter) for n in data.SOURCES}
    monkeypatch.setattr(data, "SOURCES", present)
    assert data.missing_sources("heldout") == [] and data.missing_sources_note("heldout", []) is None
    present["jargon"] = Source("jargon", "jargon-text", lambda: Path("/nonexistent/jargon.txt.gz"), iter)
    assert data.missing_sources("heldout") == ["jargon"]
    assert data.missing_sources("outside") == []
    note = data.missing_sources_note("heldout", data.missing_sources("heldout"))
    assert "jargon: jargon-text" in note and "not comparable" in note
