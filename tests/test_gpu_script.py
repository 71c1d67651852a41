"""benchmarks/gpu_issue31.py, issue 31's one GPU script, on CPU: its dry run goes through every section (tiny
shapes, eager, the CPU twin of the captured step) and writes the JSON the device run writes; without CUDA
and without --dry-run it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_issue31.py"
CASES = ["8b-32k-b1", "8b-32k-b4", "8b-128k-b1", "smollm2-8k-b16"]


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env},
    )


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu31") / "gpu_issue31.json"
    proc = run_script("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| goal | target | value | met |" in proc.stdout  # the table at the end
    return json.loads(out.read_text())


def test_every_section_ran_without_error(dry) -> None:
    assert dry["meta"]["dry_run"] is True and dry["meta"]["device"] == "cpu"
    for name in ("kernels", "steps", "model"):
        assert "error" not in dry[name], dry[name].get("traceback")
    assert all("error" not in row for row in dry["steps"]["rows"])


def test_kernel_rows(dry) -> None:
    rows = dry["kernels"]["rows"]
    assert [(r["kernel"], r["option"]) for r in rows] == [("sparse", "default splits"), ("dense", "torch-reference")]
    assert all(r["us_per_layer"] > 0 and r["bandwidth_fraction"] > 0 for r in rows)


def test_step_rows(dry) -> None:
    rows = {r["case"]: r for r in dry["steps"]["rows"]}
    assert list(rows) == CASES
    assert rows["smollm2-8k-b16"]["batch"] == 16 and rows["8b-32k-b4"]["batch"] == 4
    for row in rows.values():
        assert row["dense_backend"] == "torch-reference" and row["speedup"] > 0 and row["tokenbutler_ms"] > 0
        split = row["tokenbutler_gpu_split"]
        assert split["total_ms"] > 0 and split["attention_ms"] + split["topk_sort_ms"] <= split["total_ms"]
    probe = rows["8b-32k-b1"]
    assert probe["eager_dense_ms"] > 0 and probe["graph_vs_eager_dense"] > 0
    for calls in (probe["dense_calls"], probe["tokenbutler_calls"]):
        assert calls["sync_like_per_step"] == 0  # the step reads nothing on the host (item(), copies)


def test_real_model_rows(dry) -> None:
    """The captured (CPU twin) static step decodes what core.decode.generate decodes, same policy, same device."""
    rows = {r["policy"]: r for r in dry["model"]["rows"]}
    assert list(rows) == ["dense", "tokenbutler"]
    for row in rows.values():
        assert len(row["tokens"]["cpu-fp32"]) == dry["model"]["new_tokens"]
        assert row["captured"]["tokens"] == row["tokens"]["cpu-fp32"]
        assert row["eager"]["tokens_per_s"] > 0 and row["captured"]["tokens_per_s"] > 0


def test_goals_are_listed_and_not_judged_in_a_dry_run(dry) -> None:
    goals = dry["goals"]
    assert len(goals) == 8
    assert all(g["met"] is None for g in goals)
    assert all(g["value"] is not None for g in goals)


def test_refuses_without_cuda_unless_dry(tmp_path) -> None:
    out = tmp_path / "g.json"
    proc = run_script("--out", str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
    assert not out.exists()
