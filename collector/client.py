"""One generation request, timed event by event.

Every network read is timestamped on the moment it returns, with the same
monotonic clock as the send time, before any parsing; all SSE events completed
by that read share its timestamp. Between reads the loop only stamps the read
and appends it (and its stamp) to two lists, and calls the progress callback;
framing and JSON decoding wait until the stream has ended, so the clock
measures the server, not us.

The HTTP exchange goes through `collector.http1` (one `recv` per read, no
client library layers in between). llama-server closes the connection after
a stream, so each request opens its own connection (`Connection: close`).

What is not an inference server's answer is named, not parsed: a status of
400 or more, a redirect (never followed: the config should point at the
endpoint itself), or a body whose Content-Type is not the one asked for (a
proxy's or another service's HTML page). One deadline covers the connect, the
head and the body (`request_deadline` says how long: the token budget at the
slowest rate the campaign accepts); a stream is also cut when it stalls, but a
non-streamed answer is silent until it is complete, so only the deadline holds
it. A body, streamed or not, stops at what its token budget can take
(`response_cap`), and never beyond MAX_RESPONSE_BYTES.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import urljoin

from collector import http1
from collector.apis import Adapter, ApiName, Decoded, GenerationParams, adapter
from collector.auth import url_credentials
from collector.sse import SSEParser
from common.errors import StreamError

RequestStatus = Literal["ok", "timeout", "http_error", "disconnected", "error"]
Clock = Callable[[], int]

# What the live progress display gets after each network read of a stream:
# (reads so far, t_ns). Reads, not tokens: events are decoded after the stream.
OnContent = Callable[[int, int], None]


class Response(Protocol):
    """What the client needs of a response: its status, and its body one network
    read at a time (`http1.Response` is the one the collector uses)."""

    status: int

    @property
    def headers(self) -> Mapping[str, str]:
        """Names in lower case (or looked up case-insensitively)."""
        ...

    def reads(self, stall_s: float, deadline: float | None = None) -> Iterator[bytes]: ...

    def close(self) -> None: ...


# The HTTP seam: send a POST; return the response whose body `reads()` yields per
# network read (`http1.post`, or the benchmarks' httpx arm).
Post = Callable[[http1.PostRequest], Response]


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    # A stream with no byte for this long has stalled; a stream's head may take this
    # plus `load_s`. Not applied to a non-streamed answer, silent by nature.
    stall_s: float = 120.0
    request_s: float = 900.0  # whole request: connect, headers and body
    # How `request_s` was reached (`Deadline.why`), for the error line of a request it cuts.
    request_why: str = ""
    load_s: float = 0.0  # a model load the server may do before it answers (Shimmy 1.7.0)


@dataclass(frozen=True)
class Deadline:
    """A request's whole-request deadline in seconds, and what it is made of."""

    seconds: float
    why: str  # "1000 tokens at 1 tok/s + 120 s to first byte + 35 s model load"


def _secs(seconds: float) -> str:
    return f"{round(seconds, 2):g}" if seconds >= 1 else f"{seconds:.2g}"


def request_deadline(
    max_tokens: int,
    *,
    min_tokens_per_s: float,
    first_byte_s: float,
    load_s: float = 0.0,
    cap_s: float | None = None,
) -> Deadline:
    """How long a request with a budget of `max_tokens` may take, all of it.

    Its whole budget at `min_tokens_per_s` (the slowest generation the campaign
    accepts: the protocol expects 1-3 tokens/s on local hardware), plus
    `first_byte_s` for the prompt and the first byte (the campaign's stall timeout),
    plus `load_s` for a model load the server does inside the request (Shimmy 1.7.0
    loads the model for every request). `cap_s` (the config's `request_timeout_s`)
    cuts it shorter when set, and then `why` says so: a request the budget allows
    is never cut without the error naming what cut it.
    """
    total = max_tokens / min_tokens_per_s + first_byte_s + load_s
    why = f"{max_tokens} tokens at {min_tokens_per_s:g} tok/s"
    why += f" + {_secs(first_byte_s)} s to first byte"
    if load_s > 0:
        why += f" + {_secs(load_s)} s model load"
    if cap_s is not None and cap_s < total:
        return Deadline(
            float(cap_s), f"campaign.request_timeout_s; the budget allowed {_secs(total)} s: {why}"
        )
    return Deadline(total, why)


