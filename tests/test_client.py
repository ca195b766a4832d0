"""collector.client against the calibrated stream server: every API, every fault.

The server is real HTTP on 127.0.0.1 and plays a scripted timeline, stamping
each write; the client's per-event arrival stamps are compared with them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from calibration.scenario import (
    BAD_JSON,
    HTML_PAGE,
    NOT_AN_EVENT,
    NOT_JSON,
    Injection,
    Scenario,
    Stall,
    StreamRecord,
    redirect,
)
from calibration.server import CalibratedServer
from collector import client, http1
from collector.apis import API_NAMES, ApiName, GenerationParams
from collector.client import RequestResult, Timeouts, generate
from common.errors import ConfigError
from common.server_apis import server_api

# Timing or CPU-share asserts: run alone (the serial pass), never beside other tests.
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[1]
OPENAI: tuple[ApiName, ...] = ("openai-chat", "openai-completions")
FAST = Timeouts(connect_s=2.0, stall_s=2.0, request_s=10.0)
# A deadline well inside the stall timeout, and the slack allowed past it.
DEADLINE = Timeouts(connect_s=2.0, stall_s=2.0, request_s=0.5)
SLACK_S = 0.3


def params(stream: bool = True) -> GenerationParams:
    return GenerationParams(
        prompt="Hello, how are you?",
        max_tokens=50,
        temperature=0.3,
        seed=1,
        stream=stream,
        model="calibration",
    )


@pytest.fixture
def server() -> Iterator[CalibratedServer]:
    with CalibratedServer(Scenario(tokens=12, first_token_delay_s=0.005, gap_s=0.001)) as srv:
        yield srv


def run(
    server: CalibratedServer,
    api: ApiName,
    scenario: Scenario,
    *,
    stream: bool = True,
    timeouts: Timeouts = FAST,
) -> RequestResult:
    server.scenario = scenario
    return generate(server.base_url, api, params(stream), timeouts=timeouts)


def content_stamps(result: RequestResult) -> list[int]:
    """Arrival stamps of the content events only."""
    return [t for t, k in zip(result.chunk_t_ns, result.chunk_kind, strict=True) if k == "content"]


# -- streaming, all three APIs -------------------------------------------------


@pytest.mark.parametrize("api", API_NAMES)
def test_a_clean_stream_is_recorded_event_by_event(server: CalibratedServer, api: ApiName) -> None:
    scenario = Scenario(tokens=20, first_token_delay_s=0.02, gap_s=0.001)
    result = run(server, api, scenario)
    record = server.last()

    assert (result.status, result.error, result.http_status) == ("ok", None, 200)
    assert result.output_text == scenario.text()
    assert result.content_events == 20
    # One client chunk per server event, in the same order.
    assert len(result.chunk_t_ns) == len(record.events)
    assert result.chunk_t_ns == sorted(result.chunk_t_ns)
    assert result.first_token_ns is not None and result.done_ns is not None
    assert result.sent_ns < result.first_token_ns <= result.done_ns
    # The first token cannot arrive before the scripted 20 ms delay.
    assert result.first_token_ns - result.sent_ns >= 20_000_000
    assert result.chunk_kind[-1] == "done"
    # What the answer carries besides the text is what the API declares it carries.
    declared = server_api(api)
    assert result.finish_reason == ("length" if declared.reports_finish_reason else None)
    if declared.reports_usage:
        assert result.usage is not None and result.usage["completion_tokens"] == 20
    else:
        assert result.usage is None
    if declared.reports_timings:
        assert result.timings is not None and result.timings["predicted_n"] == 20
        assert result.timings["predicted_per_second"] > 0
        assert {"prompt_n", "prompt_ms", "predicted_ms"} <= set(result.timings)
    else:
        assert result.timings is None


def test_chat_streams_begin_with_a_role_event(server: CalibratedServer) -> None:
    result = run(server, "openai-chat", Scenario(tokens=3))
    assert result.chunk_kind == ["role", "content", "content", "content", "usage", "usage", "done"]


def test_shimmy_json_events_and_multi_line_bare_tokens(server: CalibratedServer) -> None:
    as_json = run(server, "shimmy", Scenario(tokens=5, shimmy_shape="json"))
    assert (as_json.status, as_json.output_text) == ("ok", Scenario(tokens=5).text())
    words = ("def", " f():\n", "    return", " {}", "\n")
    code = run(server, "shimmy", Scenario(tokens=5, words=words))
    assert code.status == "ok"
    assert code.output_text == "def  f():\n     return  {} \n"


def test_on_content_is_called_once_per_network_read(server: CalibratedServer) -> None:
    # Events are decoded after the stream, so the live hook counts reads.
    server.scenario = Scenario(tokens=7)
    calls: list[tuple[int, int]] = []
    result = generate(
        server.base_url,
        "openai-chat",
        params(),
        timeouts=FAST,
        on_content=lambda n, t: calls.append((n, t)),
    )
    reads = sorted(set(result.chunk_t_ns))
    assert [n for n, _ in calls] == list(range(1, len(calls) + 1))
    assert len(calls) >= len(reads) >= 7
    assert set(reads) <= {t for _, t in calls}
    assert result.first_token_ns in {t for _, t in calls}


@pytest.mark.parametrize("api", API_NAMES)
def test_multi_token_events_in_multi_event_writes(server: CalibratedServer, api: ApiName) -> None:
    # Writes 20 ms apart: even a client that is late by a few ms cannot merge two.
    scenario = Scenario(tokens=20, tokens_per_event=3, events_per_write=2, gap_s=0.02)
    result = run(server, api, scenario)
    record = server.last()

    assert result.status == "ok"
    assert result.output_text == scenario.text()
    assert result.content_events == math.ceil(20 / 3)
    content = [e for e in record.events if e.kind == "content"]
    assert [e.tokens for e in content] == [3, 3, 3, 3, 3, 3, 2]
    # Events that left in one write arrive in one read and share its stamp.
    stamps = content_stamps(result)
    for i in range(0, len(stamps) - 1, 2):
        assert stamps[i] == stamps[i + 1]
    assert stamps[0] != stamps[2]


@pytest.mark.parametrize("api", API_NAMES)
def test_a_non_streamed_answer(server: CalibratedServer, api: ApiName) -> None:
    scenario = Scenario(tokens=15, first_token_delay_s=0.01, gap_s=0.001)
    result = run(server, api, scenario, stream=False)
    record = server.last()

    assert (result.status, result.error) == ("ok", None)
    assert result.output_text == scenario.text()
    assert result.first_token_ns is None  # TTFT is a streaming metric
    assert result.done_ns is not None and result.done_ns - result.sent_ns >= 24_000_000
    assert [e.kind for e in record.events] == ["body"]
    assert record.stream is False
    declared = server_api(api)
    assert result.finish_reason == ("length" if declared.reports_finish_reason else None)
    if declared.reports_usage:
        assert result.usage is not None and result.usage["completion_tokens"] == 15
    if declared.reports_timings:
        assert result.timings is not None and result.timings["predicted_n"] == 15


# -- faults --------------------------------------------------------------------


@pytest.mark.parametrize(("status", "message"), [(500, "KV cache exploded"), (429, "slow down")])
@pytest.mark.parametrize("stream", [True, False])
def test_an_http_error_keeps_its_status_and_body(
    server: CalibratedServer, status: int, message: str, stream: bool
) -> None:
    result = run(
        server, "openai-chat", Scenario(http_status=status, error_message=message), stream=stream
    )
    assert (result.status, result.http_status) == ("http_error", status)
    assert result.error is not None
    assert result.error.startswith(f"HTTP {status}: ")
    assert message in result.error
    assert result.chunk_t_ns == []
    assert server.last().outcome == "http-error"


@pytest.mark.parametrize("line", [NOT_JSON, BAD_JSON], ids=["not-json", "bad-json"])
@pytest.mark.parametrize("api", OPENAI)
def test_a_malformed_event_is_an_error_and_keeps_what_came_before(
    server: CalibratedServer, api: ApiName, line: str
) -> None:
    result = run(server, api, Scenario(tokens=10, injections=(Injection(4, line),)))
    assert result.status == "error"
    assert result.error is not None and "not valid JSON" in result.error
    assert result.content_events == 4


def test_a_malformed_shimmy_event(server: CalibratedServer) -> None:
    result = run(server, "shimmy", Scenario(tokens=10, injections=(Injection(4, NOT_AN_EVENT),)))
    assert result.status == "error"
    assert result.error is not None and "not an object" in result.error
    assert result.content_events == 4


def test_shimmy_bare_text_takes_a_non_json_line_as_a_token(server: CalibratedServer) -> None:
    result = run(server, "shimmy", Scenario(tokens=4, injections=(Injection(2, "data: {\n\n"),)))
    assert result.status == "ok"
    assert result.output_text == "The quick{ brown fox"


def test_an_in_stream_error_event_marks_the_request_as_error(server: CalibratedServer) -> None:
    line = 'data: {"error": {"code": 500, "message": "decode failed"}}\n\n'
    result = run(server, "openai-chat", Scenario(tokens=4, injections=(Injection(2, line),)))
    assert result.status == "error"
    assert result.error == "server reported: decode failed"


def test_comments_and_keep_alives_between_events_are_ignored(server: CalibratedServer) -> None:
    noise = (Injection(1, ": keep-alive\n\n"), Injection(3, ":\r\n\r\n"))
    result = run(server, "openai-completions", Scenario(tokens=5, injections=noise))
    assert (result.status, result.output_text) == ("ok", Scenario(tokens=5).text())


@pytest.mark.parametrize("api", API_NAMES)
def test_no_done_and_no_finish_reason_is_a_disconnect(
    server: CalibratedServer, api: ApiName
) -> None:
    result = run(server, api, Scenario(tokens=6, send_done=False, finish_reason=None))
    assert result.status == "disconnected"
    assert result.error == "stream ended without [DONE] or a finish reason"
    assert result.content_events == 6
    assert result.done_ns is not None


@pytest.mark.parametrize("api", OPENAI)
def test_no_done_after_a_finish_reason_is_ok_with_a_note(
    server: CalibratedServer, api: ApiName
) -> None:
    result = run(server, api, Scenario(tokens=6, send_done=False))
    assert result.status == "ok"
    assert result.error == "stream ended without [DONE] (finish reason was sent)"
    assert result.finish_reason == "length"


@pytest.mark.parametrize("api", API_NAMES)
def test_a_mid_stream_disconnect_keeps_the_partial_stream(
    server: CalibratedServer, api: ApiName
) -> None:
    scenario = Scenario(tokens=20, disconnect_after_tokens=7)
    result = run(server, api, scenario)
    assert result.status == "disconnected"
    assert result.error is not None and result.error.startswith("connection lost")
    assert result.content_events == 7
    assert result.output_text == "".join(scenario.token_texts()[:7])
    assert result.done_ns == result.chunk_t_ns[-1]
    assert server.last().outcome == "disconnected"


def test_a_reset_connection_is_a_disconnect(server: CalibratedServer) -> None:
    scenario = Scenario(tokens=20, disconnect_after_tokens=7, disconnect_reset=True)
    result = run(server, "openai-chat", scenario)
    assert result.status == "disconnected"
    # An RST may discard bytes the client had not read yet: only a prefix is promised.
    assert scenario.text().startswith(result.output_text)


def test_a_disconnect_during_a_non_streamed_body(server: CalibratedServer) -> None:
    result = run(server, "openai-chat", Scenario(disconnect_after_tokens=0), stream=False)
    assert result.status == "disconnected"
    assert result.chunk_t_ns == []


def test_a_stall_past_the_stall_timeout_is_a_timeout(server: CalibratedServer) -> None:
    scenario = Scenario(tokens=10, stalls=(Stall(3, 5.0),))
    result = run(server, "openai-chat", scenario, timeouts=Timeouts(stall_s=0.3, request_s=10))
    assert result.status == "timeout"
    assert result.error == "no data for 0.3 s"
    assert result.content_events == 3


def test_a_stall_shorter_than_the_timeout_shows_in_the_timeline(server: CalibratedServer) -> None:
    result = run(server, "openai-completions", Scenario(tokens=8, stalls=(Stall(5, 0.15),)))
    assert result.status == "ok"
    stamps = content_stamps(result)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) == gaps[4] >= 150_000_000


def test_a_drip_feed_past_the_request_deadline_is_a_timeout(server: CalibratedServer) -> None:
    # Every byte comes well within the stall timeout; the whole request does not.
    scenario = Scenario(tokens=10, drip_after_tokens=2, drip_interval_s=0.01)
    result = run(server, "openai-chat", scenario, timeouts=Timeouts(stall_s=1.0, request_s=0.4))
    assert result.status == "timeout"
    assert result.error == "request exceeded its deadline of 0.4 s"
    assert 2 <= result.content_events < 10


def test_a_drip_feed_within_the_deadline_completes(server: CalibratedServer) -> None:
    scenario = Scenario(tokens=3, drip_after_tokens=2, drip_interval_s=0.0005)
    result = run(server, "shimmy", scenario)
    assert (result.status, result.output_text) == ("ok", scenario.text())


@pytest.mark.parametrize("stream", [True, False])
def test_headers_dripped_past_the_deadline_are_cut_at_the_deadline(
    server: CalibratedServer, stream: bool
) -> None:
    # A byte of status line every 50 ms: never a stall, and the head alone would
    # take seconds. The one request deadline covers the head too, not just the body.
    scenario = Scenario(tokens=4, drip_headers=True, drip_interval_s=0.05)
    start = time.monotonic()
    result = run(server, "openai-chat", scenario, stream=stream, timeouts=DEADLINE)
    elapsed = time.monotonic() - start
    assert result.status == "timeout"
    assert result.error == "request exceeded its deadline of 0.5 s waiting for the response headers"
    assert elapsed < 0.5 + SLACK_S, f"cut after {elapsed:.2f} s, not at the 0.5 s deadline"
    assert (result.http_status, result.chunk_t_ns) == (None, [])


def test_a_slow_non_streamed_answer_is_cut_at_the_deadline(server: CalibratedServer) -> None:
    # The head of a non-streamed answer comes with its body, after the whole generation.
    scenario = Scenario(tokens=4, first_token_delay_s=5.0)
    start = time.monotonic()
    result = run(server, "openai-chat", scenario, stream=False, timeouts=DEADLINE)
    elapsed = time.monotonic() - start
    assert (result.status, result.error) == (
        "timeout",
        "request exceeded its deadline of 0.5 s waiting for the response headers",
    )
    assert elapsed < 0.5 + SLACK_S, f"cut after {elapsed:.2f} s, not at the 0.5 s deadline"


@pytest.mark.parametrize("stream", [True, False])
def test_a_body_past_the_size_cap_is_stopped_at_the_cap(
    server: CalibratedServer, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    # Five 1 MiB tokens against a 1 MiB cap (256 MiB in production): one constant
    # caps streams and non-streamed bodies alike, and reading stops at the cap.
    monkeypatch.setattr(client, "MAX_RESPONSE_BYTES", 1 << 20)
    pulled = 0
    reads = http1.Response.reads

    def counted(
        self: http1.Response, stall_s: float, deadline: float | None = None
    ) -> Iterator[bytes]:
        nonlocal pulled
        for part in reads(self, stall_s, deadline):
            pulled += len(part)
            yield part

    monkeypatch.setattr(http1.Response, "reads", counted)
    result = run(server, "openai-chat", Scenario(tokens=5, words=("x" * (1 << 20),)), stream=stream)
    what = "stream" if stream else "response body"
    assert result.status == "error"
    assert result.error and result.error.startswith(f"{what} larger than 1,048,576 bytes")
    assert pulled <= (1 << 20) + http1.RECV_BYTES


@pytest.mark.parametrize("status", [301, 302, 307])
@pytest.mark.parametrize("stream", [True, False])
def test_a_redirect_is_an_http_error_that_names_the_new_place(
    server: CalibratedServer, status: int, stream: bool
) -> None:
    moved = server.base_url + "/v2/chat/completions"
    scenario = Scenario(verbatim_response=redirect(moved, status))
    result = run(server, "openai-chat", scenario, stream=stream)
    assert (result.status, result.http_status) == ("http_error", status)
    assert result.error is not None
    assert result.error.startswith(
        f"HTTP {status} redirect to {moved}: the endpoint moved; point the config at it"
    )
    assert f"Redirecting to {moved}" in result.error  # the body, as for any HTTP error
    assert result.chunk_t_ns == []
    # Not followed: the server saw one request only.
    assert len([r for r in server.records if r.path == "/v1/chat/completions"]) == 1


@pytest.mark.parametrize(
    ("stream", "expected"), [(True, "an event stream"), (False, "JSON")], ids=["stream", "body"]
)
def test_an_html_page_is_an_http_error_that_names_its_content_type(
    server: CalibratedServer, stream: bool, expected: str
) -> None:
    result = run(server, "openai-chat", Scenario(verbatim_response=HTML_PAGE), stream=stream)
    assert (result.status, result.http_status) == ("http_error", 200)
    assert result.error is not None
    assert result.error.startswith(
        f"HTTP 200 but Content-Type text/html, not {expected}: is this the inference server's port?"
    )
    assert "Welcome to nginx!" in result.error  # the first bytes of what came
    assert result.chunk_t_ns == []


def test_a_10_mb_line_is_an_error_with_a_clear_message(server: CalibratedServer) -> None:
    # A budget whose byte cap (collector.client.response_cap) lets 10 MB through, so the
    # SSE parser's own line limit is what stops it.
    server.scenario = Scenario(tokens=5, long_line_after_tokens=2)
    big = dataclasses.replace(params(True), max_tokens=4000)
    result = generate(server.base_url, "openai-chat", big, timeouts=FAST)
    assert result.status == "error"
    assert result.error is not None
    assert "SSE line longer than 4 MiB without a line end" in result.error
    assert result.content_events == 2


def test_a_refused_connection_is_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = generate(f"http://127.0.0.1:{port}", "openai-chat", params(), timeouts=FAST)
    assert result.status == "error"
    assert result.error is not None and result.error.startswith("connect failed")
    assert result.http_status is None and result.chunk_t_ns == []


# -- timing accuracy -------------------------------------------------------------


def test_arrival_stamps_track_the_servers_send_stamps() -> None:
    """In-process smoke test; the strict p99 < 1 ms target is `nox -s perf`'s,
    with the server in its own process (here both share one GIL)."""
    scenario = Scenario(tokens=200, first_token_delay_s=0.005, gap_s=0.002)
    with CalibratedServer(scenario) as srv:
        result = generate(srv.base_url, "openai-chat", params(), timeouts=FAST)
        record = srv.last()
    assert result.status == "ok"
    assert len(result.chunk_t_ns) == len(record.events)
    errors_ns = [a - s for a, s in zip(result.chunk_t_ns, record.sent_ns, strict=True)]
    assert statistics.median(errors_ns) < 2_000_000
    # Tokens are neither merged nor lost, and the stamps span the scripted
    # timeline (the server never sends early, so a busy machine can only stretch it).
    content = content_stamps(result)
    assert len(content) == 200
    assert content[-1] - content[0] >= 199 * 2_000_000 * 0.95


# -- the server's own surface ------------------------------------------------------


def test_health_models_tokenize_and_last(server: CalibratedServer) -> None:
    with httpx.Client(base_url=server.base_url, trust_env=False) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/v1/models").json()["data"][0]["id"] == "calibration"
        assert http.get("/_calibration/last").status_code == 404
        tokens = http.post("/tokenize", json={"content": " one two  three\n"}).json()["tokens"]
        assert len(tokens) == 3
        run(server, "openai-chat", Scenario(tokens=4))
        last = StreamRecord.from_dict(http.get("/_calibration/last").json())
    assert last.outcome == "complete"
    assert last.sent_ns == server.last().sent_ns
    assert [e.kind for e in last.events] == ["role", *["content"] * 4, "final", "usage", "done"]


def test_the_scenario_can_be_read_and_replaced_over_http(server: CalibratedServer) -> None:
    with httpx.Client(base_url=server.base_url, trust_env=False) as http:
        replaced = http.post("/_calibration/scenario", json={"tokens": 3, "gap_s": 0.0})
        assert replaced.status_code == 200
        assert http.get("/_calibration/scenario").json()["tokens"] == 3
        bad = http.post("/_calibration/scenario", json={"tokenz": 3})
        assert bad.status_code == 400 and "tokenz" in bad.json()["error"]["message"]
    assert server.scenario.tokens == 3


def test_scenarios_round_trip_and_reject_unknown_keys() -> None:
    scenario = Scenario(
        tokens=9,
        jitter_s=0.001,
        stalls=(Stall(2, 0.5),),
        injections=(Injection(1, NOT_JSON),),
        words=("a", "b"),
    )
    assert Scenario.from_dict(json.loads(json.dumps(scenario.to_dict()))) == scenario
    with pytest.raises(ConfigError, match="unknown key"):
        Scenario.from_dict({"tokns": 3})
    with pytest.raises(ConfigError, match="tokens_per_event"):
        Scenario(tokens_per_event=0)


def test_a_bad_scenario_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tokens": "many"}')
    with pytest.raises(ConfigError, match="scenario"):
        Scenario.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Scenario.load(bad)
    with pytest.raises(ConfigError, match="No such file"):
        Scenario.load(tmp_path / "missing.json")


def test_jitter_is_seeded_and_bounded() -> None:
    a = Scenario(tokens=50, gap_s=0.002, jitter_s=0.001, seed=7).schedule()
    assert a == Scenario(tokens=50, gap_s=0.002, jitter_s=0.001, seed=7).schedule()
    assert a != Scenario(tokens=50, gap_s=0.002, jitter_s=0.001, seed=8).schedule()
    gaps = [b - c for c, b in zip(a.writes_ns, a.writes_ns[1:], strict=False)]
    assert all(1_000_000 <= g <= 3_000_000 for g in gaps)
    assert len(set(gaps)) > 10


def test_stalls_shift_the_rest_of_the_timeline() -> None:
    plain = Scenario(tokens=6, first_token_delay_s=0.0, gap_s=0.001).schedule()
    stalled = Scenario(
        tokens=6, first_token_delay_s=0.0, gap_s=0.001, stalls=(Stall(2, 0.5), Stall(6, 1.0))
    ).schedule()
    assert stalled.writes_ns[:2] == plain.writes_ns[:2]
    assert [s - p for s, p in zip(stalled.writes_ns, plain.writes_ns, strict=True)][2:] == [
        500_000_000
    ] * 4
    assert stalled.tail_ns - plain.tail_ns == 1_500_000_000


def test_the_server_runs_as_its_own_process(tmp_path: Path) -> None:
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(Scenario(tokens=5, gap_s=0.0).to_dict()))
    scenario = str(scenario_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", "calibration.server", "--port", "0", "--scenario", scenario],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        base_url = line.split()[-1]
        result = generate(base_url, "openai-completions", params(), timeouts=FAST)
        assert (result.status, result.content_events) == ("ok", 5)
        record = StreamRecord.from_dict(httpx.get(base_url + "/_calibration/last").json())
        assert len(record.events) == len(result.chunk_t_ns)
        # One monotonic clock for both processes: a write is stamped before it is read.
        lead_ns = [a - s for a, s in zip(result.chunk_t_ns, record.sent_ns, strict=True)]
        assert statistics.median(lead_ns) > -1_000_000
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert stderr == ""
