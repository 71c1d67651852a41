"""The Space folder: what the page needs is in it and loads from it, the Hub's refusals are caught before
an upload, and an upload sends the folder to a Space (a fake api here: tests never upload)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import space_bundle
from app.space_bundle import ROOT, build, dry_run, upload

# What the page loads at start-up (the shipped figures as traces per figure), printed by a fresh interpreter
# whose `app` and `core` come from its cwd.
PROBE = """
import json, core
from app.results import load_shipped
from app.state import ready_methods
from core.policies.double_sparsity import shipped_ranking
from core.predictor import DEFAULT_DIR as PREDICTOR, Predictor
from core.shadow import DEFAULT_DIR as SHADOW, ShadowPredictor
Predictor.load(PREDICTOR); ShadowPredictor.load(SHADOW); shipped_ranking()
shipped = {name: [len(f.data) for f in v] if isinstance(v, list) else v for name, v in vars(load_shipped()).items()}
print(json.dumps({"core": core.__file__, "ready": ready_methods(), "shipped": shipped}))
"""


def probe(folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("space") / "space")


def test_the_page_loads_the_same_predictors_and_results_from_the_bundle(bundle: Path) -> None:
    from_bundle, from_repo = probe(bundle), probe(ROOT)
    assert Path(from_bundle["core"]).is_relative_to(bundle)
    assert "tokenbutler" in from_bundle["ready"] and "double-sparsity" in from_bundle["ready"]
    assert from_bundle["shipped"]["figures"]
    assert {k: v for k, v in from_bundle.items() if k != "core"} == {k: v for k, v in from_repo.items() if k != "core"}


def test_the_bundle_is_a_space_and_ships_no_history_or_training_data(bundle: Path) -> None:
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {"app.py", "requirements.txt", "README.md", ".gitattributes", "app/space_setup.py", "app/gpu.py"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "runs/", "assets/training/", "assets/eval_cache/"))
                   or n.endswith((".pt", ".png", ".pyc")) for n in names)
    readme = (bundle / "README.md").read_text()
    assert readme.startswith("---\n") and "\napp_file: app.py\n" in readme and "CPU basic" in readme


def test_the_space_runs_the_gradio_it_pins(bundle: Path) -> None:
    """Spaces install gradio at the front matter's sdk_version; requirements.txt must agree with it."""
    sdk = re.search(r"^sdk_version: (\S+)$", (bundle / "README.md").read_text(), flags=re.M)
    assert sdk and f"gradio=={sdk.group(1)}" in (bundle / "requirements.txt").read_text().split()


def test_a_space_installs_no_dev_tools() -> None:
    runtime = (ROOT / "requirements.txt").read_text().lower()
    assert not re.search(r"^(pytest|ruff|playwright|matplotlib)\b", runtime, flags=re.M)
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()


def test_the_shipped_bundle_passes_with_its_binaries_in_lfs(bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert dry_run(bundle)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[1:] == ["lfs", "assets/predictor/predictor.safetensors"] for line in lines)
    assert "total" in lines[-1]


def test_an_unrouted_binary_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = build(tmp_path / "space")
    (folder / "assets" / "predictor" / "optimizer.pkl").write_bytes(b"\x80\x04\x95\x00\x00\x00\x00")
    assert not dry_run(folder)
    refused = capsys.readouterr().err
    assert "assets/predictor/optimizer.pkl: binary but not routed to LFS/Xet" in refused
    assert "predictor.safetensors" not in refused


def test_a_file_over_10_mb_is_refused_even_as_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = build(tmp_path / "space")
    (folder / "assets" / "results" / "eval_huge.json").write_text("0" * (space_bundle.MAX_BYTES + 1))
    assert not dry_run(folder)
    assert "assets/results/eval_huge.json: 10,000,001 bytes, over the 10,000,000-byte limit" in capsys.readouterr().err


class FakeHub:
    """Records what an HfApi would have been asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs) -> str:
        self.calls.append(("create_repo", args, kwargs))
        return "https://huggingface.co/spaces/me/studio"

    def upload_folder(self, **kwargs) -> str:
        self.calls.append(("upload_folder", (), kwargs))
        return "https://huggingface.co/spaces/me/studio/commit/abc"


def test_upload_makes_the_space_exactly_the_folder(tmp_path: Path) -> None:
    hub = FakeHub()
    assert upload(tmp_path, "me/studio", "hf_token", api=hub) == "https://huggingface.co/spaces/me/studio/commit/abc"
    (_, create_args, create), (_, _, sent) = hub.calls
    assert create_args == ("me/studio",) and create["repo_type"] == "space" and create["space_sdk"] == "gradio"
    assert create["exist_ok"] and create["token"] == "hf_token"
    assert sent["folder_path"] == str(tmp_path) and sent["repo_id"] == "me/studio"
    assert sent["repo_type"] == "space" and sent["token"] == "hf_token" and sent["delete_patterns"] == "*"


@pytest.mark.parametrize("lfs_types, uploads", [(space_bundle.LFS_TYPES, 1), (("png",), 0)])
def test_the_command_uploads_only_a_folder_that_passes(monkeypatch, tmp_path: Path, lfs_types: tuple,
                                                       uploads: int) -> None:
    sent = []
    monkeypatch.setattr(space_bundle, "LFS_TYPES", lfs_types)
    monkeypatch.setattr(space_bundle, "upload", lambda folder, repo, token: sent.append((folder, repo, token)) or "")
    code = space_bundle.main(["--out", str(tmp_path / "space"), "--upload", "me/studio", "--token", "t"])
    assert code == (0 if uploads else 1)
    assert sent == [(tmp_path / "space", "me/studio", "t")] * uploads
