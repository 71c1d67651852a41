"""Two evaluation processes (accelerate, gloo on CPU) share the cells and write the results of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["evaluate", "--quick", "--policies", "dense,oracle,h2o,tova,random", "--tasks", "coref"]
LAUNCHER = Path(sys.executable).parent / "accelerate"


def _run(prefix: list[str], root: Path) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    args = [*ARGS, "--out", str(root / "results"), "--cache-dir", str(root / "cells")]
    done = subprocess.run([*prefix, "-m", "core", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((root / "results" / "eval_tiny-random-llama.json").read_text())


@pytest.mark.skipif(shutil.which("accelerate", path=str(LAUNCHER.parent)) is None,
                    reason="accelerate's launcher is not installed")
def test_two_processes_give_the_json_of_one(tmp_path: Path) -> None:
    one = _run([sys.executable], tmp_path / "one")
    two = _run([str(LAUNCHER), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"], tmp_path / "two")
    shards = sorted(p.name for p in (tmp_path / "two" / "cells").iterdir())
    assert shards == ["eval_tiny-random-llama.jsonl", "eval_tiny-random-llama.rank1.jsonl"], "each process its file"
    assert all((tmp_path / "two" / "cells" / name).stat().st_size > 0 for name in shards), "both measured cells"
    for doc in (one, two):  # what may differ: the wall time and the folders each run was given
        del doc["timing_s"], doc["config"]["out"], doc["config"]["cache_dir"]
    assert two == one
