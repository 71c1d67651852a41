"""The server under pressure: a full queue turns visitors away with a message and keeps serving, and a
visitor who leaves mid-stream frees the model for the next one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from gradio_client import Client

from app.examples import coreference_prompt
from tests.test_app_api import generate_args

pytestmark = pytest.mark.slow

QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from app.serve import start_local

    demo, url = start_local(queue_size=QUEUE_SIZE)
    yield url
    demo.close()


def _outcome(job) -> str:
    try:
        job.result()
    except Exception as err:  # the client's own error, carrying the server's message
        return str(err)
    return "served"


def test_a_full_queue_turns_visitors_away_with_a_message_and_keeps_serving(url: str) -> None:
    jobs = [Client(url, verbose=False).submit(*generate_args(prompt=coreference_prompt(10 + i), max_new=12),
                                              api_name="/generate") for i in range(QUEUE_SIZE + 3)]
    outcomes = [_outcome(job) for job in jobs]
    assert outcomes.count("served") >= QUEUE_SIZE  # one at work plus the ones waiting
    turned_away = [o for o in outcomes if o != "served"]
    assert turned_away and all("queue is full" in o.lower() for o in turned_away), outcomes
    method_text, dense_text, *_ = Client(url, verbose=False).predict(*generate_args(max_new=2), api_name="/generate")
    assert method_text and dense_text


def test_a_visitor_who_leaves_mid_stream_frees_the_model(url: str) -> None:
    """A visitor's long generation is cancelled after a few tokens (what closing the page does): the next
    visitor's short run is served long before the first run could have finished."""
    leaving = Client(url, verbose=False).submit(*generate_args(prompt=coreference_prompt(20), max_new=256),
                                                api_name="/generate")
    while len(leaving.outputs()) < 6:
        time.sleep(0.05)
    started = time.perf_counter()
    streamed = len(leaving.outputs())
    time.sleep(1.0)
    per_update = 1.0 / max(1, len(leaving.outputs()) - streamed)  # the leaving run's pace
    leaving.cancel()
    begun = time.perf_counter()
    method_text, *_ = Client(url, verbose=False).predict(*generate_args(prompt=coreference_prompt(21), max_new=3),
                                                         api_name="/generate")
    waited = time.perf_counter() - begun
    remaining = (2 * 256 - len(leaving.outputs())) * per_update  # method then dense, one update a token
    assert method_text and waited < remaining / 2, (waited, remaining, time.perf_counter() - started)
