"""A minimal HTTP/1.1 client for one streamed request: the collector's hot path.

Why not httpx here: at 1,000 events/s its layers (httpcore, h11) cost the
collector ~12-15 % of a core, and every layer between `recv` and the
timestamp blurs the arrival time being measured. This module does one
`recv` per network read, stamps nothing itself (the caller stamps each
returned read), and undoes only the framing an inference server uses:
`Content-Length`, `Transfer-Encoding: chunked`, or a body that ends when the
connection closes. Plain `http://` only: inference servers under test listen
on loopback or a private network. Everything else (health checks,
/tokenize) still uses httpx.
"""

from __future__ import annotations

import math
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from collector.auth import url_credentials

RECV_BYTES = 65536
MAX_HEADER_BYTES = 64 * 1024


class HTTPFailure(Exception):
    """The exchange failed; `kind` says how, for the request's status."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # connect | timeout | deadline | disconnected | protocol


# Where the kernel can time a blocking read out itself (SO_RCVTIMEO, Linux), a read
# is one syscall: Python's own socket timeout polls before every recv, two syscalls
# and two wake-ups per streamed token, most of the collector's CPU at 1,000 events/s.
_KERNEL_TIMEOUT = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVTIMEO")


def _set_read_timeout(sock: socket.socket, timeout: float) -> None:
    """Make `sock`'s reads give up after `timeout` seconds (BlockingIOError from the
    kernel's timeout, TimeoutError from Python's)."""
    if not _KERNEL_TIMEOUT:
        sock.settimeout(timeout)
        return
    sock.settimeout(None)  # blocking: recv goes straight to the kernel
    seconds = int(timeout)
    # At least a microsecond: a zero timeval means "never time out".
    micros = max(round((timeout - seconds) * 1e6), 0 if seconds else 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    _sock: socket.socket
    _buffer: bytearray
    _framing: str  # length | chunked | close
    _remaining: int = 0  # body bytes still to come (length framing)
    _chunk_left: int = 0  # data bytes left in the current chunk (chunked framing)
    _state: str = "size"  # chunked: size | data | data_crlf | trailers | done
    _timeout: float | None = None  # the socket's current timeout (set only on change)
    done: bool = field(default=False)

    def reads(self, stall_s: float, deadline: float | None = None) -> Iterator[bytes]:
        """Body bytes as they arrive: one item per network read that carried body
        data. Ends at the end of the body; raises HTTPFailure if it breaks off,
        if no byte comes for `stall_s` (kind `timeout`), or at `deadline`, a
        `time.monotonic()` value (kind `deadline`)."""
        pending = bytes(self._buffer)
        self._buffer.clear()
        if pending:
            data = self._decode(pending)
            if data:
                yield data
        # The hot loop of a stream (one pass per token): names bound once, and the
        # common read, exactly one whole chunk, taken apart inline.
        recv, decode, chunked = self._recv, self._decode, self._framing == "chunked"
        while not self.done:
            raw = recv(stall_s, deadline)
            if not raw:
                if self._framing == "close":
                    self.done = True
                    return
                raise HTTPFailure("disconnected", "connection closed before the response ended")
            if chunked and self._state == "size" and not self._buffer:
                end = raw.find(b"\r\n")
                if 0 < end <= 8 and raw.endswith(b"\r\n"):
                    try:
                        size = int(raw[:end], 16)
                    except ValueError:
                        size = -1
                    if size > 0 and len(raw) == end + 4 + size:
                        yield raw[end + 2 : end + 2 + size]
                        continue
            data = decode(raw)
            if data:
                yield data

    def read_all(self, limit: int, stall_s: float) -> bytes:
        """The body (at most `limit` bytes; the rest is left unread)."""
        out = bytearray()
        for part in self.reads(stall_s):
            out += part
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    def close(self) -> None:
        self._sock.close()

    def _recv(self, stall_s: float, deadline: float | None) -> bytes:
        timeout, kind = stall_s, "timeout"
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HTTPFailure("deadline", "request deadline passed")
            if left < stall_s:
                # Rounded up to 10 ms so the timeout is not reset on every read.
                timeout, kind = math.ceil(left * 100) / 100, "deadline"
        try:
            if timeout != self._timeout:
                _set_read_timeout(self._sock, timeout)
                self._timeout = timeout
            return self._sock.recv(RECV_BYTES)
        except (TimeoutError, BlockingIOError) as exc:
            raise HTTPFailure(kind, "no data") from exc
        except OSError as exc:
            raise HTTPFailure("disconnected", f"{type(exc).__name__}: {exc}") from exc

    def _decode(self, raw: bytes) -> bytes:
        if self._framing == "close":
            return raw
        if self._framing == "length":
            take = raw[: self._remaining]
            self._remaining -= len(take)
            if self._remaining <= 0:
                self.done = True
            return take
        return self._dechunk(raw)

    def _dechunk(self, raw: bytes) -> bytes:
        buf = self._buffer
        buf += raw
        out = bytearray()
        pos = 0
        while not self.done:
            if self._state == "size":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > 1024:
                        raise HTTPFailure("protocol", "malformed chunked encoding (size line)")
                    break
                line = bytes(buf[pos:end]).split(b";", 1)[0].strip()
                try:
                    size = int(line, 16)
                except ValueError as exc:
                    raise HTTPFailure("protocol", "malformed chunked encoding") from exc
                pos = end + 2
                self._chunk_left = size
                self._state = "data" if size else "trailers"
            elif self._state == "data":
                take = min(self._chunk_left, len(buf) - pos)
                out += buf[pos : pos + take]
                pos += take
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._state = "data_crlf"
            elif self._state == "data_crlf":
                if len(buf) - pos < 2:
                    break
                pos += 2
                self._state = "size"
            else:  # trailers: lines until an empty one
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                if end == pos:
                    self.done = True
                pos = end + 2
        del buf[:pos]
        return bytes(out)


@dataclass(frozen=True)
class PostRequest:
    """One POST as the client's HTTP seam takes it: `post` here, or any other
    transport behind the same seam (the benchmarks' httpx arm).

    `read_timeout_s` is the longest wait for any one read. `deadline`, a
    `time.monotonic()` value, bounds the connect, the send and the whole head
    (kind `deadline`): a server that drips its headers a byte at a time never
    trips the read timeout, and the request's deadline must still hold."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    connect_timeout_s: float
    read_timeout_s: float
    deadline: float | None = None


def post(request: PostRequest) -> Response:
    """Send a POST and read the status line and headers; the body is read by
    the caller through `Response.reads()` (then `close()`)."""
    # A URL's credentials go as Basic auth, never into the Host header (collector.auth).
    url, headers = url_credentials(request.url, request.headers)
    body, deadline = request.body, request.deadline
    connect_timeout_s, read_timeout_s = request.connect_timeout_s, request.read_timeout_s
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise HTTPFailure("connect", f"only plain http:// URLs are supported, not {url}")
    host, port = parts.hostname, parts.port or 80
    timeout, kind = _wait(connect_timeout_s, deadline)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        if kind == "deadline":
            raise HTTPFailure("deadline", "no connection by the request deadline") from exc
        raise HTTPFailure("connect", f"no connection within {connect_timeout_s:g} s") from exc
    except OSError as exc:
        raise HTTPFailure("connect", f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        timeout, kind = _wait(read_timeout_s, deadline)
        sock.settimeout(timeout)
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        except TimeoutError as exc:
            raise HTTPFailure(kind, "the server did not take the request") from exc
        return _read_head(sock, read_timeout_s, deadline)
    except HTTPFailure:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise HTTPFailure("disconnected", f"{type(exc).__name__}: {exc}") from exc


def _wait(timeout_s: float, deadline: float | None) -> tuple[float, str]:
    """The socket timeout for the next step, and the failure kind if it runs out:
    the step's own timeout, or the time left to the deadline when that is shorter."""
    if deadline is None:
        return timeout_s, "timeout"
    left = deadline - time.monotonic()
    if left <= 0:
        raise HTTPFailure("deadline", "request deadline passed")
    return (timeout_s, "timeout") if timeout_s <= left else (left, "deadline")


def _read_head(sock: socket.socket, read_timeout_s: float, deadline: float | None) -> Response:
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEADER_BYTES:
            raise HTTPFailure("protocol", "response headers larger than 64 KiB")
        # Re-armed on every read: each may wait the read timeout, but all of them
        # together only until the deadline.
        timeout, kind = _wait(read_timeout_s, deadline)
        sock.settimeout(timeout)
        try:
            raw = sock.recv(RECV_BYTES)
        except TimeoutError as exc:
            raise HTTPFailure(kind, "no response headers") from exc
        if not raw:
            raise HTTPFailure("disconnected", "connection closed before the response headers")
        buf += raw
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise HTTPFailure("protocol", f"not an HTTP response: {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError as exc:
        raise HTTPFailure("protocol", f"bad status line {lines[0][:80]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest = bytearray(buf[end + 4 :])
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, headers, sock, rest, "chunked")
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise HTTPFailure("protocol", "bad Content-Length") from exc
        response = Response(status, headers, sock, rest, "length", _remaining=length)
        response.done = length == 0
        return response
    return Response(status, headers, sock, rest, "close")
