"""Every named endpoint of the page through gradio_client, against the real embedded model.

Bad input must come back as a readable message: the handlers raise gr.Error, which a client sees as
AppError carrying that text (and the page shows as a toast), never a stack trace.
"""

from __future__ import annotations

import json
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


def test_switching_method_reuses_the_prefill_and_the_dense_reference(url: str) -> None:
    """Another visitor, the same prompt and settings, another method: neither the prefill nor dense runs again."""
    prompt = coreference_prompt(2)
    first = client_for(url).predict(*generate_args(prompt=prompt, method="streaming"), api_name="/generate")
    assert "Prefill:" in first[2] and "reused" not in first[2]
    second = list(client_for(url).submit(*generate_args(prompt=prompt, method="random", ratio=0.3),
                                         api_name="/generate"))
    method_text, dense_text, stats, *_ = second[-1]
    assert method_text and dense_text == first[1] and "Dense reference reused" in stats and "Prefill of the" in stats
    shown = {update[1] for update in second if isinstance(update[1], str)}
    assert shown <= {"", dense_text}  # dense is shown whole, never decoded again token by token
    third = client_for(url).predict(*generate_args(prompt=prompt, method="random", temperature=0.5),
                                    api_name="/generate")
    assert "Dense reference reused" not in third[2]  # other sampling settings: another reference


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
    ({"kind": "tokens", "tokens": 0}, "between 1 and"),
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


def raw_call(url: str, endpoint: str, body: str) -> str:
    """POST a hand-written JSON body (NaN and Infinity included, which gradio_client cannot send) to an
    endpoint and return the text of its event stream."""
    import httpx

    base = url.rstrip("/") + "/gradio_api/call/" + endpoint
    event = httpx.post(base, content=body, headers={"Content-Type": "application/json"}, timeout=60).json()
    return httpx.get(f"{base}/{event['event_id']}", timeout=120).text


@pytest.mark.parametrize(("field", "value", "message"), [
    (3, "NaN", "ratio"), (4, "NaN", "tokens"), (5, "NaN", "Max new tokens"), (6, "Infinity", "maximum"),
    (7, "NaN", "Layer"), (7, "-Infinity", "minimum"),
])
def test_nan_and_infinite_numbers_get_a_message(url: str, field: int, value: str, message: str) -> None:
    args = [json.dumps(a) for a in generate_args(kind="tokens" if field == 4 else "ratio")]
    args[field] = value
    stream = raw_call(url, "generate", '{"data": [' + ", ".join(args) + "]}")
    assert "event: error" in stream and message in stream and "Traceback" not in stream


@pytest.mark.parametrize(("overrides", "message"), [
    ({"kind": "tokens", "tokens": 1e30}, "tokens"),
    ({"kind": "sideways"}, "not in the list of choices"),
    ({"max_new": 2.5}, "whole number"),
    ({"layer": -3}, "minimum"),
    ({"prompt": "x" * 200_000}, "context"),
    ({"prompt": "word " * 8_192}, "context"),
])
def test_hostile_numbers_and_prompts_get_a_message_and_leave_the_server_serving(url: str, overrides: dict,
                                                                               message: str) -> None:
    with pytest.raises(AppError, match=message) as raised:
        client_for(url).predict(*generate_args(**overrides), api_name="/generate")
    assert "Traceback" not in str(raised.value)


def test_control_characters_in_a_prompt_are_just_text(url: str) -> None:
    prompt = "Repeat: \x00\x07\x1b[31mred\x1b[0m \u202eevil\u202c \ufffd\U0001f600 é"
    result = client_for(url).predict(*generate_args(prompt=prompt, max_new=3), api_name="/generate")
    assert isinstance(result[0], str) and isinstance(result[1], str)
    assert "event: error" in raw_call(url, "inspect", '{"data": [NaN, 3]}')
