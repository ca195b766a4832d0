"""The calibrated stream server: scripted token timelines over real HTTP.

A `Scenario` says what one generation request gets back: how long before the
first token, how many tokens, the gap between writes (with seeded jitter), how
tokens are grouped into events and events into writes, and which faults to
play (stalls, an HTTP error status, malformed lines, a missing `[DONE]`, an
abrupt disconnect, a 10 MB line, a byte-at-a-time drip of the body or of the
headers, a verbatim answer such as a redirect or an HTML page). Every request
replays the same timeline: the jitter generator is re-seeded per request.

Served paths:

* POST /v1/chat/completions, /v1/completions, /api/generate: the scenario,
  streamed (llama-server's SSE shapes; Shimmy's bare-text or JSON events) or,
  for `"stream": false`, as one JSON body sent when the last token would be.
* GET /health, GET /v1/models: always ready.
* POST /tokenize: `{"tokens": [...]}` with one id per whitespace-separated word
  of `content` (crc32 of the word modulo 32000): scenario tokens are words, so
  the count matches the scenario's token count. Not a real tokenizer.
* GET /_calibration/last: the last generation request's `StreamRecord` as
  JSON, once its stream has ended (waits up to 5 s: 409 if it is still
  running then, 404 when there was no request).
* GET or POST /_calibration/scenario: read or replace the scenario.

Timing. Each write's deadline is absolute (request received + offset), so
delays never accumulate. Waiting sleeps until `spin_s` before the deadline,
then spins on `perf_counter_ns` for the rest, yielding the CPU (and the GIL,
so an in-process client thread can still stamp its reads) on each turn.
Sleeping alone wakes 50-100 µs late (timer slack, scheduler); spinning alone
burns a core for the whole gap. The default 0.5 ms of spin costs a quarter of
a core at 2 ms gaps and ends within a few µs of the deadline when a CPU is
free; on a loaded machine the scheduler's preemption dominates either way.
Use `spin_s=0` when CPU matters more than the schedule. Each record's
`scheduled_ns` against `sent_ns` shows what was achieved (the difference
includes the write itself).

Send stamps are `time.perf_counter_ns()` right after the write returns; on
Linux that clock is CLOCK_MONOTONIC, shared by all processes, so a client in
another process can compare its own stamps with them.

Streams use HTTP/1.1 chunked encoding with `Connection: close`, like
llama-server, so a dropped connection is a truncated body to the client, and
a stream without `[DONE]` still ends cleanly. The socket has TCP_NODELAY: small
writes leave at once instead of waiting for the previous one's ACK.

Run as a process (so the server does not share the client's GIL):

    python -m calibration.server --port 8089 --scenario scenario.json

It prints `listening on http://127.0.0.1:PORT` once it accepts connections
(use `--port 0` for any free port) and serves until SIGINT or SIGTERM.

Shimmy 1.7.0 mode (`--shimmy-1.7.0 [--load-s S] [--loader-log FILE]
[--cpu-moe]`, or `CalibratedServer(shimmy=ShimmyMode(...))`): every generation
request first "loads the model" for `load_s`, writing a llama.cpp b6686 loader
log (stderr by default), and the wire is Shimmy's own: see calibration.shimmy.
Only /api/generate and /v1/chat/completions generate; the scenario's
`finish_reason` and `usage` are ignored there (Shimmy always says "stop" and
never counts).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from calibration.scenario import Scenario, SentEvent, StreamRecord
from calibration.shapes import (
    LAST_CHUNK,
    SHAPES,
    SHIMMY_1_7_SHAPES,
    Answer,
    Shapes,
    chunk,
    prompt_words,
    timings_object,
    usage_object,
)
from calibration.shimmy import (
    CORS_HEADERS,
    LoaderLog,
    ShimmyMode,
    backend_slot,
    health_body,
    play_load,
)
from common.errors import ConfigError
from common.server_apis import server_api

# The spin loop's pause: sched_yield releases the GIL (a bare loop would hold it
# from an in-process client thread for up to the 5 ms switch interval) and
# costs ~1 µs, where time.sleep(0) costs a timer-slack wake-up (~80 µs).
_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", lambda: None)

# Each mirrored API at its declared path (common.server_apis).
_API_BY_PATH: dict[str, str] = {server_api(api).path: api for api in SHAPES}
_SHIMMY_API_BY_PATH: dict[str, str] = {server_api(api).path: api for api in SHIMMY_1_7_SHAPES}
_LONG_LINE_PIECE = 64 * 1024
_CORS = dict(
    line.split(": ", 1) for line in CORS_HEADERS.decode().splitlines()
)  # Shimmy's CORS middleware answers every route with these
_MISSING_MODEL = "Failed to deserialize the JSON body into the target type: missing field `model`"
_RECORDS_KEPT = 1000


class CalibratedServer:
    """The server, run in a background thread of this process.

    `with CalibratedServer(Scenario(tokens=50)) as server:` starts it on a free
    port of 127.0.0.1; `server.base_url` is its address, `server.last()` the
    record of the last generation request.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        spin_s: float = 0.0005,
        shimmy: ShimmyMode | None = None,
    ) -> None:
        self._scenario = scenario or Scenario()
        # Shimmy 1.7.0 mode (calibration.shimmy): per-request loads, its wire quirks.
        self.shimmy = shimmy
        self.loader_log = LoaderLog(shimmy.log) if shimmy is not None else None
        self.backend = threading.Lock()
        self._lock = threading.Lock()
        self._records: deque[StreamRecord] = deque(maxlen=_RECORDS_KEPT)
        self._connections: set[socket.socket] = set()
        self.stopping = threading.Event()
        self.spin_ns = round(spin_s * 1e9)
        self._httpd = _HTTPServer((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the free one picked when asked for port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://host:port`, ready for the collector's `generate`."""
        return f"http://{self._httpd.server_name}:{self.port}"

    @property
    def scenario(self) -> Scenario:
        """The scenario new requests get; set it to change it between requests."""
        with self._lock:
            return self._scenario

    @scenario.setter
    def scenario(self, value: Scenario) -> None:
        with self._lock:
            self._scenario = value

    @property
    def records(self) -> list[StreamRecord]:
        """Records of recent generation requests, oldest first."""
        with self._lock:
            return list(self._records)

    def last(self, timeout_s: float = 5.0) -> StreamRecord:
        """The last generation request's record, once its stream has ended.

        Raises LookupError when no request came, TimeoutError when the stream
        is still running after `timeout_s`.
        """
        with self._lock:
            if not self._records:
                raise LookupError("the calibration server has had no generation request")
            record = self._records[-1]
        if not record.finished.wait(timeout_s):
            raise TimeoutError(f"the last stream was still running after {timeout_s:g} s")
        return record

    def start(self) -> Self:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"calibration-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving: end running streams at once and join their threads."""
        self.stopping.set()
        with self._lock:
            live = list(self._connections)
        for conn in live:
            # Unblocks a handler stuck in a send or a read, so the join below is quick.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
        if self.loader_log is not None:
            self.loader_log.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_record(self, record: StreamRecord) -> None:
        """Called by the handler when a generation request arrives."""
        with self._lock:
            self._records.append(record)

    def track(self, conn: socket.socket, live: bool) -> None:
        """Called by the handler as a connection opens (live) and closes."""
        with self._lock:
            if live:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _HTTPServer(ThreadingHTTPServer):
    # Handler threads are joined on close (after `stopping` ends their streams),
    # so no stream outlives the server that a test started.
    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        calibration: CalibratedServer,
    ) -> None:
        self.calibration = calibration
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (a DNS lookup, sometimes
        # seconds); the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-response is a scenario, not a server fault.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Abort(Exception):
    """The server is closing: stop the stream where it is."""


class _Dropped(Exception):
    """The scenario closed the connection mid-response."""


class _Wire:
    """The response socket: writes at absolute deadlines, stamped as they return."""

    def __init__(self, handler: _Handler, calibration: CalibratedServer) -> None:
        self._handler = handler
        self._stopping = calibration.stopping
        self._spin_ns = calibration.spin_ns
        # Called once the last token is generated, before the end of the answer is
        # written: Shimmy frees its one backend when generation returns, so a client
        # that sends its next request after [DONE] never finds it taken.
        self.generated: Callable[[], None] = lambda: None

    def wait_until(self, deadline_ns: int) -> None:
        """Return at `deadline_ns` (perf_counter_ns); raise _Abort if the server closes."""
        while True:
            left = deadline_ns - time.perf_counter_ns()
            if left <= 0:
                break
            if left > self._spin_ns:
                if self._stopping.wait((left - self._spin_ns) / 1e9):
                    raise _Abort
                continue
            while time.perf_counter_ns() < deadline_ns:
                _yield_cpu()
            break
        if self._stopping.is_set():
            raise _Abort

    def send(self, data: bytes) -> int:
        """Write `data` now; return the perf_counter_ns stamp taken as the write returned."""
        wfile = self._handler.wfile
        wfile.write(data)
        wfile.flush()
        return time.perf_counter_ns()

    def drip(self, data: bytes, interval_ns: int) -> int:
        """Write `data` one byte per `interval_ns`; return the last write's stamp."""
        t = next_ns = time.perf_counter_ns()
        for i in range(len(data)):
            next_ns += interval_ns
            self.wait_until(next_ns)
            t = self.send(data[i : i + 1])
        return t

    def send_head(self, head: bytes, scenario: Scenario) -> int:
        """Write the status line and headers: at once, or dripped if the scenario says so."""
        if scenario.drip_headers:
            return self.drip(head, round(scenario.drip_interval_s * 1e9))
        return self.send(head)

    def drop(self, reset: bool) -> None:
        """Close the connection abruptly: no terminating chunk, no `[DONE]`."""
        conn = self._handler.connection
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The buffered reader holds a reference that would keep the socket open.
            self._handler.rfile.close()
            conn.close()
        else:
            conn.shutdown(socket.SHUT_RDWR)
        raise _Dropped


class _Stream:
    """Plays a scenario as an SSE stream onto a wire, recording every event."""

    def __init__(
        self, wire: _Wire, scenario: Scenario, record: StreamRecord, shapes: Shapes
    ) -> None:
        self.wire = wire
        self.sc = scenario
        self.record = record
        self.shapes = shapes
        self.tokens_sent = 0
        self.first_token_ns: int | None = None
        self.last_token_ns: int | None = None
        self.dripping = False
        self._done_marks: set[str] = set()

    def _write(self, parts: Sequence[tuple[SentEvent, bytes]], scheduled_ns: int) -> None:
        if not any(data for _, data in parts):
            return  # an empty chunk would end the chunked body
        if self.dripping:
            self._drip(parts)
            return
        self.wire.wait_until(scheduled_ns)
        t = self.wire.send(chunk(b"".join(data for _, data in parts)))
        for event, _ in parts:
            event.scheduled_ns, event.sent_ns = scheduled_ns, t
            self.record.events.append(event)

    def _drip(self, parts: Sequence[tuple[SentEvent, bytes]]) -> None:
        interval = round(self.sc.drip_interval_s * 1e9)
        for event, data in parts:
            framed = chunk(data)
            next_ns = time.perf_counter_ns()
            for i in range(len(framed)):
                next_ns += interval
                self.wire.wait_until(next_ns)
                t = self.wire.send(framed[i : i + 1])
            event.scheduled_ns, event.sent_ns = next_ns, t
            self.record.events.append(event)

    def _boundary(self) -> None:
        """Play the faults due once `tokens_sent` tokens are out."""
        sc, n = self.sc, self.tokens_sent
        for idx, inj in enumerate(sc.injections):
            key = f"inj{idx}"
            if inj.after_tokens <= n and key not in self._done_marks:
                self._done_marks.add(key)
                event = SentEvent("injected", inj.text, 0, 0, 0)
                self._write([(event, inj.text.encode())], time.perf_counter_ns())
        if self._due("long", sc.long_line_after_tokens):
            self._long_line()
        if self._due("drop", sc.disconnect_after_tokens):
            self.wire.drop(sc.disconnect_reset)
        if self._due("drip", sc.drip_after_tokens):
            self.dripping = True

    def _due(self, key: str, after_tokens: int | None) -> bool:
        if after_tokens is None or after_tokens > self.tokens_sent or key in self._done_marks:
            return False
        self._done_marks.add(key)
        return True

    def _long_line(self) -> None:
        body = b"data: " + b"x" * max(0, self.sc.long_line_bytes - 8) + b"\n\n"
        start = time.perf_counter_ns()
        for i in range(0, len(body), _LONG_LINE_PIECE):
            t = self.wire.send(chunk(body[i : i + _LONG_LINE_PIECE]))
        self.record.events.append(SentEvent("long-line", "", 0, start, t))

    def play(self) -> None:
        sc, shapes, record = self.sc, self.shapes, self.record
        t0 = record.zero_ns
        headers = (
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n" + shapes.extra_headers + b"Connection: close\r\n\r\n"
        )
        record.headers_ns = self.wire.send_head(headers, sc)
        role = shapes.role()
        if role is not None:
            self._write([(SentEvent("role", "", 0, 0, 0), role)], t0)
        texts = sc.event_texts()
        per_write = sc.events_per_write
        schedule = sc.schedule()
        for w, offset in enumerate(schedule.writes_ns):
            self._boundary()
            batch = texts[w * per_write : (w + 1) * per_write]
            parts = []
            for text in batch:
                n = min(sc.tokens_per_event, sc.tokens - self.tokens_sent)
                self.tokens_sent += n
                parts.append((SentEvent("content", text, n, 0, 0), shapes.content(text)))
            self._write(parts, t0 + offset)
            stamp = self.record.events[-1].sent_ns
            self.first_token_ns = self.first_token_ns or stamp
            self.last_token_ns = stamp
        self.wire.generated()
        self._boundary()
        self._write(self._tail(), t0 + schedule.tail_ns)
        if self.dripping:
            self._drip_bytes(LAST_CHUNK)
        else:
            self.wire.send(LAST_CHUNK)

    def _drip_bytes(self, data: bytes) -> None:
        self.wire.drip(data, round(self.sc.drip_interval_s * 1e9))

    def _tail(self) -> list[tuple[SentEvent, bytes]]:
        sc, shapes = self.sc, self.shapes
        first = self.first_token_ns or time.perf_counter_ns()
        last = self.last_token_ns or first
        prompt_n = prompt_words(self.record.request)
        prompt_ns = first - self.record.received_ns
        timings = timings_object(prompt_n, self.tokens_sent, prompt_ns, last - first)
        usage = usage_object(prompt_n, self.tokens_sent) if sc.usage else None
        # What the API sends after the last token (its shapes say; Shimmy: nothing).
        parts = [
            (SentEvent(kind, "", 0, 0, 0), data)
            for kind, data in shapes.tail(sc.finish_reason, usage, timings)
        ]
        done = shapes.done() if sc.send_done else None
        if done is not None:
            parts.append((SentEvent("done", "", 0, 0, 0), done))
        return parts


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "calibration-stream-server/1"
    disable_nagle_algorithm = True
    timeout = 10.0  # a client that stops reading cannot hold a thread forever
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.calibration.track(self.connection, live=True)

    def finish(self) -> None:
        self.server.calibration.track(self.connection, live=False)
        with contextlib.suppress(OSError):  # the scenario may have closed the socket
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a benchmark's thousands of requests are not worth a log line each

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        calibration = self.server.calibration
        if calibration.shimmy is not None and not path.startswith("/_calibration/"):
            self._shimmy_get(path)
        elif path == "/health":
            self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "calibration", "object": "model"}]})
        elif path == "/_calibration/scenario":
            self._json(200, calibration.scenario.to_dict())
        elif path == "/_calibration/last":
            try:
                self._json(200, calibration.last().to_dict())
            except LookupError as exc:
                self._json(404, {"error": {"code": 404, "message": str(exc)}})
            except TimeoutError as exc:
                self._json(409, {"error": {"code": 409, "message": str(exc)}})
        else:
            self._json(404, {"error": {"code": 404, "message": f"no route for GET {path}"}})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        received_ns = time.perf_counter_ns()
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            self._json(400, {"error": {"code": 400, "message": f"body is not JSON: {exc}"}})
            return
        if not isinstance(body, dict):
            self._json(400, {"error": {"code": 400, "message": "body is not a JSON object"}})
            return
        calibration = self.server.calibration
        if calibration.shimmy is not None and not path.startswith("/_calibration/"):
            if path not in _SHIMMY_API_BY_PATH:
                self._plain(404, "")  # axum's fallback: no /v1/completions, no /tokenize
            elif not isinstance(body.get("model"), str):
                self._plain(422, _MISSING_MODEL)
            else:
                self._generate(_SHIMMY_API_BY_PATH[path], path, body, received_ns)
        elif path in _API_BY_PATH:
            self._generate(_API_BY_PATH[path], path, body, received_ns)
        elif path == "/tokenize":
            content = body.get("content")
            words = content.split() if isinstance(content, str) else []
            self._json(200, {"tokens": [zlib.crc32(w.encode()) % 32000 for w in words]})
        elif path == "/_calibration/scenario":
            try:
                calibration.scenario = Scenario.from_dict(body)
            except ConfigError as exc:
                self._json(400, {"error": {"code": 400, "message": str(exc)}})
                return
            self._json(200, calibration.scenario.to_dict())
        else:
            self._json(404, {"error": {"code": 404, "message": f"no route for POST {path}"}})

    def _shimmy_get(self, path: str) -> None:
        if path == "/health":
            self._json(200, health_body(), _CORS)
        elif path == "/v1/models":
            model = {"id": "calibration-moe-8x", "object": "model", "created": 0}
            self._json(200, {"object": "list", "data": [{**model, "owned_by": "shimmy"}]}, _CORS)
        else:
            self._plain(404, "")

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in _CORS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, obj: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _generate(self, api: str, path: str, request: dict[str, Any], received_ns: int) -> None:
        calibration = self.server.calibration
        scenario = calibration.scenario
        shimmy = calibration.shimmy
        # Shimmy's GenOptions stream by default: only an explicit false is not streamed.
        stream = request.get("stream") is not False if shimmy else bool(request.get("stream"))
        if shimmy is not None:
            # Shimmy's loop stops at max_tokens (default 256) and still says "stop".
            budget = request.get("max_tokens")
            budget = budget if isinstance(budget, int) and budget >= 0 else 256
            scenario = dataclasses.replace(scenario, tokens=min(scenario.tokens, budget))
        record = StreamRecord(path, api, stream, request, received_ns)
        calibration.add_record(record)
        self.close_connection = True
        wire = _Wire(self, calibration)
        model = str(request.get("model", "calibration"))
        registry = SHAPES if shimmy is None else SHIMMY_1_7_SHAPES
        shapes: Shapes = registry[api](model, scenario.shimmy_shape)
        try:
            with contextlib.ExitStack() as held:
                if shimmy is not None and calibration.loader_log is not None:
                    slot = held.enter_context(backend_slot(calibration.backend))
                    if not slot.held:
                        # Another request holds llama-cpp-2's one backend: its load fails.
                        self._plain(502, "")
                        record.outcome = "http-error"
                        return
                    wire.generated = slot.release
                    record.load_started_ns, record.load_ended_ns = play_load(
                        shimmy, calibration.loader_log, wire.wait_until
                    )
                self._respond(wire, scenario, record, shapes)
        except _Dropped:
            record.outcome = "disconnected"
        except _Abort:
            record.outcome = "aborted"
        except OSError as exc:
            record.outcome = "client-gone"
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            record.finished.set()

    def _respond(
        self, wire: _Wire, scenario: Scenario, record: StreamRecord, shapes: Shapes
    ) -> None:
        if scenario.verbatim_response is not None:
            self._verbatim(wire, scenario.verbatim_response, record)
            record.outcome = "complete"
        elif scenario.http_status != 200:
            self._error_status(scenario, record)
            record.outcome = "http-error"
        elif record.stream:
            _Stream(wire, scenario, record, shapes).play()
            record.outcome = "complete"
        else:
            self._whole_body(wire, scenario, record, shapes)
            record.outcome = "complete"

    def _error_status(self, scenario: Scenario, record: StreamRecord) -> None:
        status = scenario.http_status
        kind = "rate_limit_error" if status == 429 else "server_error"
        body = {"error": {"code": status, "message": scenario.error_message, "type": kind}}
        extra = {"Retry-After": "1"} if status == 429 else None
        self._json(status, body, extra)
        t = time.perf_counter_ns()
        record.headers_ns = t
        record.events.append(SentEvent("error", scenario.error_message, 0, record.received_ns, t))

    def _verbatim(self, wire: _Wire, text: str, record: StreamRecord) -> None:
        t = wire.send(text.encode())
        record.headers_ns = t
        record.events.append(SentEvent("verbatim", text, 0, record.received_ns, t))

    def _whole_body(
        self, wire: _Wire, scenario: Scenario, record: StreamRecord, shapes: Shapes
    ) -> None:
        schedule = scenario.schedule()
        zero = record.zero_ns
        due = zero + schedule.tail_ns
        wire.wait_until(due)
        wire.generated()
        prompt_n = prompt_words(record.request)
        first = zero + (schedule.writes_ns[0] if schedule.writes_ns else 0)
        timings = timings_object(prompt_n, scenario.tokens, first - zero, due - first)
        usage = usage_object(prompt_n, scenario.tokens)
        data = shapes.body(Answer(scenario.text(), scenario.finish_reason, usage, timings))
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%sConnection: close\r\n\r\n" % (len(data), shapes.extra_headers)
        )
        if scenario.drip_headers or scenario.drip_after_tokens is not None:
            record.headers_ns = wire.send_head(head, scenario)
            head = b""
        if scenario.disconnect_after_tokens is not None:
            t = wire.send(head + data[: len(data) // 2])
            record.headers_ns = record.headers_ns or t
            wire.drop(scenario.disconnect_reset)
        if scenario.drip_after_tokens is not None:
            t = wire.drip(data, round(scenario.drip_interval_s * 1e9))
        else:
            t = wire.send(head + data)
            record.headers_ns = record.headers_ns or t
        record.events.append(SentEvent("body", scenario.text(), scenario.tokens, due, t))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a scenario file until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m calibration.server",
        description="Serve a scripted token stream with known send times.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--scenario", type=Path, help="scenario JSON file (default: defaults)")
    parser.add_argument(
        "--spin-us",
        type=float,
        default=500.0,
        help="busy-wait this long before each deadline (default 500; 0: sleep only)",
    )
    shimmy = parser.add_argument_group("Shimmy 1.7.0 mode")
    shimmy.add_argument(
        "--shimmy-1.7.0",
        dest="shimmy",
        action="store_true",
        help="behave as Shimmy 1.7.0: a model load per request, its wire quirks",
    )
    shimmy.add_argument(
        "--load-s", type=float, default=0.3, help="each request's model load (default 0.3)"
    )
    shimmy.add_argument(
        "--loader-log", type=Path, help="append the loader log to this file (default: stderr)"
    )
    shimmy.add_argument(
        "--cpu-moe", action="store_true", help="the loader log shows every expert tensor moved"
    )
    args = parser.parse_args(argv)
    try:
        scenario = Scenario.load(args.scenario) if args.scenario else Scenario()
        mode = (
            ShimmyMode(load_s=args.load_s, log=args.loader_log, cpu_moe=args.cpu_moe)
            if args.shimmy
            else None
        )
        server = CalibratedServer(
            scenario, host=args.host, port=args.port, spin_s=args.spin_us / 1e6, shimmy=mode
        )
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = StopSignal()
    signal.signal(signal.SIGINT, stop.handler)
    signal.signal(signal.SIGTERM, stop.handler)
    with server:
        if mode is not None:
            # Shimmy's own start line; it loads nothing before serving.
            print(f"🚀 Starting Shimmy server on {args.host}:{server.port}", flush=True)
        print(f"listening on {server.base_url}", flush=True)
        stop.wait()
    return 0


class StopSignal:
    """SIGINT/SIGTERM as a plain flag that the main thread polls.

    Not a threading.Event: Python runs a signal handler in the main thread between two
    bytecodes, and the main thread waiting on an Event holds the Event's lock for a few
    of them; a handler that sets it then waits for that lock forever. A server so
    stuck outlived its killed collector (its parent-death SIGTERM came in that window)
    in a loaded test run."""

    def __init__(self, poll_s: float = 0.05) -> None:
        self.requested = False
        self._poll_s = poll_s

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # one store: nothing to wait for, whatever was interrupted

    def wait(self) -> None:
        """Return once a signal came (time.sleep wakes for the handler)."""
        while not self.requested:
            time.sleep(self._poll_s)


if __name__ == "__main__":
    raise SystemExit(main())
