"""Command line: generate, train, and the subcommands other modules add (evaluate, shadow-*)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from core.budget import Budget, BudgetError


def split_csv(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'): the comma lists of the subcommands' flags."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_model_args(parser: argparse.ArgumentParser) -> None:
    from core.models import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded default, a hub id, a local folder or .gguf")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on CUDA)")


def cmd_generate(args: argparse.Namespace) -> int:
    from core.decode import GenerationConfig, generate
    from core.models import load
    from core.policies import make_policy

    lm = load(args.model, args.device, args.dtype)
    policy = make_policy(args.policy)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat=not args.no_chat,
    )
    start = time.perf_counter()
    last = None
    for event in generate(lm, args.prompt, policy, Budget.parse(args.budget), config):
        print(event.delta, end="", flush=True)
        last = event
    elapsed = time.perf_counter() - start
    if last is not None:
        print(
            f"\n\n[{args.policy} @ {args.budget}] {last.index + 1} tokens, prompt {last.prompt_tokens} tokens, "
            f"achieved sparsity {last.sparsity:.1%}, {last.tokens_per_s:.1f} tokens/s decode "
            f"({elapsed:.1f} s total with prefill)",
            file=sys.stderr,
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from core.data import token_chunks
    from core.models import load
    from core.train import TrainConfig, train

    lm = load(args.model, args.device, args.dtype)
    config = TrainConfig(
        steps=args.steps,
        seq_len=args.seq_len,
        rows=args.rows,
        lr=args.lr,
        loss=args.loss,
        dim=args.dim,
        inner=args.inner,
        group_layers=args.group_layers,
        seed=args.seed,
        save_every=args.save_every,
    )
    chunks = token_chunks(lm.tokenizer, "train", args.seq_len, seed=args.seed)
    predictor, history = train(lm, chunks, args.out, config, resume=not args.restart)
    over = predictor.overheads(lm.spec, lm.parameter_count)
    print(
        f"saved to {args.out}: {over['parameters']:,} parameters ({over['parameter_share']:.2%} of the base model), "
        f"extra cache {over['cache_values_per_token']} values/token ({over['cache_share']:.1%} of the KV cache); "
        f"last loss {history[-1]['loss']:.4f}, hit accuracy {history[-1]['hit_accuracy']:.3f}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode a prompt with a selection policy and budget")
    add_model_args(gen)
    gen.add_argument("prompt")
    gen.add_argument(
        "--policy", default="tokenbutler", help="dense, oracle, tokenbutler, h2o, snapkv, quest, streaming, random"
    )
    gen.add_argument("--budget", default="50%", help="ratio of the past (0.5 or 50%%) or a token count (256)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.set_defaults(func=cmd_generate)

    tr = sub.add_parser("train", help="train the TokenButler predictor for a model")
    add_model_args(tr)
    tr.add_argument("--out", default="assets/predictor")
    tr.add_argument("--steps", type=int, default=1500)
    tr.add_argument("--seq-len", type=int, default=512)
    tr.add_argument("--rows", type=int, default=96, help="query rows sampled per sequence for the loss")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--loss", choices=["kl", "mse"], default="kl")
    tr.add_argument("--dim", type=int, default=16, help="importance query/key dimension")
    tr.add_argument("--inner", type=int, default=128)
    tr.add_argument("--group-layers", type=int, default=4, help="layers each producer predicts")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--save-every", type=int, default=100)
    tr.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and start over")
    tr.set_defaults(func=cmd_train)

    for module, adder in (("core.evaluate", "add_evaluate_command"), ("core.shadow.cli", "add_shadow_commands")):
        try:
            getattr(importlib.import_module(module), adder)(sub)
        except ModuleNotFoundError as err:  # an optional capability not in this build; a broken import still fails
            if err.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BudgetError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
