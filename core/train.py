"""Train the TokenButler predictor against the frozen model's true causal attention.

One step: a dense forward pass of the frozen model over a chunk of training text captures, per
layer, the post-RoPE queries and keys and, at the producer layers, the attention inputs. The
predictor then guesses every predicted layer's logits for `rows` sampled query rows, and the loss
compares them with the true attention of those rows (`core.losses`: KL by default, MSE, or a loss on the
selection decision itself).
Training runs over a schedule of sequence lengths (e.g. 512 -> 2048 -> 4096), so the predictor
sees the contexts the page serves; query rows are sampled across the whole length.
`accelerate launch [--cpu] --num_processes N -m core train ...` runs N processes, each on its own
chunks, gradients averaged every step (gloo on CPU); bf16 autocast on CUDA.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from core.attention import SparseSession, activate
from core.budget import Budget
from core.checkpoint import CONFIG_FILE, replacing
from core.losses import row_loss
from core.metrics import hit_accuracy
from core.models import LoadedModel
from core.policies import make_policy
from core.predictor import Predictor, PredictorConfig, calibrate_pairs

STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded beside the checkpoint)."""

    steps: int = 1500
    seq_len: int = 512
    rows: int = 96
    min_row: int = 16
    lr: float = 1e-3
    warmup: float = 0.1
    clip: float = 20.0
    loss: str = "kl"  # one of core.losses.LOSSES
    dim: int = 16
    inner: int = 128
    group_layers: int = 4
    key_bits: int = 16  # the key channels stored at 16, 8 or 4 bits (more channels in the same bytes)
    query: str = "ahead"  # core.predictor.QUERY_SOURCES: predicted ahead of the layer, or its own query
    keys: str = "pairs"  # core.predictor.KEY_CODES: the calibrated pairs of the key, or a learned code
    seed: int = 0
    calib_chunks: int = 4
    save_every: int = 100
    schedule: str = ""  # "512x1000,2048x500": phases of (sequence length x steps); empty = seq_len x steps

    def phases(self) -> list[tuple[int, int]]:
        """(sequence length, steps) per phase, in order."""
        if not self.schedule:
            return [(self.seq_len, self.steps)]
        try:
            phases = [tuple(int(x) for x in part.split("x")) for part in self.schedule.split(",") if part.strip()]
        except ValueError:
            phases = []
        if not phases or any(len(p) != 2 or min(p) < 1 for p in phases):
            raise ValueError(f"schedule must look like '512x1000,2048x500', got {self.schedule!r}.")
        return [(length, steps) for length, steps in phases]

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps in self.phases())

    def phase_at(self, step: int) -> tuple[int, int]:
        """(sequence length, step index within its phase) of a global step."""
        for length, steps in self.phases():
            if step < steps:
                return length, step
            step -= steps
        raise IndexError(f"step {step} is past the schedule")