@dataclass
class RequestResult:
    """Raw facts of one request, ready for the `requests` and `chunks` tables."""

    api: ApiName
    params: GenerationParams
    started_utc: datetime
    sent_ns: int
    status: RequestStatus = "ok"
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
    post: Post = http1.post,
) -> RequestResult:
    """Send one request and record every event. Never raises for server faults:
    they become the result's status; only KeyboardInterrupt escapes. `post` is
    the HTTP seam (the benchmarks compare `http1.post` with an httpx one)."""
    asked = adapter(api)
    url = base_url.rstrip("/") + asked.api.path
    body = json.dumps(asked.request_body(params)).encode()
    all_headers = {"Content-Type": "application/json", "Connection": "close"}
    if params.stream:
        all_headers["Accept"] = "text/event-stream"
    all_headers.update(headers or {})
    # The URL's credentials as Basic auth, here rather than in each transport behind
    # the seam: httpx would let them replace the API key, and a redirect's message
    # would quote them.
    url, all_headers = url_credentials(url, all_headers)
    result = RequestResult(api, params, started_utc=datetime.now(UTC), sent_ns=clock())
    deadline = time.monotonic() + timeouts.request_s
    # A non-streamed answer sends nothing until it is whole: its reads wait as long as
    # the deadline allows, never a stall timeout.
    stall_s, head_s = _waits(timeouts, params.stream)
    response: Response | None = None
    try:
        # One deadline for connect, headers and body: a server dripping its headers
        # is held to it like one dripping its body.
        response = post(
            http1.PostRequest(
                url,
                body,
                all_headers,
                connect_timeout_s=timeouts.connect_s,
                read_timeout_s=head_s,
                deadline=deadline,
            )
        )
        result.http_status = response.status
        reads = response.reads(stall_s, deadline)
        if response.status >= 400:
            _http_error(result, reads, clock, f"HTTP {response.status}", ": ")
        elif (refusal := _not_an_answer(response, url, params.stream)) is not None:
            _http_error(result, reads, clock, refusal, "\n")
        elif params.stream:
            _read_stream(result, asked, reads, clock, on_content)
        else:
            _read_body(result, asked, reads, clock)
    except http1.HTTPFailure as exc:
        result.status, result.error = _failure(
            exc, timeouts, headers_read=response is not None, stream=params.stream
        )
    except StreamError as exc:
        result.status = "error"
        result.error = str(exc)
    finally:
        if response is not None:
            response.close()
    if result.done_ns is None and result.chunk_t_ns:
        result.done_ns = result.chunk_t_ns[-1]
    return result


def _waits(timeouts: Timeouts, stream: bool) -> tuple[float, float]:
    """The longest wait for one read of the body, and for the head."""
    if not stream:
        return timeouts.request_s, timeouts.request_s
    return timeouts.stall_s, timeouts.stall_s + timeouts.load_s


def _failure(
    exc: http1.HTTPFailure, timeouts: Timeouts, *, headers_read: bool, stream: bool
) -> tuple[RequestStatus, str]:
    # Before the head, the server has not answered at all (or drips its headers):
    # say so, the body's chunks cannot show it.
    waiting = "" if headers_read else " waiting for the response headers"
    # Only a stream stalls: a non-streamed read waits as long as the deadline.
    if exc.kind == "timeout" and stream:
        wait_s = timeouts.stall_s if headers_read else timeouts.stall_s + timeouts.load_s
        return "timeout", f"no data for {_secs(wait_s)} s{waiting}"
    if exc.kind in ("deadline", "timeout"):
        why = f" ({timeouts.request_why})" if timeouts.request_why else ""
        return (
            "timeout",
            f"request exceeded its deadline of {_secs(timeouts.request_s)} s{why}{waiting}",
        )
    if exc.kind == "connect":
        return "error", f"connect failed: {exc}"
    if exc.kind == "disconnected":
        return "disconnected", f"connection lost: {exc}"
    return "error", f"bad HTTP response: {exc}"


def _not_an_answer(response: Response, url: str, stream: bool) -> str | None:
    """Why a response below 400 is not the inference server's answer, or None.

    A missing Content-Type passes: servers that omit it still get parsed, and
    a body that is no answer then fails in the parser."""
    headers = response.headers
    status = response.status
    if 300 <= status < 400:
        location = headers.get("location")
        if not location:
            return f"HTTP {status} redirect without a Location: check the config's URL"
        target = urljoin(url, location)[:300]
        return f"HTTP {status} redirect to {target}: the endpoint moved; point the config at it"
    media = headers.get("content-type", "").partition(";")[0].strip().lower()[:100]
    if not media:
        return None
    json_body = media == "application/json" or media.endswith("+json")
    accepted = media == "text/event-stream" if stream else json_body
    if accepted:
        return None
    wanted = "an event stream" if stream else "JSON"
    # JSON to a stream request is a server that ignored `"stream": true`, not a wrong port.
    hint = "the server did not stream" if json_body else "is this the inference server's port?"
    return f"HTTP {status} but Content-Type {media}, not {wanted}: {hint}"


