"""CUDA-graph capture of the static decode step (core.graphs), on CPU: the bucket a prompt maps to, one
capture per bucket, replays on in-place reloaded buffers decoding what fresh eager steps decode, the step
free of what a capture refuses, the refusal off CUDA, the CUDA recording order with a fake torch.cuda, and
the captured dense baseline on the Triton split-K kernel (interpreted, in a subprocess: Triton reads
TRITON_INTERPRET when a kernel is decorated) decoding what the reference decodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from conftest import TinyTokenizer, tiny_llama
from test_policies import build, prompt_ids

from core import graphs
from core.budget import Budget
from core.decode import GenerationConfig, prefill_prompt
from core.graphs import GraphCaptureError, StepGraphs, capture, capture_hazards, eager_replay
from core.static_step import StaticDecoder, StaticStepError, capacity_for
from core.tiny import tiny_model

NEW = 8
BUDGET = Budget(ratio=0.3)
METHODS = ["dense", "tokenbutler", "double-sparsity", "quest", "streaming"]


def shared(lm, n: int, seed: int = 0):
    return prefill_prompt(lm, prompt_ids(n, seed), GenerationConfig(max_new_tokens=NEW))


@pytest.fixture(scope="module")
def long_lm():
    """tests.conftest's tiny Llama with a 768-token context: room for a second bucket."""
    lm = tiny_model(0, 4, tokenizer=TinyTokenizer(), vocab_size=128, max_positions=768, name="tiny-llama-768")
    lm.model.generation_config.eos_token_id = None
    return lm


