"""Every named endpoint of the page through gradio_client, against the real embedded model.

Bad input must come back as a readable message: the handlers raise gr.Error, which a client sees as
AppError carrying that text (and the page shows as a toast), never a stack trace.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from app.examples import CHAT_PROMPT, coreference_prompt

pytestmark = pytest.mark.slow

METHOD = "oracle"  # needs no trained weights, so this file runs before a predictor ships
STEPS = 8
LAYER = 5


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from app.serve import start_local

    demo, url = start_local()
    yield url
    demo.close()


def client_for(url: str) -> Client:
    """A new client is a new visitor: its own session, its own gr.State."""
    return Client(url, verbose=False)


def generate_args(prompt: str = CHAT_PROMPT, method: str = METHOD, kind: str = "ratio", ratio: float = 0.5,
                  tokens: float = 64, max_new: float = STEPS, temperature: float = 0.0, layer: float = LAYER) -> list:
    return [prompt, method, kind, ratio, tokens, max_new, temperature, layer]


@pytest.fixture(scope="module")
def visitor(url: str) -> tuple[Client, list[tuple]]:
    """A visitor who ran one generation; every streamed update is kept."""
    client = client_for(url)
    job = client.submit(*generate_args(prompt=coreference_prompt(1)), api_name="/generate")
    updates = list(job)
    return client, updates


def is_heatmap(plot: object) -> bool:
    return isinstance(plot, dict) and plot.get("type") == "plotly" and '"type":"heatmap"' in plot["plot"]


def test_every_endpoint_has_a_stable_name(url: str) -> None:
    names = set(client_for(url).view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate", "/inspect", "/head_triangle", "/budgets", "/shadow_analyze"} <= names


def test_generate_streams_method_then_dense(visitor: tuple[Client, list[tuple]]) -> None:
    _, updates = visitor
    method_text, dense_text, stats, prompt_view, step, note, step_fig, grid_fig = updates[-1]
    assert len(updates) > STEPS  # token by token, for both runs
    assert method_text.strip() and dense_text.strip()
    assert "achieved sparsity" in stats and ("First difference" in stats or "matches dense" in stats)
    assert "tb-prompt" in prompt_view and "kept in" in prompt_view
    assert step["maximum"] == STEPS - 1  # the first token comes from the prefill, untraced
    assert f"Layer {LAYER}" in note
    assert is_heatmap(step_fig) and is_heatmap(grid_fig)


def test_token_budget_and_sampling(url: str) -> None:
    args = generate_args(method="streaming", kind="tokens", tokens=16, max_new=4, temperature=0.8)
    method_text, dense_text, stats, *_ = client_for(url).predict(*args, api_name="/generate")
    assert method_text and dense_text and "streaming @ 16 tok" in stats


def test_inspect_and_head_triangle_draw_this_visitors_run(visitor: tuple[Client, list[tuple]]) -> None:
    client, _ = visitor
    note, step_fig, grid_fig = client.predict(2, 12, api_name="/inspect")
    assert note.startswith("**Step 2 of") and "Layer 12" in note
    assert is_heatmap(step_fig) and is_heatmap(grid_fig)
    assert is_heatmap(client.predict(12, 4, api_name="/head_triangle"))


def test_budgets_curves_for_the_prompt(url: str) -> None:
    curves, table = client_for(url).predict(CHAT_PROMPT, ["oracle", "streaming"], "25%, 32", api_name="/budgets")
    assert '"type":"scatter"' in curves["plot"]
    assert "| oracle | 25% |" in table and "| streaming | 32 tok |" in table


@pytest.mark.parametrize(("overrides", "message"), [
    ({"prompt": "   "}, "empty"),
    ({"prompt": "lorem ipsum " * 5000}, "context"),
    ({"kind": "tokens", "tokens": 0}, "at least 1"),
    ({"kind": "tokens", "tokens": None}, "token budget"),
    ({"ratio": 1.5}, "greater than maximum"),
    ({"ratio": 0.0}, "less than minimum"),
    ({"max_new": 0}, "less than minimum"),
    ({"max_new": 100_000}, "greater than maximum"),
    ({"temperature": -1}, "less than minimum"),
    ({"method": "magic"}, "magic"),
])
def test_generate_rejects_bad_input_with_a_message(url: str, overrides: dict, message: str) -> None:
    with pytest.raises(AppError, match=message):
        client_for(url).predict(*generate_args(**overrides), api_name="/generate")


@pytest.mark.parametrize(("args", "message"), [
    ((CHAT_PROMPT, [], "50%"), "at least one method"),
    ((CHAT_PROMPT, ["oracle"], "10%, 0%"), "ratio must be in"),
    ((CHAT_PROMPT, ["oracle"], " , "), "at least one budget"),
    (("", ["oracle"], "50%"), "empty"),
])
def test_budgets_rejects_bad_input_with_a_message(url: str, args: tuple, message: str) -> None:
    with pytest.raises(AppError, match=message):
        client_for(url).predict(*args, api_name="/budgets")


def test_inspect_before_any_run_says_what_to_do(url: str) -> None:
    with pytest.raises(AppError, match="run a generation"):
        client_for(url).predict(1, 3, api_name="/inspect")
    with pytest.raises(AppError, match="run a generation"):
        client_for(url).predict(3, 0, api_name="/head_triangle")


def test_inspect_out_of_range_step(visitor: tuple[Client, list[tuple]]) -> None:
    client, _ = visitor  # the run set this visitor's step slider to 1..STEPS-1
    with pytest.raises(AppError, match=f"greater than maximum value {STEPS - 1}"):
        client.predict(STEPS + 50, 3, api_name="/inspect")