def _http_error(
    result: RequestResult, reads: Iterator[bytes], clock: Clock, what: str, before_body: str
) -> None:
    """Record a response that is not an answer: `what` says why, and the first
    bytes of its body (a server's error message, a page's title) follow it."""
    raw = bytearray()
    try:
        for part in reads:
            raw += part
            if len(raw) > 4096:
                break
    except http1.HTTPFailure:
        pass  # the status line already says what happened; the body is a courtesy
    result.done_ns = clock()
    result.status = "http_error"
    text = bytes(raw[:4096]).decode("utf-8", errors="replace").strip()
    result.error = f"{what}{before_body}{text[:300]}" if text else what


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


# A response body larger than this, streamed or not, is broken or hostile: it is
# kept whole in memory until it ends, so reading stops here.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# ... and well before, for the answer a request asked for: a token is a vocabulary
# piece of tens of bytes, at most six times that JSON-escaped, and a streamed event
# wraps it in a few hundred (id, model, usage, timings); 4 KiB a token, plus 1 MiB
# for the rest of the body, is far above any honest answer (a 1000-token answer:
# about 5 MiB) and far below what a hostile one could make us hold.
BYTES_PER_TOKEN = 4096
BODY_ALLOWANCE = 1 << 20


def response_cap(max_tokens: int) -> int:
    """The most bytes an answer of at most `max_tokens` tokens may take on the wire."""
    return min(MAX_RESPONSE_BYTES, BODY_ALLOWANCE + max(0, max_tokens) * BYTES_PER_TOKEN)


def _too_large(what: str, cap: int, max_tokens: int) -> StreamError:
    return StreamError(
        f"{what} larger than {cap:,} bytes, more than an answer of {max_tokens} tokens can "
        f"take ({BYTES_PER_TOKEN} bytes a token + {BODY_ALLOWANCE >> 20} MiB); stopped"
    )


def _read_stream(
    result: RequestResult,
    asked: Adapter,
    reads: Iterator[bytes],
    clock: Clock,
    on_content: OnContent | None,
) -> None:
    """Receive first, parse after. The token loop only stamps and keeps each
    network read; SSE framing and JSON decoding happen once the stream has
    ended, on the kept reads in order, so every event still gets the stamp of
    the read that completed it, and the collector's own work never delays the
    next read (or competes with the server for CPU) while tokens arrive."""
    stamps: list[int] = []
    parts: list[bytes] = []
    stamp, keep = stamps.append, parts.append
    size = 0
    cap = response_cap(result.params.max_tokens)
    ended = False
    try:
        for raw in reads:
            t_ns = clock()
            stamp(t_ns)
            keep(raw)
            size += len(raw)
            if size > cap:
                raise _too_large("stream", cap, result.params.max_tokens)
            if on_content is not None:
                on_content(len(stamps), t_ns)
        ended = True
    finally:
        # Whatever arrived before a fault is kept: a disconnected request keeps
        # its partial chunks (the fault itself is recorded by the caller).
        _parse_stream(result, asked, stamps, parts, clock(), ended)


def _parse_stream(
    result: RequestResult,
    asked: Adapter,
    stamps: list[int],
    parts: list[bytes],
    end_ns: int,
    ended: bool,
) -> None:
    parser = SSEParser()
    decode_event = asked.decode_event
    saw_done = False
    try:
        for t_ns, raw in zip(stamps, parts, strict=True):
            for event in parser.feed(raw):
                decoded = decode_event(event.data)
                _record(result, t_ns, decoded)
                if decoded.kind == "done":
                    saw_done = True
                    result.done_ns = t_ns
        for event in parser.close():
            decoded = decode_event(event.data)
            _record(result, end_ns, decoded)
            if decoded.kind == "done":
                saw_done = True
                result.done_ns = end_ns
    except StreamError as exc:
        if result.status == "ok":
            result.status, result.error = "error", str(exc)
        return
    if ended and not saw_done and result.status == "ok":
        if result.finish_reason is None:
            result.status = "disconnected"
            result.error = "stream ended without [DONE] or a finish reason"
        else:
            result.error = "stream ended without [DONE] (finish reason was sent)"
        result.done_ns = end_ns


def _read_body(result: RequestResult, asked: Adapter, reads: Iterator[bytes], clock: Clock) -> None:
    parts: list[bytes] = []
    size = 0
    cap = response_cap(result.params.max_tokens)
    for part in reads:
        size += len(part)
        # Checked before the read is kept, so no more than the cap is ever held.
        if size > cap:
            raise _too_large("response body", cap, result.params.max_tokens)
        parts.append(part)
    t_ns = clock()
    decoded = asked.decode_body(b"".join(parts))
    _record(result, t_ns, decoded)
    result.done_ns = t_ns
    # A non-streamed answer has no first token to time: TTFT is a streaming metric.
    result.first_token_ns = None
