"""One generation request, timed event by event.

Every network read is timestamped on the moment it returns, with the same
monotonic clock as the send time, before any parsing; all SSE events completed
by that read share its timestamp. Nothing slower than a dict append happens
between reads, so the clock measures the server, not us.

llama-server closes the connection after a stream, so each request opens its
own connection (no pooling, `Connection: close`).
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from collector.apis import (
    PATHS,
    ApiName,
    Decoded,
    GenerationParams,
    decode_body,
    decode_event,
    request_body,
)
from collector.sse import SSEParser
from evidence.errors import StreamError

Status = Literal["ok", "timeout", "http_error", "disconnected", "error"]
Clock = Callable[[], int]

# What the live progress display gets after each content event: (tokens so far, t_ns).
OnContent = Callable[[int, int], None]


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    stall_s: float = 120.0  # no byte for this long: the stream has stalled
    request_s: float = 900.0  # whole request, send to end of stream


@dataclass
class RequestResult:
    """Raw facts of one request, ready for the `requests` and `chunks` tables."""

    api: ApiName
    params: GenerationParams
    started_utc: datetime
    sent_ns: int
    status: Status = "ok"
    http_status: int | None = None
    error: str | None = None
    finish_reason: str | None = None
    first_token_ns: int | None = None
    done_ns: int | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    chunk_t_ns: list[int] = field(default_factory=list)
    chunk_text: list[str] = field(default_factory=list)
    chunk_kind: list[str] = field(default_factory=list)

    @property
    def output_text(self) -> str:
        return "".join(
            t for t, k in zip(self.chunk_text, self.chunk_kind, strict=True) if k == "content"
        )

    @property
    def content_events(self) -> int:
        return sum(1 for k in self.chunk_kind if k == "content")


def generate(
    base_url: str,
    api: ApiName,
    params: GenerationParams,
    *,
    timeouts: Timeouts = Timeouts(),
    clock: Clock = time.perf_counter_ns,
    headers: dict[str, str] | None = None,
    on_content: OnContent | None = None,
) -> RequestResult:
    """Send one request and record every event. Never raises for server faults:
    they become the result's status; only KeyboardInterrupt escapes."""
    url = base_url.rstrip("/") + PATHS[api]
    body = json.dumps(request_body(api, params)).encode()
    all_headers = {"Content-Type": "application/json", "Connection": "close"}
    if params.stream:
        all_headers["Accept"] = "text/event-stream"
    all_headers.update(headers or {})
    timeout = httpx.Timeout(
        connect=timeouts.connect_s, read=timeouts.stall_s, write=30.0, pool=timeouts.connect_s
    )
    # The clock starts once the client is built, so no set-up cost lands in TTFT.
    http = httpx.Client(timeout=timeout, trust_env=False, verify=_tls_context())
    result = RequestResult(api, params, started_utc=datetime.now(UTC), sent_ns=clock())
    deadline = result.sent_ns + int(timeouts.request_s * 1e9)
    try:
        with (
            http,
            http.stream("POST", url, content=body, headers=all_headers) as response,
        ):
            result.http_status = response.status_code
            if response.status_code >= 400:
                _http_error(result, response, clock)
            elif params.stream:
                _read_stream(result, response, clock, deadline, on_content)
            else:
                _read_body(result, response, clock, deadline)
    except httpx.ConnectTimeout as exc:
        result.status = "timeout"
        result.error = f"{type(exc).__name__}: no connection within {timeouts.connect_s:g} s"
    except httpx.TimeoutException as exc:
        result.status = "timeout"
        result.error = f"{type(exc).__name__}: no data for {timeouts.stall_s:g} s"
    except _Deadline:
        result.status = "timeout"
        result.error = f"request exceeded {timeouts.request_s:g} s"
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        result.status = "disconnected"
        result.error = f"{type(exc).__name__}: {exc}"
    except httpx.HTTPError as exc:
        result.status = "error"
        result.error = f"{type(exc).__name__}: {exc}"
    except StreamError as exc:
        result.status = "error"
        result.error = str(exc)
    if result.done_ns is None and result.chunk_t_ns:
        result.done_ns = result.chunk_t_ns[-1]
    return result


class _Deadline(Exception):
    pass


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the trust store costs ~45 ms of CPU. Paid per request, that burst
    # came right before the stream and cost the collector its scheduling
    # priority on a busy machine (the engine under test keeps every core
    # busy): arrival stamps of the first tokens ran ms late. Once per process.
    return httpx.create_ssl_context(trust_env=False)


def _http_error(result: RequestResult, response: httpx.Response, clock: Clock) -> None:
    raw = b""
    for part in response.iter_raw():
        raw += part
        if len(raw) > 4096:
            break
    result.done_ns = clock()
    result.status = "http_error"
    text = raw[:4096].decode("utf-8", errors="replace").strip()
    result.error = (
        f"HTTP {response.status_code}: {text[:300]}" if text else (f"HTTP {response.status_code}")
    )


def _record(result: RequestResult, t_ns: int, decoded: Decoded) -> None:
    result.chunk_t_ns.append(t_ns)
    result.chunk_text.append(decoded.text)
    result.chunk_kind.append(decoded.kind)
    if decoded.kind == "content" and decoded.text and result.first_token_ns is None:
        result.first_token_ns = t_ns
    if decoded.finish_reason:
        result.finish_reason = decoded.finish_reason
    if decoded.usage:
        result.usage = decoded.usage
    if decoded.timings:
        result.timings = decoded.timings
    if decoded.error and result.error is None:
        result.status = "error"
        result.error = f"server reported: {decoded.error}"


def _read_stream(
    result: RequestResult,
    response: httpx.Response,
    clock: Clock,
    deadline: int,
    on_content: OnContent | None,
) -> None:
    parser = SSEParser()
    api = result.api
    saw_done = False
    tokens = 0
    for raw in response.iter_raw():
        t_ns = clock()
        for event in parser.feed(raw):
            decoded = decode_event(api, event.data)
            _record(result, t_ns, decoded)
            if decoded.kind == "done":
                saw_done = True
                result.done_ns = t_ns
            elif decoded.kind == "content" and on_content is not None:
                tokens += 1
                on_content(tokens, t_ns)
        if t_ns > deadline:
            raise _Deadline
    end_ns = clock()
    for event in parser.close():
        decoded = decode_event(api, event.data)
        _record(result, end_ns, decoded)
        if decoded.kind == "done":
            saw_done = True
            result.done_ns = end_ns
    if not saw_done and result.status == "ok":
        if result.finish_reason is None:
            result.status = "disconnected"
            result.error = "stream ended without [DONE] or a finish reason"
        else:
            result.error = "stream ended without [DONE] (finish reason was sent)"
        result.done_ns = end_ns


def _read_body(
    result: RequestResult, response: httpx.Response, clock: Clock, deadline: int
) -> None:
    raw = bytearray()
    for part in response.iter_raw():
        raw += part
        if clock() > deadline:
            raise _Deadline
    t_ns = clock()
    decoded = decode_body(result.api, bytes(raw))
    _record(result, t_ns, decoded)
    result.done_ns = t_ns
    # A non-streamed answer has no first token to time: TTFT is a streaming metric.
    result.first_token_ns = None
