"""Command line: generate, train, evaluate and the ShadowLLM subcommands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields

from accelerate import PartialState

from core.args import add_model_args, split_csv
from core.budget import Budget, BudgetError
from core.calibrate import calibrate_channels
from core.chatdata import generate_chat
from core.data import corpus_stats, token_chunks
from core.decode import GenerationConfig, generate
from core.eval.cli import add_evaluate_command
from core.keysummary import SUMMARY_BITS
from core.losses import LOSSES
from core.models import load
from core.policies import make_policy, policy_names
from core.policies.double_sparsity import DEFAULT_DIR as CHANNELS_DIR
from core.predictor import KEY_CODES, QUERY_SOURCES
from core.shadow.cli import add_shadow_commands
from core.sources import chat_cache_dir
from core.tiny import QUICK_MODEL, tiny_model
from core.train import TrainConfig, train

TRAIN_FLAGS = {  # TrainConfig fields given as flags -> help (type and default come from TrainConfig)
    "steps": None,
    "seq_len": None,
    "rows": "query rows sampled per sequence for the loss",
    "lr": None,
    "loss": None,
    "dim": "importance query/key dimension",
    "inner": None,
    "group_layers": "layers each producer predicts",
    "key_bits": "bits each stored key channel takes in the extra cache (16, 8 or 4)",
    "query": "importance query: predicted ahead of the layer (the paper's, allows prefetch) or the layer's own",
    "keys": "extra cache: the key's calibrated RoPE pairs, or a learned projection of the key (same bytes)",
    "seed": None,
    "save_every": None,
    "schedule": "sequence lengths over training, e.g. 512x1000,2048x500,4096x400 (overrides --seq-len/--steps)",
}
TRAIN_CHOICES = {"loss": list(LOSSES), "key_bits": list(SUMMARY_BITS), "query": list(QUERY_SOURCES),
                 "keys": list(KEY_CODES)}


def load_for(args: argparse.Namespace):
    """The model named by --model; `quick` is the tiny random one (for smoke runs and tests)."""
    return tiny_model() if args.model == QUICK_MODEL else load(args.model, args.device, args.dtype)


def cmd_generate(args: argparse.Namespace) -> int:
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
    lm = load_for(args)
    config = TrainConfig(**{name: getattr(args, name) for name in TRAIN_FLAGS})
    sources = split_csv(args.sources) if args.sources else None
    lengths = sorted({length for length, _ in config.phases()})
    chunks = [
        chunk
        for length in lengths
        for chunk in token_chunks(lm.tokenizer, "train", length, sources=sources, seed=args.seed, order="in-order")
    ]
    predictor, history = train(lm, chunks, args.out, config, resume=not args.restart)
    if not PartialState().is_main_process:
        return 0
    over = predictor.overheads(lm.spec, lm.parameter_count)
    print(
        f"saved to {args.out}: {over['parameters']:,} parameters ({over['parameter_share']:.2%} of the base model), "
        f"extra cache {over['cache_values_per_token']:,.0f} 16-bit values/token "
        f"({over['cache_share']:.1%} of the KV cache); "
        f"last loss {history[-1]['loss']:.4f}, hit accuracy {history[-1]['hit_accuracy']:.3f}"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    lm = load_for(args)
    chunks = token_chunks(lm.tokenizer, "train", args.seq_len, max_chunks=args.chunks, seed=args.seed)
    ranking = calibrate_channels(lm, chunks)
    ranking.save(args.out)
    print(
        f"saved to {args.out}: channel ranking of {lm.spec.num_layers} layers x {lm.spec.num_kv_heads} KV heads "
        f"from {ranking.config['tokens']:,} training tokens"
    )
    return 0


def add_calibrate_command(subparsers) -> argparse.ArgumentParser:
    cal = subparsers.add_parser("calibrate", help="Double Sparsity's offline channel calibration (training text)")
    add_model_args(cal)
    cal.add_argument("--out", default=str(CHANNELS_DIR))
    cal.add_argument("--chunks", type=int, default=32, help="calibration chunks of training text")
    cal.add_argument("--seq-len", type=int, default=512, help="tokens per chunk")
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=cmd_calibrate)
    return cal


def cmd_corpus_stats(args: argparse.Namespace) -> int:
    stats = corpus_stats(load(args.model, args.device, args.dtype).tokenizer)
    print(f"{'source':18} {'train docs':>10} {'train tokens':>13} {'held docs':>9} {'held tokens':>11} {'dropped':>8}")
    for name, row in stats["sources"].items():
        train, held = row.get("train", row.get("outside")), row.get("heldout", {"documents": 0, "tokens": 0})
        label = name if "train" in row else f"{name} (outside)"
        print(
            f"{label:18} {train['documents']:>10,} {train['tokens']:>13,} {held['documents']:>9,} "
            f"{held['tokens']:>11,} {row.get('dropped_paragraphs', 0):>8,}"
        )
    shares = stats["heldout_shingles_in_train"]
    print(
        f"held-out 10-word shingles also in training text: {shares['before_cleaning']:.2%} before dropping "
        f"leaking paragraphs, {shares['after_cleaning']:.2%} after"
    )
    if args.json:
        with open(args.json, "w") as sink:
            json.dump(stats, sink, indent=1)
    return 0


def cmd_corpus_chat(args: argparse.Namespace) -> int:
    lm = load(args.model, args.device, args.dtype)
    folder = chat_cache_dir()
    added = generate_chat(lm, folder, args.count, args.seed, args.batch, args.max_new_tokens)
    print(f"{added} new conversations in {folder}")
    return 0


def add_corpus_commands(subparsers) -> None:
    corpus = subparsers.add_parser("corpus", help="the offline training corpus: statistics, chat answers")
    sub = corpus.add_subparsers(dest="corpus_command", required=True)
    stats = sub.add_parser("stats", help="tokens per source and split, leakage dropped and left")
    add_model_args(stats)
    stats.add_argument("--json", default=None, help="also write the statistics here")
    stats.set_defaults(func=cmd_corpus_stats)
    chat = sub.add_parser("chat", help="sample the model's answers to varied instructions (cached, resumable)")
    add_model_args(chat)
    chat.add_argument("--count", type=int, default=256)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--batch", type=int, default=16)
    chat.add_argument("--max-new-tokens", type=int, default=384)
    chat.set_defaults(func=cmd_corpus_chat)


def add_generate_command(subparsers) -> argparse.ArgumentParser:
    gen = subparsers.add_parser("generate", help="decode a prompt with a selection policy and budget")
    add_model_args(gen)
    gen.add_argument("prompt")
    gen.add_argument("--policy", default="tokenbutler", help=", ".join(policy_names()))
    gen.add_argument("--budget", default="50%", help="ratio of the past (0.5 or 50%%) or a token count (256)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.set_defaults(func=cmd_generate)
    return gen


def add_train_command(subparsers) -> argparse.ArgumentParser:
    """The TrainConfig fields in TRAIN_FLAGS as flags, with the dataclass's types and defaults."""
    tr = subparsers.add_parser("train", help="train the TokenButler predictor for a model")
    add_model_args(tr)
    tr.add_argument("--out", default="assets/predictor")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, text in TRAIN_FLAGS.items():
        default = defaults[name]
        choices = {"choices": TRAIN_CHOICES[name]} if name in TRAIN_CHOICES else {}
        tr.add_argument("--" + name.replace("_", "-"), type=type(default), default=default, help=text, **choices)
    tr.add_argument("--sources", default="", help="comma list of corpus sources (default: all installed)")
    tr.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and start over")
    tr.set_defaults(func=cmd_train)
    return tr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_command(sub)
    add_train_command(sub)
    add_evaluate_command(sub)
    add_calibrate_command(sub)
    add_shadow_commands(sub)
    add_corpus_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BudgetError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
