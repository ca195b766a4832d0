"""What the calibrated server plays and what it records.

A `Scenario` says what one generation request gets back: how long before the
first token, how many tokens, the gap between writes (with seeded jitter), how
tokens are grouped into events and events into writes, and which faults to
play (stalls, an HTTP error status, malformed lines, a missing `[DONE]`, an
abrupt disconnect, a 10 MB line, a byte-at-a-time drip of the body or of the
headers, an answer that no inference server gives: a redirect, a proxy's HTML
page); `Schedule` is its timeline. A `StreamRecord` is everything the server
did for one request, each `SentEvent` with its scheduled and actual send time.
"""

from __future__ import annotations

import json
import math
import random
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from common.errors import ConfigError
from common.json_fields import json_fields

ShimmyShape = Literal["text", "json"]
Outcome = Literal["running", "complete", "http-error", "disconnected", "client-gone", "aborted"]

# Ready-made malformed lines for `Injection`. For the Shimmy API only
# NOT_AN_EVENT is malformed: its bare-text stream takes any other line as text.
NOT_JSON = "data: this line is not JSON\n\n"
BAD_JSON = 'data: {"choices": [{"delta": {"content": "cut off\n\n'
NOT_AN_EVENT = 'data: {"choices": ["not an object"]}\n\n'

# Ready-made answers for `verbatim_response`: what a wrong port or a proxy in
# front of the server sends back instead of a generation.
HTML_PAGE = (
    "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html; charset=utf-8\r\n"
    "Connection: close\r\n\r\n"
    "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n"
    "<body><h1>Welcome to nginx!</h1></body></html>\n"
)


def redirect(location: str, status: int = 307) -> str:
    """A redirect answer for `verbatim_response`: the endpoint moved to `location`."""
    body = f"Redirecting to {location}\n"
    return (
        f"HTTP/1.1 {status} Redirect\r\nLocation: {location}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n{body}"
    )


DEFAULT_WORDS: tuple[str, ...] = (
    "The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while",
    "experts", "wait", "in", "CPU", "memory", "for", "their", "turn", "to", "compute",
)  # fmt: skip


@dataclass(frozen=True)
class Stall:
    """Once `after_tokens` tokens are sent, pause `seconds` more before the next."""

    after_tokens: int
    seconds: float


@dataclass(frozen=True)
class Injection:
    """Raw event-stream text written verbatim once `after_tokens` tokens are sent."""

    after_tokens: int
    text: str


@dataclass(frozen=True)
class Schedule:
    """A scenario's timeline, in ns after the request arrived."""

    writes_ns: list[int]  # each token write
    tail_ns: int  # finish / usage / [DONE]; for a non-streamed answer, the body


