"""`python -m core shadow-train` and `python -m core shadow-evaluate` (core.cli registers them)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from core.args import add_model_args, split_csv, split_ints
from core.models import load
from core.shadow.dataset import CACHE_DIR, TRAIN_CRITERIA, cached_targets, training_prompts
from core.shadow.evaluate import ShadowEvalConfig, heldout_windows, run_shadow_evaluation
from core.shadow.importance import POOLS
from core.shadow.methods import METHODS
from core.shadow.predictor import DEFAULT_DIR, ShadowConfig, ShadowPredictor
from core.shadow.report import markdown_report, write_results
from core.shadow.train import ShadowTrainConfig, train_predictor

TRAIN_LENGTHS = "32,64,96,128,160,192"


def _floats(text: str) -> tuple[float, ...]:
    """'25%,0.5' -> (0.25, 0.5)."""
    return tuple(float(p.rstrip("%")) / (100 if p.endswith("%") else 1) for p in split_csv(text))


def cmd_shadow_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    lm = load(args.model, args.device, args.dtype)
    prompts = training_prompts(lm, args.prompts, args.lengths, args.seed, args.continuation)
    data = cached_targets(lm, prompts, args.criterion, args.batch_size, args.cache_dir,
                          continuation=args.continuation)
    if data is None:  # another process of `accelerate launch`: the main one trains
        return 0
    captured = time.perf_counter()
    predictor = ShadowPredictor(ShadowConfig.for_spec(lm.spec, criterion=args.criterion,
                                                      continuation=args.continuation, pool=args.pool,
                                                      width=args.width, neuron_rank=args.rank, dropout=args.dropout))
    config = ShadowTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.train_batch, val_share=args.val_share,
                               seed=args.seed)
    history = train_predictor(predictor, data, config)
    overheads = predictor.overheads(lm.parameter_count)
    capture_s, train_s = round(captured - started, 1), round(time.perf_counter() - captured, 1)
    last = history[-1]
    extra = {"training": {**asdict(config), "prompts": len(prompts), "lengths": list(args.lengths),
                          "capture_s": capture_s, "train_s": train_s},
             "overheads": overheads, "last_epoch": last}
    predictor.save(args.out, extra)
    print(f"saved to {args.out}: {overheads['parameters']:,} parameters "
          f"({overheads['parameter_share']:.2%} of the base model); "
          f"{len(prompts)} prompts, capture {capture_s} s, train {train_s} s; last loss {last['loss']:.4f}")
    if "val_loss" in last:
        print(f"validation: loss {last['val_loss']:.4f}, rho heads within layers {last['heads_within_layer']:.3f} / "
              f"overall {last['heads_overall']:.3f}, neurons within layers {last['neurons_within_layer']:.3f} / "
              f"overall {last['neurons_overall']:.3f}")
    return 0


def cmd_shadow_evaluate(args: argparse.Namespace) -> int:
    config = ShadowEvalConfig(model=args.model, predictor=args.predictor, windows=args.windows,
                              window_len=args.window_len, prompt_len=args.prompt_len, sparsities=args.sparsities,
                              methods=args.methods, seed=args.seed, out=args.out,
                              cache_dir=args.cache_dir)
    lm = load(args.model, args.device, args.dtype)
    predictor = ShadowPredictor.load(config.predictor, lm.spec)
    doc = run_shadow_evaluation(lm, config, predictor, heldout_windows(lm, config))
    if doc is None:  # another process of `accelerate launch`: the main one reports
        return 0
    paths = write_results(doc, args.out)
    print(markdown_report(doc))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def add_shadow_commands(subparsers) -> None:
    """Register shadow-train and shadow-evaluate on the main CLI."""
    tr = subparsers.add_parser("shadow-train", help="capture true head/neuron importance and train the predictor")
    add_model_args(tr)
    tr.add_argument("--out", default=str(DEFAULT_DIR), help="folder for shadow.safetensors + config.json")
    tr.add_argument("--prompts", type=int, default=768, help="training prompts, from distinct 'train' chunks")
    tr.add_argument("--lengths", type=split_ints, default=split_ints(TRAIN_LENGTHS),
                    help="prompt lengths in tokens, cycled")
    tr.add_argument("--criterion", choices=TRAIN_CRITERIA, default="magnitude",
                    help="the importance the predictor learns (magnitude prunes best at 50%% of heads on the default "
                         "model among single criteria, plainact-iterative at 75%%, one prompt at a time: run it under "
                         "accelerate launch; magnitude+plainact-iterative is the mean of both ranks)")
    tr.add_argument("--continuation", type=int, default=ShadowConfig.continuation,
                    help="learn the importance of this many tokens after each prompt (0: of the prompt itself)")
    tr.add_argument("--batch-size", type=int, default=8, help="prompts per capture pass")
    tr.add_argument("--cache-dir", default=str(CACHE_DIR), help="where captured targets are cached")
    tr.add_argument("--epochs", type=int, default=ShadowTrainConfig.epochs)
    tr.add_argument("--lr", type=float, default=ShadowTrainConfig.lr)
    tr.add_argument("--train-batch", type=int, default=ShadowTrainConfig.batch_size)
    tr.add_argument("--val-share", type=float, default=ShadowTrainConfig.val_share)
    tr.add_argument("--pool", choices=POOLS, default=ShadowConfig.pool,
                    help="layer-0 output over the prompt: mean (default) or ShadowLLM's last token")
    tr.add_argument("--width", type=int, default=ShadowConfig.width, help="trunk width")
    tr.add_argument("--rank", type=int, default=ShadowConfig.neuron_rank, help="rank of the neuron output")
    tr.add_argument("--dropout", type=float, default=ShadowConfig.dropout)
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=cmd_shadow_train)

    ev = subparsers.add_parser("shadow-evaluate", help="perplexity vs head/neuron sparsity and rank correlation")
    add_model_args(ev)
    defaults = ShadowEvalConfig()
    ev.add_argument("--predictor", default=defaults.predictor, help="folder of a trained predictor")
    ev.add_argument("--windows", type=int, default=defaults.windows, help="held-out windows")
    ev.add_argument("--window-len", type=int, default=defaults.window_len)
    ev.add_argument("--prompt-len", type=int, default=defaults.prompt_len, help="tokens the masks are chosen from")
    ev.add_argument("--sparsities", type=_floats, default=defaults.sparsities, help="comma list (0.5 or 50%%)")
    ev.add_argument("--methods", type=split_csv, default=defaults.methods, help=f"comma list from {','.join(METHODS)}")
    ev.add_argument("--seed", type=int, default=defaults.seed)
    ev.add_argument("--out", default=defaults.out, help="folder for shadow_eval.{json,md,html}")
    ev.add_argument("--cache-dir", default=defaults.cache_dir,
                    help="finished (window, method) cells, so an interrupted run resumes ('': none)")
    ev.set_defaults(func=cmd_shadow_evaluate)
