"""Where the offline corpus's text comes from: one reader per installed package, in a stable order.

Every source installs from the package registries (Debian's packages or Python itself) or is made
here (the model's own chat answers, `core.chatdata`); none downloads at run time. A reader yields
`Document`s in the source's natural order (files sorted by path, long files cut at paragraph ends),
so consecutive documents of one source are consecutive text: long training chunks come from them.

`TRAINING_SOURCES` make up the train and held-out splits; `OUTSIDE_SOURCES` are never trained on
(neither split) and give the evaluation text from outside every training source.
"""

from __future__ import annotations

import gzip
import html.parser
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

ANSWERS_FILE = "answers.jsonl"  # the chat source, one JSON record per line
BLOCK_CHARS = 12_000  # long single files are cut into documents of about this size
PYTHON_DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")
JARGON_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
PERL_PODS = Path("/usr/share/perl/5.36.0/pod")
DEBIAN_HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")
GIT_DOCS = Path("/usr/share/doc/git-doc")
FORTUNES = Path("/usr/share/games/fortunes")
DEBIAN_FAQ = Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")
GNU_INFO = Path("/usr/share/info")


def chat_cache_dir() -> Path:
    """Where the generated chat answers live: assets/corpus/chat (committed, so a training run resumed
    on another machine sees the same corpus), or TOKENBUTLER_CHAT_DIR."""
    default = Path(__file__).resolve().parent.parent / "assets" / "corpus" / "chat"
    return Path(os.environ.get("TOKENBUTLER_CHAT_DIR", default))


@dataclass(frozen=True)
class Document:
    """One unit of the split: an id that decides its split, and its text."""

    doc_id: str
    text: str


@dataclass(frozen=True)
class Source:
    """A named reader; `package` says what to install, `marker` whether it is installed here."""

    name: str
    package: str
    marker: Callable[[], Path | None]
    read: Callable[[], Iterator[Document]]

    def installed(self) -> bool:
        path = self.marker()
        return path is None or path.exists()


def blocks(prefix: str, text: str) -> Iterator[Document]:
    """Cut one long text at paragraph ends into documents of about BLOCK_CHARS, in order."""
    block, size, index = [], 0, 0
    for paragraph in re.split(r"\n\s*\n", text):
        block.append(paragraph)
        size += len(paragraph)
        if size >= BLOCK_CHARS:
            yield Document(f"{prefix}/{index:04d}", "\n\n".join(block))
            block, size, index = [], 0, index + 1
    if block:
        yield Document(f"{prefix}/{index:04d}", "\n\n".join(block))


def _read(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", errors="replace")


def _files(prefix: str, paths: list[Path], root: Path, convert: Callable[[str], str] = str) -> Iterator[Document]:
    """One file after another (sorted by path), each cut into blocks named after the file."""
    for path in sorted(paths):
        yield from blocks(f"{prefix}/{path.relative_to(root)}", convert(_read(path)))


class _HTMLText(html.parser.HTMLParser):
    """Visible text of a page; block elements end paragraphs; scripts, styles and navigation dropped."""

    BLOCK: ClassVar[set[str]] = {"p", "div", "h1", "h2", "h3", "h4", "li", "pre", "tr", "dt", "dd", "table", "br"}
    SKIP: ClassVar[set[str]] = {"script", "style", "head", "nav"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_text(page: str) -> str:
    """Plain text of an HTML page, paragraphs separated by blank lines, runs of spaces collapsed."""
    parser = _HTMLText()
    parser.feed(page)
    text = "".join(parser.parts)
    paragraphs = (re.sub(r"[ \t]+", " ", p).strip() for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)


def fortune_text(raw: str) -> str:
    """A fortune file's entries ('%' lines between them) as paragraphs."""
    return "\n\n".join(entry.strip() for entry in re.split(r"^%\s*$", raw, flags=re.M) if entry.strip())


def _pydoc() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc/{name}", topics[name])


def _python_manual() -> Iterator[Document]:
    for path in sorted(PYTHON_DOC_SOURCES.rglob("*.txt")):
        yield Document(f"python-doc/{path.relative_to(PYTHON_DOC_SOURCES)}", path.read_text(errors="replace"))


def _fortune_files() -> list[Path]:
    return [p for p in FORTUNES.iterdir() if p.is_file() and not p.suffix and not p.is_symlink()]


def _info_manuals() -> list[Path]:
    """The base system's info manuals; Python's own (python3.11-doc ships one) is a training source's text."""
    return [p for p in GNU_INFO.glob("*.info*.gz") if not p.name.startswith("python")]


def read_chat(folder: Path) -> Iterator[Document]:
    """The cached conversations (`core.chatdata` writes them), in the order they were generated."""
    path = folder / ANSWERS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            yield Document(record["id"], record["text"])


def _chat() -> Iterator[Document]:
    yield from read_chat(chat_cache_dir())


def _none() -> None:
    return None


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("pydoc", "Python's pydoc_data (always present)", _none, _pydoc),
        Source("python-doc", "python3.11-doc", lambda: PYTHON_DOC_SOURCES, _python_manual),
        Source(
            "debian-reference",
            "debian-reference-en",
            lambda: DEBIAN_REFERENCE,
            lambda: blocks("debian-reference", _read(DEBIAN_REFERENCE)),
        ),
        Source("jargon", "jargon-text", lambda: JARGON_FILE, lambda: blocks("jargon", _read(JARGON_FILE))),
        Source(
            "perl-doc",
            "perl-doc",
            lambda: PERL_PODS,
            lambda: _files("perl-doc", list(PERL_PODS.glob("*.pod")), PERL_PODS),
        ),
        Source(
            "debian-handbook",
            "debian-handbook",
            lambda: DEBIAN_HANDBOOK,
            lambda: _files("debian-handbook", list(DEBIAN_HANDBOOK.glob("*.html")), DEBIAN_HANDBOOK, html_text),
        ),
        Source(
            "git-doc",
            "git-doc",
            lambda: GIT_DOCS / "git.txt",
            lambda: _files("git-doc", list(GIT_DOCS.glob("*.txt")), GIT_DOCS),
        ),
        Source(
            "fortunes",
            "fortunes",
            lambda: FORTUNES / "literature",
            lambda: _files("fortunes", _fortune_files(), FORTUNES, fortune_text),
        ),
        Source("debian-faq", "debian-faq", lambda: DEBIAN_FAQ, lambda: blocks("debian-faq", _read(DEBIAN_FAQ))),
        Source(
            "chat",
            "python -m core corpus chat (the model's own answers)",
            lambda: chat_cache_dir() / ANSWERS_FILE,
            _chat,
        ),
        Source(
            "gnu-info",
            "GNU info manuals (coreutils, grep, sed, ...; Debian's base system)",
            lambda: GNU_INFO / "coreutils.info.gz",
            lambda: _files("gnu-info", _info_manuals(), GNU_INFO),
        ),
    ]
}
OUTSIDE_SOURCES = ("gnu-info",)
TRAINING_SOURCES = tuple(name for name in SOURCES if name not in OUTSIDE_SOURCES)


def source_documents(name: str) -> list[Document]:
    """The non-empty documents of one source, in the source's order."""
    return [doc for doc in SOURCES[name].read() if doc.text.strip()]
