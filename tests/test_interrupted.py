"""Long work killed with SIGKILL mid-run (a session's end, an OOM kill) resumes with nothing lost.

`python -m core train` and `python -m core evaluate` run in a subprocess on the tiny model, are killed
once they have saved something, and are run again with the same command: the training ends with the
weights and history of an uninterrupted run, the evaluation with every cell, and neither repeats work
it had finished before the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TRAIN = ["train", "--model", "quick:tiny-random-llama", "--sources", "pydoc", "--schedule", "64x16", "--rows", "8",
         "--dim", "8", "--inner", "16", "--group-layers", "2", "--lr", "0.01", "--save-every", "2"]
EVALUATE = ["evaluate", "--quick", "--policies", "dense,streaming,h2o", "--tasks", "coref",
            "--task-prompts", "question-in-prompt", "--decode-chunks", "0"]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}


def _run(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "core", *args], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start the command, SIGKILL it as soon as `ready()` holds (it must not have finished by then)."""
    process = subprocess.Popen([sys.executable, "-m", "core", *args], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "nothing was saved in time"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _saved_step(folder: Path) -> int:
    try:
        return json.loads((folder / "config.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_training_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run([*TRAIN, "--out", str(whole)])
    _kill_when([*TRAIN, "--out", str(killed)], lambda: _saved_step(killed) >= 6)
    assert _saved_step(killed) < 16
    _run([*TRAIN, "--out", str(killed)])
    history = json.loads((killed / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 17))  # every step once: none lost, none repeated
    expected = json.loads((whole / "history.json").read_text())
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in expected], rel=1e-4)
    got, want = load_file(killed / "predictor.safetensors"), load_file(whole / "predictor.safetensors")
    assert all(torch.allclose(got[name], want[name], atol=1e-5) for name in want)


def _cells(cache: Path) -> list[str]:
    lines = cache.read_text().splitlines() if cache.is_file() else []
    return [json.loads(line)["key"] for line in lines if line.endswith("}")]


def test_an_evaluation_killed_mid_run_resumes_without_repeating_finished_cells(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [*EVALUATE, "--out", str(out), "--cache-dir", str(cache)]
    cells = cache / "eval_tiny-random-llama.jsonl"
    _kill_when(args, lambda: len(_cells(cells)) >= 6)
    before = _cells(cells)
    _run(args)
    after = _cells(cells)
    assert after[: len(before)] == before and len(after) == len(set(after))  # nothing finished was measured again
    doc = json.loads((out / "eval_tiny-random-llama.json").read_text())
    expected = {"attention", "perplexity", "perplexity_long_prompt", "coref/question-in-prompt"}
    assert set(doc["results"]) == expected
    for stage in expected:
        assert set(doc["results"][stage]) == {"dense", "streaming", "h2o"}
