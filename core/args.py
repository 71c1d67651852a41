"""Flag helpers every subcommand shares (below core.cli, core.eval.cli and core.shadow.cli)."""

from __future__ import annotations

import argparse

from core.models import DEFAULT_MODEL


def split_csv(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'): the one parser of the subcommands' comma lists."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def split_ints(text: str) -> tuple[int, ...]:
    """'0, 1024' -> (0, 1024); a part that is not an integer is an argparse error naming it."""
    try:
        return tuple(int(part) for part in split_csv(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from err


def parse_bool(text: str) -> bool:
    """'yes'/'no', 'true'/'false', '1'/'0' -> bool; anything else is an argparse error."""
    value = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded default, a hub id, a local folder or .gguf")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on CUDA)")
