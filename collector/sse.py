"""An incremental Server-Sent Events parser (the WHATWG event-stream format).

Bytes go in as they arrive from the socket; complete events come out. The
caller timestamps each network read, so every event carries the arrival time
of the read that completed it. Only the `data` field matters to inference
servers: it is kept, with the `event` name; `id` and `retry` lines are read
and dropped (no server we measure reconnects), as are comments (`:` lines).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import StreamError

# A single event larger than this is a broken or hostile stream, not a token.
MAX_EVENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEParser:
    """Feed raw bytes with `feed`; it returns the events completed by them."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._data_bytes = 0
        self._event = ""
        self._max = max_event_bytes
        self._first = True
        self._scan = 0  # bytes of the buffer before this offset hold no line end

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk`; return every event it completes, in order."""
        # Fast path, the common case of a token-by-token stream: the read is one
        # whole `data:` line and its blank line, and nothing is pending. The result
        # is what the general path gives; it only skips the line scanning.
        if (
            not self._buffer
            and not self._data
            and not self._event
            and not self._first
            and chunk.endswith(b"\n\n")
            and chunk.startswith(b"data:")
            and chunk.find(b"\n") == len(chunk) - 2
            and b"\r" not in chunk
            and len(chunk) <= self._max
        ):
            value = chunk[5:-2].decode("utf-8", errors="replace")
            return [SSEEvent(value[1:] if value.startswith(" ") else value)]
        buf = self._buffer
        buf += chunk
        events: list[SSEEvent] = []
        start = 0
        # Lines end in LF, CRLF or a lone CR. The next LF and CR are found once
        # each and re-found only when passed, and bytes already searched in an
        # earlier feed are not searched again: a read of many events, or a long
        # line arriving in pieces, costs linear time, not quadratic.
        lf = buf.find(b"\n", self._scan)
        cr = buf.find(b"\r", self._scan)
        while lf >= 0 or cr >= 0:
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr == len(buf) - 1:
                    break  # a CR at the end may be the first half of CRLF
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                end, nxt = lf, lf + 1
            self._line(bytes(buf[start:end]), events)
            start = nxt
            if 0 <= lf < start:
                lf = buf.find(b"\n", start)
            if 0 <= cr < start:
                cr = buf.find(b"\r", start)
        scanned = cr if cr >= 0 else len(buf)
        del buf[:start]
        self._scan = scanned - start
        if len(buf) > self._max:
            raise StreamError(
                f"SSE line longer than {self._max // (1024 * 1024)} MiB without a line end; "
                f"the server is not sending a valid event stream"
            )
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: flush a final line that had no terminator.

        Per the SSE spec an event without its closing blank line is discarded,
        but servers that close right after `data: [DONE]` are common, so a
        complete `data:` line is still delivered.
        """
        events: list[SSEEvent] = []
        if self._buffer:
            raw = bytes(self._buffer)
            # A trailing CR was held back as a possible CRLF half; at the end it is a line end.
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, events)
            self._buffer.clear()
            self._scan = 0
        if self._data:
            self._dispatch(events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if self._first:
            self._first = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        if not raw:
            self._dispatch(events)
            return
        if raw.startswith(b":"):
            return
        if raw.startswith(b"data"):
            # Counted in bytes, before decoding, so a huge line is refused unread.
            self._data_bytes += len(raw)
            if self._data_bytes > self._max:
                raise StreamError(
                    f"SSE event larger than {self._max // (1024 * 1024)} MiB; "
                    f"the server is not sending a valid event stream"
                )
        line = raw.decode("utf-8", errors="replace")
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(SSEEvent("\n".join(self._data), self._event or "message"))
        self._data = []
        self._data_bytes = 0
        self._event = ""
