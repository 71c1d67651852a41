"""The About tab's text: what each method does, the model's shape, and what the predictor costs."""

from __future__ import annotations

from core.ggufinfo import describe_weights
from core.models import DEFAULT_MODEL, LoadedModel, embedded_model_path
from core.policies import REGISTRY, policy_names
from core.predictor import DEFAULT_DIR, Predictor


def methods_table() -> str:
    """Every registered method with its own one-line description."""
    rows = ["| method | what it keeps |", "|---|---|"]
    rows += [f"| **{name}** | {REGISTRY[name].description} |" for name in policy_names()]
    return "\n".join(rows)


def spec_table(lm: LoadedModel) -> str:
    spec = lm.spec
    rows = ["| property | value |", "|---|---|", f"| model | `{spec.name}` |", f"| layers | {spec.num_layers} |",
            f"| query heads / KV heads | {spec.num_heads} / {spec.num_kv_heads} (groups of {spec.group_size}) |",
            f"| head dim | {spec.head_dim} |", f"| weights | {weights_row(spec.name)} |",
            f"| context | {spec.max_context} tokens |",
            f"| device / dtype | {lm.device} / {str(lm.dtype).removeprefix('torch.')} |",
            f"| fingerprint | `{spec.fingerprint}` |"]
    return "\n".join(rows)


def weights_row(name: str) -> str:
    """The embedded model's GGUF storage types (it is a 4-bit model, not the published bf16 one)."""
    if name != DEFAULT_MODEL:
        return "as stored at the source"
    folder, file = embedded_model_path()
    return f"`{file}`: {describe_weights(folder / file)}"


def predictor_overheads(lm: LoadedModel) -> str:
    """Parameters and extra cache of the shipped predictor relative to the base model, when one ships."""
    try:
        predictor = Predictor.load(DEFAULT_DIR, spec=lm.spec)
    except FileNotFoundError:
        return "No trained predictor ships in `assets/predictor/` yet, so there are no overheads to report."
    except ValueError as err:
        return f"The shipped predictor does not fit this model: {err}"
    cost = predictor.overheads(lm.spec, lm.parameter_count)
    cfg = predictor.config
    return "\n".join([
        "| cost | value |", "|---|---|",
        f"| predictor parameters | {cost['parameters']:,} ({cost['parameter_share']:.2%} of the base model's "
        f"{lm.parameter_count:,}) |",
        f"| extra cache per token | {cost['cache_values_per_token']:,.0f} 16-bit values "
        f"({cost['cache_share']:.2%} of the KV cache) |",
        f"| producers | layers {', '.join(map(str, cfg.producer_layers))}, each predicting {cfg.group_layers} layers |",
        f"| importance query size | {cfg.dim} per head |",
    ])


def about_markdown(lm: LoadedModel) -> str:
    return "\n\n".join([
        "## What you are looking at",
        "At every decode step each KV head reads only a **budget** of past tokens. A method decides which. "
        "*Dense* reads all of them; *oracle* cheats with the true attention of the current query (the ceiling); "
        "*TokenButler* guesses it with a small learned predictor before attention runs; the others are the "
        "usual baselines. Budgets count sink and recent tokens a method protects; the first layer is always dense.",
        "**Hit accuracy**: share of the true top tokens that the method ranks in its own top (chance = the "
        "fraction). **Attention recall**: share of the true attention mass that falls on the kept tokens. "
        "**Achieved sparsity**: share of K/V rows a dense step would read that were skipped.",
        "## Methods", methods_table(),
        "## Base model", spec_table(lm),
        "## TokenButler predictor overheads", predictor_overheads(lm),
    ])
