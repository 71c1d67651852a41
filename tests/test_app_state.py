"""The page's decode thread count: every core but one unless the environment says otherwise."""

from __future__ import annotations

import pytest

from app.state import THREADS_ENV, decode_threads


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (16, 15), (None, 1)])
def test_every_core_but_one_by_default(monkeypatch: pytest.MonkeyPatch, cores: int | None, expected: int) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert decode_threads() == expected


def test_the_environment_decides_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setenv(THREADS_ENV, " 2 ")
    assert decode_threads() == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_says_what_it_wants(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(ValueError, match=THREADS_ENV):
        decode_threads()
