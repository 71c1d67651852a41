"""Saved networks that belong to one base model: safetensors weights + a JSON config recording the
model's fingerprint, so a network is never silently used with a model it was not trained for."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from core.spec import ModelSpec

CONFIG_FILE = "config.json"


class PredictorMismatchError(ValueError):
    """A saved network trained for another base model."""


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it once written, so a process killed mid-write (SIGKILL,
    a session's end) leaves the previous file whole instead of a truncated one."""
    partial = path.with_name(path.name + ".partial")
    yield partial
    os.replace(partial, path)


def save_network(module: nn.Module, folder: str | Path, weights_file: str, config: dict, extra: dict | None) -> Path:
    """Write the module's weights and {"config": config, **extra} to `folder` (each file replaced whole)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with replacing(folder / weights_file) as path:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))
    with replacing(folder / CONFIG_FILE) as path:
        path.write_text(json.dumps({"config": config, **(extra or {})}, indent=2))
    return folder


def read_config(folder: str | Path, what: str, train_command: str, spec: ModelSpec | None) -> dict:
    """The saved config; a missing one says how to train it, one for another model (with `spec`) says so."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"No trained {what} in {folder}: train one with `{train_command} --out {folder}`.")
    config = json.loads((folder / CONFIG_FILE).read_text())["config"]
    if spec is not None and config["fingerprint"] != spec.fingerprint:
        raise PredictorMismatchError(
            f"The {what} in {folder} was trained for {config['base_model']!r} (fingerprint {config['fingerprint']}), "
            f"not for {spec.name!r} (fingerprint {spec.fingerprint}). Train one for this model with "
            f"`{train_command} --model {spec.name} --out <folder>`."
        )
    return config


def load_weights(module: nn.Module, folder: str | Path, weights_file: str) -> None:
    module.load_state_dict(load_file(str(Path(folder) / weights_file)))
