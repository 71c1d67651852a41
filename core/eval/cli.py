"""`python -m core evaluate ...` and `python -m core.eval ...`: flags derived from EvalConfig."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import core.eval
from core.args import parse_bool, split_csv, split_ints
from core.eval.config import FULL_GRID, EvalConfig, results_stem
from core.eval.figures import write_outputs
from core.eval.report import markdown_report
from core.eval.stages import MissingCellsError, eval_processes, run_evaluation
from core.models import DEFAULT_MODEL
from core.tiny import QUICK_MODEL

DESCRIPTION = core.eval.__doc__  # the package's account of what it measures

FLAGS = (  # EvalConfig field, type, help (defaults come from EvalConfig, or its quick variant with --quick)
    ("budgets", split_csv,
     f"comma list of kept ratios (50%, 0.5) and token counts (64); full grid: {','.join(FULL_GRID)}"),
    ("split", str, "text measured: heldout, or outside (from outside every training source)"),
    ("chunks", int, "chunks of text (from every source in turn)"),
    ("per_document", int, "at most this many chunks touch one document"),
    ("chunk_len", int, "tokens per chunk"),
    ("dense_prefix", int, "protocol 1: dense prompt tokens at the start of each chunk (the loss counts after them)"),
    ("long_prompt", int, "protocol 2: a long dense prompt, the loss over the rest of the chunk (0: off)"),
    ("short_prompt", parse_bool, "run protocol 1 (yes/no)"),
    ("metric_rows", int, "query rows per chunk scored for hit accuracy and recall"),
    ("decode_chunks", int, "chunks also run by real token-by-token decoding"),
    ("decode_len", int, "tokens of each really decoded chunk"),
    ("decode_budgets", split_csv, "budgets of the real-decoding check"),
    ("samples", int, "samples per task"),
    ("tasks", split_csv, "comma list from coref,entities"),
    ("task_prompts", split_csv, "comma list from question-decoded,question-in-prompt"),
    ("task_filler_tokens", split_ints, "comma list of filler lengths in tokens (0: the default few paragraphs)"),
    ("task_budgets", split_csv, "budgets of the tasks (empty: --budgets)"),
    ("bootstrap", int, "bootstrap resamples of the 95% intervals"),
    ("seed", int, "data and task seed"),
    ("tag", str, "names the results files eval_<model>_<tag>.* (e.g. ctx4k)"),
    ("out", str, "results folder"),
    ("cache_dir", str, "finished-cell cache folder"),
    ("cached_only", parse_bool, "only write the report from finished cells: stop at a missing cell (yes/no)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = EvalConfig()
    parser.add_argument("--model", default=None, help=f"model source (default {DEFAULT_MODEL}; --quick: tiny random)")
    parser.add_argument("--policies", type=split_csv, default=(), help="comma list (default: every registered policy)")
    for name, kind, text in FLAGS:
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"{text} (default {shown})".replace("%", "%%"))  # argparse formats help with %
    parser.add_argument("--quick", action="store_true", help="a tiny random model and a few short chunks (< 1 min)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report, figures and equal-bytes rows of the results document eval_<model>"
                             "[_<tag>].json under --out from its stored results, with no model and no cells")
    parser.set_defaults(func=cmd_evaluate)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """Flags given override the defaults (or the quick defaults with --quick)."""
    given = {name: getattr(args, name) for name, _, _ in FLAGS if getattr(args, name) is not None}
    given["policies"] = args.policies
    if args.quick:
        return EvalConfig.quick_config(model=args.model or QUICK_MODEL, **given)
    return EvalConfig(model=args.model or DEFAULT_MODEL, **given)


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.report_only:
        doc = json.loads((Path(config.out) / f"{results_stem(config.model, config.tag)}.json").read_text())
    else:
        try:
            doc = run_evaluation(config)
        except MissingCellsError as err:
            print(err, file=sys.stderr)
            return 1
    if not eval_processes().is_main_process:
        return 0  # under `accelerate launch` every process measured its share; the first one writes the results
    paths = write_outputs(doc, Path(config.out))
    print(markdown_report(doc))
    print(f"wrote {', '.join(str(p) for p in paths.values())}; PNG {doc['png']}")
    return 0


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    """`python -m core evaluate ...` (the main CLI calls this)."""
    parser = subparsers.add_parser("evaluate", help="measure every policy across budgets", description=DESCRIPTION)
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="python -m core.eval", description=DESCRIPTION)).parse_args(argv)
    return args.func(args)
