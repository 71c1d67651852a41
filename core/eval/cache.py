"""Finished cells on disk, and the digests that key them (data, policy options, weights, the code)."""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import torch

from core.policies import Policy

Key = tuple[str, ...]


@dataclass
class CellCache:
    """Finished cells as JSON lines (append-only, so an interrupted run loses at most the cell in flight; a line
    left half-written by a killed run is dropped on reading, and the next cell starts on a line of its own).
    Without a path the cells live in memory only.

    Process `rank` of several sharing the cache writes its own file beside `path` (`<stem>.rank<k>.jsonl`;
    rank 0 writes `path` itself), so no two processes append to one file; every process reads them all."""

    path: Path | None
    rank: int = 0
    cells: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reload()

    @property
    def own_file(self) -> Path | None:
        if self.path is None or self.rank == 0:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{self.rank}.jsonl")

    def files(self) -> list[Path]:
        """The cache's files on disk: `path`, then every process's own file."""
        if self.path is None:
            return []
        shards = sorted(self.path.parent.glob(f"{self.path.stem}.rank*.jsonl"))
        return [f for f in [self.path, *shards] if f.is_file()]

    def reload(self) -> None:
        """Read every file again (after the other processes have measured their share)."""
        for path in self.files():
            text = path.read_text()
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # blank, or the cell in flight when a run was killed
                self.cells[record["key"]] = record["value"]
            if path == self.own_file and text and not text.endswith("\n"):
                with path.open("a") as handle:
                    handle.write("\n")

    def get(self, key: Key) -> dict | None:
        return self.cells.get("|".join(key))

    def put(self, key: Key, value: dict) -> None:
        joined = "|".join(key)
        self.cells[joined] = value
        if self.own_file is None:
            return
        self.own_file.parent.mkdir(parents=True, exist_ok=True)
        with self.own_file.open("a") as handle:
            handle.write(json.dumps({"key": joined, "value": value}) + "\n")


def digest(*parts: object) -> str:
    """Short stable hash of tensors and plain values (the identity of a cell's data)."""
    h = hashlib.sha1()
    for part in parts:
        h.update(part.cpu().numpy().tobytes() if isinstance(part, torch.Tensor) else repr(part).encode())
    return h.hexdigest()[:12]


def policy_digest(policy: Policy) -> str:
    """A policy's identity: its name, options and the weights of any module among them (a predictor)."""
    options = policy.options()
    weights = [module_digest(m) for m in options.values() if isinstance(m, torch.nn.Module)]
    plain = {n: v for n, v in options.items() if not isinstance(v, torch.nn.Module)}
    return digest(policy.name, plain, *weights)


def module_digest(module: torch.nn.Module) -> str:
    """A trained module's identity: its config (e.g. how a predictor stores its keys) and its parameters and
    buffers (the first 4,096 values of each)."""
    config = getattr(module, "config", None)
    described = asdict(config) if is_dataclass(config) else config
    return digest(described, *(t.detach().flatten()[:4096].float() for t in module.state_dict().values()))


PACKAGE = Path(__file__).resolve().parent.parent
MEASURING_CODE = ("attention.py", "budget.py", "capture.py", "decode.py", "keysummary.py", "kvcache.py", "metrics.py",
                  "models.py",
                  "eval/measure.py", "policies/base.py", "policies/driver.py", "kernels/*.py")


def code_digest(policy: Policy) -> str:
    """A digest of the code that measures a policy's cells, so a cell measured by older code is measured
    again instead of reused."""
    return source_digest(measuring_files(policy))


def measuring_files(policy: Policy) -> list[Path]:
    """The shared measuring modules, the policy's own module and those of the modules among its options
    (a predictor)."""
    files = package_files(MEASURING_CODE)
    files += [Path(inspect.getsourcefile(type(policy)))]
    files += [Path(inspect.getsourcefile(type(v))) for v in policy.options().values() if isinstance(v, torch.nn.Module)]
    return files


def package_files(patterns: tuple[str, ...]) -> list[Path]:
    """The package's source files matching glob `patterns` (relative to core/), sorted."""
    return sorted({f for pattern in patterns for f in PACKAGE.glob(pattern)})


def source_digest(files: list[Path]) -> str:
    """A digest of these files' code, in order: a cached measurement is keyed by the code that made it. Only
    the syntax tree counts (`code_only`), so rewording a docstring or a comment keeps the finished cells."""
    return digest(*(code_only(f.read_text()) for f in files))


def code_only(source: str) -> str:
    """The module's syntax tree without comments (the parser drops them) and without docstrings."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def cell_origin(cells: dict | None) -> str:
    """Say how many cells a run measured and how many it read from the cache (older runs), for a report's
    run-time line; empty when everything was measured in this run."""
    if not cells or not cells["cached"]:
        return ""
    return f" ({cells['measured']} cells measured in this run, {cells['cached']} read from the cell cache)"
