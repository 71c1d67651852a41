"""Two training processes (accelerate, gloo on CPU) reach the loss of one, each on its own chunks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = [
    "train", "--model", "quick:tiny-random-llama", "--sources", "pydoc", "--schedule", "64x12", "--rows", "16",
    "--dim", "8", "--inner", "32", "--group-layers", "2", "--lr", "0.01", "--save-every", "100",
]
TOLERANCE = 0.25  # relative difference of the last four steps' mean loss (2 processes average 2 chunks a step)


def _run(prefix: list[str], out: Path) -> list[dict]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run([*prefix, "-m", "core", *ARGS, "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "history.json").read_text())


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate's launcher is not installed")
def test_two_processes_reach_the_loss_of_one(tmp_path: Path) -> None:
    one = _run([sys.executable], tmp_path / "one")
    launcher = str(Path(sys.executable).parent / "accelerate")
    two = _run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"], tmp_path / "two")
    meta = json.loads((tmp_path / "two" / "config.json").read_text())
    assert meta["processes"] == 2 and two[-1]["tokens_seen"] == 2 * one[-1]["tokens_seen"]
    last = lambda history: sum(h["loss"] for h in history[-4:]) / 4  # noqa: E731
    assert last(one) < one[0]["loss"] and last(two) < two[0]["loss"]
    assert abs(last(two) - last(one)) <= TOLERANCE * last(one)