@dataclass(frozen=True)
class Scenario:
    """What every generation request gets back. Times are seconds.

    Token i is word i of `words` (cycled), with a leading space after the
    first. `tokens_per_event` tokens make one event, `events_per_write` events
    one network write; writes are `gap_s` apart (uniform ± `jitter_s`, seeded by
    `seed`), the first `first_token_delay_s` after the request arrived. Faults
    keyed by a token count (`after_tokens`, `*_after_tokens`) act at the first
    write boundary at which at least that many tokens have been sent.
    """

    tokens: int = 16
    first_token_delay_s: float = 0.01
    gap_s: float = 0.002
    jitter_s: float = 0.0
    seed: int = 0
    tokens_per_event: int = 1
    events_per_write: int = 1
    words: tuple[str, ...] = DEFAULT_WORDS
    # Each word is one token's exact text (no space added): for tokens that hold
    # newlines, start with a space or not, or are a single UTF-8 character.
    words_are_tokens: bool = False
    # OpenAI APIs only: the last event's finish reason (None: no such event),
    # and a usage event with llama.cpp's `timings` after it.
    finish_reason: str | None = "length"
    usage: bool = True
    send_done: bool = True
    shimmy_shape: ShimmyShape = "text"
    stalls: tuple[Stall, ...] = ()
    injections: tuple[Injection, ...] = ()
    # Close the socket mid-stream: FIN by default, RST (SO_LINGER 0) if reset.
    disconnect_after_tokens: int | None = None
    disconnect_reset: bool = False
    # From this point on, send the rest of the response one byte per interval.
    drip_after_tokens: int | None = None
    drip_interval_s: float = 0.05
    # Send the status line and headers one byte per `drip_interval_s` too.
    drip_headers: bool = False
    # One `data:` line of this many bytes.
    long_line_after_tokens: int | None = None
    long_line_bytes: int = 10 * 1024 * 1024
    # Anything but 200: answer at once with this status and a JSON error body.
    http_status: int = 200
    error_message: str = "calibration server: scripted failure"
    # Not an inference server at all: answer every generation request with this
    # text as it is (status line, headers, body), then close (see HTML_PAGE, redirect).
    verbatim_response: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "tokens": self.tokens >= 0,
            "first_token_delay_s": self.first_token_delay_s >= 0,
            "gap_s": self.gap_s >= 0,
            "jitter_s": self.jitter_s >= 0,
            "tokens_per_event": self.tokens_per_event >= 1,
            "events_per_write": self.events_per_write >= 1,
            "words": len(self.words) > 0,
            "shimmy_shape": self.shimmy_shape in ("text", "json"),
            "drip_interval_s": self.drip_interval_s >= 0,
            "long_line_bytes": self.long_line_bytes >= 0,
            "http_status": 100 <= self.http_status <= 599,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"scenario: invalid {', '.join(bad)}")

    def token_texts(self) -> list[str]:
        """The text of every token, in order."""
        n = len(self.words)
        if self.words_are_tokens:
            return [self.words[i % n] for i in range(self.tokens)]
        return [(" " if i else "") + self.words[i % n] for i in range(self.tokens)]

    def text(self) -> str:
        """The whole generated text."""
        return "".join(self.token_texts())

    def event_texts(self) -> list[str]:
        """The text of every content event, in order."""
        toks, k = self.token_texts(), self.tokens_per_event
        return ["".join(toks[i : i + k]) for i in range(0, len(toks), k)]

    def schedule(self) -> Schedule:
        """When each write is due, in ns after the request arrived."""
        rng = random.Random(self.seed)
        per_write = self.tokens_per_event * self.events_per_write
        pending = list(self.stalls)

        def pause(tokens_sent: float) -> float:
            nonlocal pending
            due = [s for s in pending if s.after_tokens <= tokens_sent]
            pending = [s for s in pending if s.after_tokens > tokens_sent]
            return sum(s.seconds for s in due)

        writes: list[int] = []
        t = self.first_token_delay_s
        for w, tokens_sent in enumerate(range(0, self.tokens, per_write)):
            if w:
                t += max(0.0, self.gap_s + rng.uniform(-self.jitter_s, self.jitter_s))
            t += pause(tokens_sent)
            writes.append(round(t * 1e9))
        # The tail (finish, usage, [DONE]) follows the last token at once,
        # after any stall still pending.
        t += pause(math.inf)
        return Schedule(writes, round(t * 1e9))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that `from_dict` reads back."""
        return json_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Build from a dict (a scenario file's JSON); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"scenario: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        kwargs = dict(data)
        try:
            if "words" in kwargs:
                kwargs["words"] = tuple(str(w) for w in kwargs["words"])
            if "stalls" in kwargs:
                kwargs["stalls"] = tuple(Stall(**s) for s in kwargs["stalls"])
            if "injections" in kwargs:
                kwargs["injections"] = tuple(Injection(**i) for i in kwargs["injections"])
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"scenario: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> Scenario:
        """Read a scenario JSON file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"scenario file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"scenario file {path}: expected a JSON object")
        return cls.from_dict(data)


@dataclass
class SentEvent:
    """One SSE event (or non-streamed body) as the server sent it.

    kind: role | content | final | usage | done | injected | long-line | body |
    error | verbatim. Events coalesced into one write share its `sent_ns`.
    """

    kind: str
    text: str
    tokens: int
    scheduled_ns: int  # the timeline's deadline for the write (perf_counter_ns)
    sent_ns: int  # perf_counter_ns right after the write returned


@dataclass
class StreamRecord:
    """Everything the server did for one generation request."""

    path: str
    api: str  # its declared name (common.server_apis)
    stream: bool
    request: dict[str, Any]
    received_ns: int  # request body read
    headers_ns: int | None = None
    # Shimmy mode: the per-request model load (perf_counter_ns); the timeline starts at its end.
    load_started_ns: int | None = None
    load_ended_ns: int | None = None
    events: list[SentEvent] = field(default_factory=list)
    outcome: Outcome = "running"
    error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def zero_ns(self) -> int:
        """The scenario timeline's zero: the request's arrival, or the end of its model load."""
        return self.load_ended_ns if self.load_ended_ns is not None else self.received_ns

    @property
    def sent_ns(self) -> list[int]:
        """Send stamp of every event, in order: pairs with the client's chunk stamps."""
        return [e.sent_ns for e in self.events]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that `from_dict` reads back (all but the `finished` flag)."""
        return json_fields(self, skip={"finished"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamRecord:
        """Rebuild a record fetched from /_calibration/last: a finished one."""
        record = cls(**{**data, "events": [SentEvent(**e) for e in data["events"]]})
        record.finished.set()
        return record
