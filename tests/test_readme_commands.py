"""Every Python command shown in README's and docs/results.md's code blocks starts as written: run with --help
from another folder, so `core` must come from the installed package (the Makefile installs it), not from the cwd.
README shows the everyday commands; docs/results.md the command beside every measured figure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
DOCUMENTS = ("README.md", "docs/results.md")
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?python3?\s+(-m\s+core(?:\s+[a-z][\w-]*)?|\S+\.py)")


def readme_commands() -> list[str]:
    """The distinct `python -m core <subcommand>` and `python <script>.py` invocations in the code blocks and
    inline code of README and docs/results.md."""
    text = "\n".join((ROOT / name).read_text() for name in DOCUMENTS)
    found: dict[str, None] = {}
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))  # inline commands too
    for block in blocks + spans:
        for line in block.replace("\\\n", " ").splitlines():
            match = COMMAND.match(line.strip())
            if match:
                found[" ".join(match.group(1).split())] = None
    return list(found)


def test_the_readme_shows_commands() -> None:
    commands = readme_commands()
    assert any(c.startswith("-m core") for c in commands)
    assert any(c.endswith(".py") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command: str, tmp_path: Path) -> None:
    parts = command.split()
    if parts[0].endswith(".py"):
        parts = [str(ROOT / parts[0])]
    done = subprocess.run([sys.executable, *parts, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