def decodes_as_fresh(lm, pool: StepGraphs, name: str, n: int, seed: int) -> None:
    """The pool's replays decode a prompt as a fresh eager decoder does: tokens, reads, and every cache row."""
    prompt = shared(lm, n, seed)
    captured = pool.prepare(prompt, NEW)
    got = captured.decoder.run(NEW, captured)
    policy = build(name, lm)
    policy.reset()
    fresh = StaticDecoder(lm, prompt, policy, BUDGET, NEW, fused=False)
    want = fresh.run(NEW)
    assert got.tokens == want.tokens, (name, n)
    assert got.layer_reads == want.layer_reads
    assert got.stats == want.stats
    for mine, theirs in zip(captured.decoder.cache.layers, fresh.cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


def counting(record):
    """`record`, counting its calls (captures)."""
    calls = []

    def wrapped(step):
        calls.append(step)
        return record(step)

    return wrapped, calls


def test_capacity_is_the_bucket() -> None:
    assert capacity_for(40, NEW, 8192) == capacity_for(200, NEW, 8192) == 256
    assert capacity_for(250, NEW, 8192) == 512
    assert capacity_for(8000, 300, 8192) == 8192  # capped at the model's context


@pytest.mark.parametrize("name", METHODS)
def test_replays_on_reloaded_buffers_decode_what_fresh_steps_decode(tiny_lm, name: str) -> None:
    """Prompts of one bucket share one capture: each later one is loaded into the first one's buffers in
    place (the warm-up's steps undone too) and decodes what a fresh eager decoder decodes, reads included."""
    record, calls = counting(eager_replay)
    pool = StepGraphs(tiny_lm, build(name, tiny_lm), BUDGET, record=record, fused=False)
    for n, seed in [(40, 0), (60, 1), (200, 2)]:
        decodes_as_fresh(tiny_lm, pool, name, n, seed)
    assert len(calls) == 1 and list(pool.steps) == [(1, 256)]


@pytest.mark.parametrize("name", ["dense", "tokenbutler"])
def test_each_bucket_has_its_own_capture(long_lm, name: str) -> None:
    record, calls = counting(eager_replay)
    pool = StepGraphs(long_lm, build(name, long_lm), BUDGET, record=record, fused=False)
    for n, seed in [(40, 0), (300, 1), (100, 2)]:
        decodes_as_fresh(long_lm, pool, name, n, seed)
    assert pool.generate(prompt_ids(50, 4), NEW).tokens == pool.generate(shared(long_lm, 50, 4), NEW).tokens
    assert len(calls) == 2 and sorted(pool.steps) == [(1, 256), (1, 512)]


def test_buffers_keep_their_addresses_across_loads(tiny_lm) -> None:
    pool = StepGraphs(tiny_lm, build("tokenbutler", tiny_lm), BUDGET, record=eager_replay, fused=False)
    first = pool.prepare(shared(tiny_lm, 40), NEW)
    state = next(iter(first.decoder.states.values()))
    addresses = [first.token.data_ptr(), first.decoder.position.data_ptr(), state.codes.data_ptr(),
                 first.decoder.cache.layers[0].keys.data_ptr()]
    again = pool.prepare(shared(tiny_lm, 90, 3), NEW)
    assert again is first and int(again.decoder.position) == 90
    assert addresses == [again.token.data_ptr(), again.decoder.position.data_ptr(), state.codes.data_ptr(),
                         again.decoder.cache.layers[0].keys.data_ptr()]


def test_a_prompt_outside_the_bucket_is_refused(long_lm) -> None:
    decoder = StaticDecoder(long_lm, shared(long_lm, 40), build("quest", long_lm), BUDGET, NEW)
    with pytest.raises(StaticStepError, match="bucket"):
        decoder.load(shared(long_lm, 250), NEW)


@pytest.mark.parametrize("name", METHODS)
def test_the_step_issues_nothing_a_capture_refuses(tiny_lm, name: str) -> None:
    decoder = StaticDecoder(tiny_lm, shared(tiny_lm, 40), build(name, tiny_lm), BUDGET, NEW, fused=False)
    with torch.no_grad(), decoder.attached():
        assert capture_hazards(lambda: decoder.step(decoder.first_token)) == []


def test_host_reads_are_refused_by_the_cpu_twin() -> None:
    x = torch.arange(6.0)
    with pytest.raises(GraphCaptureError, match="_local_scalar_dense"):
        eager_replay(lambda: x.add_(x.sum().item()))
    with pytest.raises(GraphCaptureError, match="nonzero"):
        eager_replay(lambda: (x > 2).nonzero())
    with pytest.raises(GraphCaptureError, match="boolean-mask"):
        eager_replay(lambda: x[x > 2])
    assert capture_hazards(lambda: x.masked_fill(x > 2, 0.0)) == []  # a mask as an operand is fine
    assert capture_hazards(lambda: torch.tensor([1, 2]) + x[:2]) == ["aten.lift_fresh.default"]


def test_capture_refuses_off_cuda(tiny_lm) -> None:
    decoder = StaticDecoder(tiny_lm, shared(tiny_lm, 40), build("dense", tiny_lm), BUDGET, NEW)
    with pytest.raises(GraphCaptureError, match="CUDA graphs need a CUDA device"):
        capture(decoder, shared(tiny_lm, 40), NEW)


class FakeCuda:
    """torch.cuda's stream and graph calls, logged: enough to check cuda_graph's order off CUDA."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.stream_now = "main"
        fake = self

        class Stream:
            def __init__(self) -> None:
                self.name = "side"

            def wait_stream(self, other) -> None:
                fake.log.append(f"{self.name} waits {other.name}")

        class Main(Stream):
            def __init__(self) -> None:
                self.name = "main"

        class CUDAGraph:
            def replay(self) -> None:
                fake.log.append("replay")

        class Switch:
            def __init__(self, name: str, then: str) -> None:
                self.name, self.then = name, then

            def __enter__(self) -> None:
                fake.log.append(f"enter {self.name}")
                fake.stream_now = self.name

            def __exit__(self, *exc) -> None:
                fake.log.append(f"exit {self.name}")
                fake.stream_now = self.then

        self.Stream, self.CUDAGraph, self.main = Stream, CUDAGraph, Main()
        self.current_stream = lambda: self.main
        self.stream = lambda s: Switch(s.name, "main")
        self.graph = lambda g: Switch("capture", "main")


def test_cuda_graph_warms_up_on_a_side_stream_then_captures_once(monkeypatch) -> None:
    fake = FakeCuda()
    for name in ("Stream", "CUDAGraph", "current_stream", "stream", "graph"):
        monkeypatch.setattr(graphs.torch.cuda, name, getattr(fake, name))
    replay = graphs.cuda_graph(lambda: fake.log.append(f"step on {fake.stream_now}"))
    replay()
    assert fake.log == [
        "side waits main", "enter side", *["step on side"] * graphs.WARMUP, "exit side", "main waits side",
        "enter capture", "step on capture", "exit capture", "replay",
    ]


def triton_dense_tokens() -> dict[str, list[int]]:
    """Tokens of the dense static step on the torch reference, and captured (CPU twin) on the Triton kernel."""
    lm = tiny_llama()
    prompt = shared(lm, 40)
    reference = StaticDecoder(lm, prompt, build("dense", lm), Budget.dense(), NEW).run(NEW).tokens
    pool = StepGraphs(lm, build("dense", lm), Budget.dense(), record=eager_replay, dense_backend="triton")
    return {"reference": reference, "triton-captured": pool.generate(prompt, NEW).tokens}


@pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed")
def test_the_captured_triton_dense_baseline_decodes_what_the_reference_does() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"}
    proc = subprocess.run([sys.executable, __file__], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tokens["triton-captured"] == tokens["reference"]


if __name__ == "__main__":
    print(json.dumps(triton_dense_tokens()))
