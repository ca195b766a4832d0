"""The client's HTTP seam (`collector.client.Post`): the collector's own HTTP/1.1 client
and the benchmarks' httpx arm take the same `PostRequest` and give the same result."""

from __future__ import annotations

import pytest

from benchmarks.httpx_post import httpx_post
from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from collector import http1
from collector.apis import GenerationParams
from collector.client import Post, Timeouts, generate

PARAMS = GenerationParams(
    prompt="hi", max_tokens=20, temperature=0.0, seed=0, stream=True, model="m"
)
TRANSPORTS: list[Post] = [http1.post, httpx_post]


@pytest.mark.parametrize("post", TRANSPORTS, ids=["http1", "httpx"])
def test_both_transports_stream_the_same_answer(post: Post) -> None:
    scenario = Scenario(tokens=20, gap_s=0.001)
    with CalibratedServer(scenario) as server:
        result = generate(server.base_url, "openai-chat", PARAMS, post=post)

    assert (result.status, result.error) == ("ok", None)
    assert result.output_text == scenario.text()
    assert result.content_events == 20


@pytest.mark.parametrize("post", TRANSPORTS, ids=["http1", "httpx"])
def test_both_transports_hold_the_request_deadline(post: Post) -> None:
    with CalibratedServer(Scenario(tokens=20, gap_s=0.2)) as server:
        result = generate(
            server.base_url, "openai-chat", PARAMS, post=post, timeouts=Timeouts(request_s=0.5)
        )

    assert (result.status, result.error) == ("timeout", "request exceeded its deadline of 0.5 s")
