"""What a GGUF file's weights are stored as, so the page and README can say what model is really measured."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gguf import GGUFReader


def tensor_role(name: str) -> str:
    """'embeddings', 'norms' or 'linear' for a GGUF tensor name (token_embd.weight, blk.0.attn_q.weight, ...)."""
    if name.startswith("token_embd") or name.startswith("output."):
        return "embeddings"
    return "norms" if "norm" in name else "linear"


def weight_types(path: str | Path) -> dict[str, list[str]]:
    """Role -> the storage types of its tensors, most common first (e.g. {'linear': ['Q4_1'], ...})."""
    counts: dict[str, Counter] = {}
    for tensor in GGUFReader(str(path)).tensors:
        counts.setdefault(tensor_role(tensor.name), Counter())[tensor.tensor_type.name] += 1
    return {role: [kind for kind, _ in c.most_common()] for role, c in counts.items()}


def describe_weights(path: str | Path) -> str:
    """One line: 'linear Q4_1, embeddings Q8_0, norms F32; dequantized on loading ...'."""
    types = weight_types(path)
    parts = [f"{role} {'/'.join(types[role])}" for role in ("linear", "embeddings", "norms") if role in types]
    rest = "dequantized on loading, so the model computes in floats (fp32 on CPU) with these rounded weights"
    return ", ".join(parts) + "; " + rest
