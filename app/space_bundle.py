"""Build the exact folder a Hugging Face Space runs, check it as the Hub would, and upload it.

Pushing the repository drags its history along (checkpoints, figures), and the Hub rejects any binary
file that is not stored with LFS/Xet. So the Space gets only what the page runs and reads, with a
.gitattributes routing binaries to LFS, uploaded with huggingface_hub's upload_folder: no history
travels. The check refuses what the Hub would reject (an unrouted binary) and anything over 10 MB.

    python -m app.space_bundle --out build/space                          # build, list, check
    HF_TOKEN=... python -m app.space_bundle --upload <you>/<space>        # ... then upload
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# What the page runs and reads at runtime, as globs from the repository root. A loader that starts
# reading another asset adds its pattern here (tests/test_space_bundle.py loads them from a bundle).
RUNTIME_FILES = (
    "app.py",
    "requirements.txt",
    "app/*.py",
    "core/**/*.py",
    "assets/predictor/*",  # TokenButler's predictor (core.predictor.DEFAULT_DIR)
    "assets/double_sparsity/*",  # Double Sparsity's channel calibration
    "assets/shadow/*",  # ShadowLLM's predictor (core.shadow.DEFAULT_DIR)
    "assets/results/eval_*.json",  # the Budgets tab's shipped figures (app.results)
    "assets/results/eval_*.md",  # ... and its full report
    "assets/results/decode_cpu.json",  # its decode speed figures (app.speed)
    "assets/results/gpu_decode*.json",
)
LFS_TYPES = ("safetensors", "gguf", "pt", "bin", "npy", "npz", "png", "jpg", "jpeg", "webp", "gif")
MAX_BYTES = 10_000_000  # the Hub's limit for a file outside LFS/Xet; we hold every file to it
SNIFF_BYTES = 8000  # git calls a file binary when its first 8000 bytes hold a NUL


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the bundle, POSIX
    size: int
    binary: bool
    lfs: bool


def runtime_files(root: Path = ROOT) -> list[Path]:
    """The files RUNTIME_FILES names under `root`, each once, in order."""
    found = {p for pattern in RUNTIME_FILES for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    return sorted(found)


def readme_text() -> str:
    """The Space's README: its configuration (front matter) and a short page about the app."""
    return (HERE / "SPACE_README_HEADER.md").read_text() + (HERE / "SPACE_README_BODY.md").read_text()


def gitattributes_text() -> str:
    return "".join(f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_TYPES)


def build(out: Path, root: Path = ROOT) -> Path:
    """Write the Space folder at `out` afresh: the runtime files, README.md and .gitattributes."""
    shutil.rmtree(out, ignore_errors=True)
    for src in runtime_files(root):
        dest = out / src.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    (out / "README.md").write_text(readme_text())
    (out / ".gitattributes").write_text(gitattributes_text())
    return out


def lfs_patterns(folder: Path) -> list[str]:
    """The patterns the folder's .gitattributes sends to LFS (filter=lfs)."""
    attributes = folder / ".gitattributes"
    lines = attributes.read_text().splitlines() if attributes.is_file() else []
    return [words[0] for words in (line.split() for line in lines) if "filter=lfs" in words[1:]]


def routed(path: str, patterns: list[str]) -> bool:
    """git's matching, as far as a bundle needs it: a pattern without '/' matches the file name at any depth."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path if "/" in p else name, p.lstrip("/")) for p in patterns)


def is_binary(path: Path) -> bool:
    """Binary as git and the Hub see it: a NUL near the start, or bytes that are not UTF-8."""
    data = path.read_bytes()
    if b"\0" in data[:SNIFF_BYTES]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def inventory(folder: Path) -> list[Entry]:
    """Every file of the folder with its size, whether it is binary and whether LFS takes it."""
    patterns = lfs_patterns(folder)
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        entries.append(Entry(rel, path.stat().st_size, is_binary(path), routed(rel, patterns)))
    return entries


def problems(entries: list[Entry]) -> list[str]:
    """Why the Hub would reject the folder (an unrouted binary), or why we do (a file over MAX_BYTES)."""
    found = [f"{e.path}: binary but not routed to LFS/Xet by .gitattributes" for e in entries if e.binary and not e.lfs]
    return found + [f"{e.path}: {e.size:,} bytes, over the {MAX_BYTES:,}-byte limit" for e in entries
                    if e.size > MAX_BYTES]


def listing(entries: list[Entry]) -> str:
    """One line per file (size, LFS or not, path) and the total."""
    lines = [f"{e.size:>12,}  {'lfs' if e.lfs else '   '}  {e.path}" for e in entries]
    total = sum(e.size for e in entries)
    return "\n".join([*lines, f"{total:>12,}  total, {len(entries)} files"])


def dry_run(folder: Path) -> bool:
    """List the folder's files and sizes; False, with every reason on stderr, when it must not be uploaded."""
    entries = inventory(folder)
    print(f"{folder}:\n{listing(entries)}")
    refused = problems(entries)
    if refused:
        print("Refused, nothing uploaded:\n  " + "\n  ".join(refused), file=sys.stderr)
    return not refused


def upload(folder: Path, repo_id: str, token: str | None, api: Any = None) -> str:
    """Create the Space if needed and make its files exactly the folder's, in one commit (stale files are
    deleted). Returns the commit's URL (a CommitInfo is that string). `api` is an HfApi (tests pass a fake)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, token=token, repo_type="space", space_sdk="gradio", exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space", token=token,
                             commit_message="Deploy TokenButler Studio", delete_patterns="*")
    return str(info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "space", help="the folder to build")
    parser.add_argument("--upload", metavar="REPO_ID", help="upload to this Space, e.g. you/tokenbutler-studio")
    parser.add_argument("--token", default=os.environ.get("HF_TOKEN"), help="a write token (default: $HF_TOKEN)")
    args = parser.parse_args(argv)
    if not dry_run(build(args.out)):
        return 1
    if args.upload:
        print(f"Uploaded: {upload(args.out, args.upload, args.token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