@dataclass
class Capture:
    """One frozen forward pass: per-layer (query, key), and per-producer (hidden, cos, sin)."""

    qk: dict[int, tuple[torch.Tensor, torch.Tensor]]
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def capture_pass(lm: LoadedModel, ids: torch.Tensor, producer_layers: list[int]) -> Capture:
    """Run the frozen model densely and keep what the predictor and the targets need."""
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            cos, sin = kwargs["position_embeddings"]
            inputs[layer] = (kwargs["hidden_states"].detach(), cos.detach(), sin.detach())

        return hook

    layers = lm.model.model.layers
    handles = [layers[p].self_attn.register_forward_pre_hook(make_hook(p), with_kwargs=True) for p in producer_layers]
    session = SparseSession(policy=make_policy("dense"), budget=Budget.dense(), mode="teacher", capture={})
    try:
        with torch.no_grad(), activate(session):
            lm.model(input_ids=ids.view(1, -1).to(lm.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return Capture(qk=session.capture, inputs=inputs)


def row_logits(
    predictor: Predictor, cap: Capture, rows: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (layer, predicted logits, true logits, causal mask) for the sampled rows, layer by layer."""
    for producer in predictor.config.producer_layers:
        hidden, cos, sin = cap.inputs[producer]
        for layer, q_pred in predictor.queries(producer, hidden, cos, sin).items():
            query, key = cap.qk[layer]
            importance = predictor.layer_queries(layer, q_pred[:, :, rows, :], query[:, :, rows, :])
            pred = predictor.scores(layer, importance, key, (cos, sin)).float()
            yield layer, pred, *true_rows(query, key, rows)


def true_rows(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen model's scaled logits [B, Hq, R, T] of query `rows` over every key, and the causal mask [R, T]."""
    group = query.shape[1] // key.shape[1]
    true = torch.matmul(query[:, :, rows, :].float(), key.repeat_interleave(group, 1).float().transpose(-1, -2))
    causal = torch.arange(key.shape[2], device=key.device)[None, :] <= rows[:, None].to(key.device)
    return true * query.shape[-1] ** -0.5, causal


def sample_rows(seq_len: int, rows: int, min_row: int, generator: random.Random) -> torch.Tensor:
    """Distinct query rows in [min_row, seq_len), sorted (every row's past is at least min_row+1 long)."""
    pool = list(range(min_row, seq_len))
    return torch.tensor(sorted(generator.sample(pool, min(rows, len(pool)))))


def _schedule(step: int, total: int, warmup: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def by_length(chunks: Sequence[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """Chunks grouped by their length, each group in the given order."""
    groups: dict[int, list[torch.Tensor]] = {}
    for chunk in chunks:
        groups.setdefault(chunk.numel(), []).append(chunk)
    return groups


def _average_gradients(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> None:
    """Mean of every process's gradients, in one all-reduce (the predictor is not wrapped in DDP)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def train(
    lm: LoadedModel,
    chunks: Sequence[torch.Tensor],
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    resume: bool = True,
    progress: bool = True,
    until: int | None = None,
) -> tuple[Predictor, list[dict]]:
    """Train (or resume) a predictor for `lm` on token `chunks`; checkpoints go to `out`.

    Each phase of `config.phases()` draws from the chunks of its length. `until` stops this call
    after that step (with a checkpoint), for time-boxed runs resumed later.
    """
    out = Path(out)
    torch.manual_seed(config.seed)
    phases = config.phases()
    groups = by_length(chunks)
    missing = sorted({length for length, _ in phases} - set(groups))
    if missing:
        raise ValueError(f"No training chunks of length {missing} for the schedule {phases}.")
    accelerator = Accelerator(
        mixed_precision="bf16" if torch.cuda.is_available() else "no", cpu=lm.device.type == "cpu"
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    total_steps = config.total_steps
    shape = {f.name for f in fields(PredictorConfig)} & {f.name for f in fields(TrainConfig)}  # the predictor's shape
    pconf = PredictorConfig.for_spec(lm.spec, **{name: getattr(config, name) for name in shape})
    model = Predictor(pconf)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total_steps, config.warmup))
    state_path = out / STATE_FILE
    start, history, tokens, wall = 0, [], 0, 0.0
    if resume and state_path.is_file():
        saved, wanted = asdict(PredictorConfig(**json.loads((out / CONFIG_FILE).read_text())["config"])), asdict(pconf)
        if saved != wanted:
            changed = sorted(k for k in wanted if saved[k] != wanted[k])
            raise ValueError(
                f"The checkpoint in {out} is a predictor with other {', '.join(changed)}; pass the flags "
                "it was trained with to resume it, or --restart to start over."
            )
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["predictor"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["step"], state["history"]
        tokens, wall = state.get("tokens_seen", 0), state.get("wall_s", 0.0)
    else:
        calib_source = groups[phases[0][0]]
        calib = [capture_pass(lm, calib_source[i % len(calib_source)], []).qk for i in range(config.calib_chunks)]
        model.set_pairs(calibrate_pairs(calib, pconf))
    model.to(accelerator.device)
    params = list(model.parameters())
    rng = random.Random(config.seed)
    stop = min(total_steps, until or total_steps)
    began = time.perf_counter() - wall
    bar = tqdm(
        range(start, stop),
        initial=start,
        total=total_steps,
        desc="train",
        disable=not progress or not accelerator.is_main_process,
    )
    for step in bar:
        length, index = config.phase_at(step)
        pool = groups[length]
        rng.seed((config.seed * 1_000_003 + step) * 1_009 + rank)
        ids = pool[(index * world + rank) % len(pool)]
        cap = capture_pass(lm, ids, model.config.producer_layers)
        rows = sample_rows(ids.numel(), config.rows, config.min_row, rng)
        losses, hits = [], []
        pairs = torch.Generator(device=accelerator.device).manual_seed(rng.getrandbits(63))  # the rank loss's draws
        optimizer.zero_grad(set_to_none=True)
        with accelerator.autocast():
            for _, pred, true, causal in row_logits(model, cap, rows):
                losses.append(row_loss(pred, true, causal, config.loss, pairs))
                hits.append(hit_accuracy(pred.detach(), true, causal.sum(-1)).mean())
        loss = torch.stack(losses).mean()
        loss.backward()
        if world > 1:
            _average_gradients(accelerator, params)
        torch.nn.utils.clip_grad_norm_(params, config.clip)
        optimizer.step()
        scheduler.step()
        measured = accelerator.reduce(torch.stack([loss.detach(), torch.stack(hits).mean()]), reduction="mean")
        tokens += length * world
        record = {
            "step": step + 1,
            "seq_len": length,
            "loss": float(measured[0]),
            "hit_accuracy": float(measured[1]),
            "lr": scheduler.get_last_lr()[0],
            "tokens_seen": tokens,
        }
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", hit=f"{record['hit_accuracy']:.3f}", len=length)
        if ((step + 1) % config.save_every == 0 or step + 1 == stop) and accelerator.is_main_process:
            progress_state = {"tokens_seen": tokens, "wall_s": time.perf_counter() - began, "processes": world}
            save_checkpoint(model, optimizer, scheduler, out, step + 1, history, config, lm, progress_state)
    accelerator.wait_for_everyone()
    return model, history


def save_checkpoint(
    predictor, optimizer, scheduler, out: Path, step: int, history: list, config, lm, progress: dict
) -> None:
    """Weights + config (base fingerprint, tokens seen, wall time) for users; full state for resuming."""
    extra = {
        "train": asdict(config),
        "step": step,
        **progress,
        "overheads": predictor.overheads(lm.spec, lm.parameter_count),
    }
    predictor.save(out, extra=extra)
    state = {
        "predictor": predictor.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "history": history,
        **progress,
    }
    with replacing(out / "history.json") as path:
        path.write_text(json.dumps(history))
    with replacing(out / STATE_FILE) as path:  # last: the state a resumed run starts from
        torch.save(state, path)
