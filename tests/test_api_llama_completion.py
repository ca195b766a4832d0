"""llama-server's native /completion API: its events and bodies decode to what the
OpenAI ones give, and it works end to end against the calibration server."""

from __future__ import annotations

import json

import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from collector.apis import GenerationParams, decode_body, decode_event, request_body
from collector.client import Timeouts, generate
from moe_evidence.cli import parser

API = "llama-completion"
TIMINGS = {"prompt_n": 3, "predicted_n": 2, "predicted_ms": 20.0}


def params(stream: bool) -> GenerationParams:
    return GenerationParams("Hello there", 8, 0.3, 7, stream, "calibration", cache_prompt=False)


def test_the_request_uses_its_own_names() -> None:
    assert request_body(API, params(True)) == {
        "prompt": "Hello there",
        "n_predict": 8,
        "temperature": 0.3,
        "stream": True,
        "seed": 7,
        "cache_prompt": False,
    }


@pytest.mark.parametrize(
    ("stop_type", "finish"), [("limit", "length"), ("eos", "stop"), ("word", "stop")]
)
def test_the_stop_event_ends_the_stream_with_its_reason(stop_type: str, finish: str) -> None:
    token = decode_event(API, json.dumps({"content": " Hi", "stop": False}))
    assert (token.kind, token.text, token.finish_reason) == ("content", " Hi", None)
    last = json.dumps({"content": "", "stop": True, "stop_type": stop_type, "timings": TIMINGS})
    end = decode_event(API, last)
    assert (end.kind, end.finish_reason, end.timings) == ("done", finish, TIMINGS)


def test_a_body_and_an_error() -> None:
    body = {"content": "Hi there", "stop": True, "stop_type": "limit", "timings": TIMINGS}
    answer = decode_body(API, json.dumps(body).encode())
    assert (answer.kind, answer.text, answer.finish_reason) == ("content", "Hi there", "length")
    error = decode_event(API, json.dumps({"error": {"code": 500, "message": "oom"}}))
    assert error.error == "oom"


@pytest.mark.parametrize("stream", [True, False])
def test_end_to_end_against_the_calibration_server(stream: bool) -> None:
    scenario = Scenario(tokens=8, gap_s=0.001)
    with CalibratedServer(scenario) as server:
        result = generate(server.base_url, API, params(stream), timeouts=Timeouts(2.0, 2.0, 10.0))
        record = server.last()
    assert record.path == "/completion"
    assert (result.status, result.error, result.finish_reason) == ("ok", None, "length")
    assert result.output_text == scenario.text()
    assert result.usage is None
    assert result.timings is not None and result.timings["predicted_n"] == 8
    if stream:
        assert result.chunk_kind == ["content"] * 8 + ["done"]


def test_selectable_from_the_cli() -> None:
    args = parser().parse_args(["collect", "--endpoint", "http://x:1", "--api", API])
    assert args.api == API
