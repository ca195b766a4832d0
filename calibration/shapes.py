"""The API shapes on the wire: llama-server's SSE events (OpenAI chat and
completions, with `timings` and `usage`), Shimmy's bare-text and JSON events
(and, in Shimmy 1.7.0 mode, its exact axum framing and chat chunks), and
HTTP/1.1 chunked framing.

One `Shapes` class per API the server mirrors, registered under the API's
declared name (`common.server_apis`): the server serves each one at its
declared path. Shimmy 1.7.0 mode has its own registry: the APIs Shimmy serves,
as it writes them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from calibration.scenario import ShimmyShape
from calibration.shimmy import CORS_HEADERS, ChatChunks, axum_event


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# One event of a stream's end: its kind (a `SentEvent` kind) and its bytes.
TailEvent = tuple[str, bytes]


@dataclass(frozen=True)
class Answer:
    """What a non-streamed body carries: the scenario's text and finish reason, and
    the server's `usage` and `timings` objects."""

    text: str
    finish_reason: str | None
    usage: dict[str, int]
    timings: dict[str, Any]


class Shapes:
    """The events and bodies of one API, as one server writes them."""

    # Response headers beyond the usual ones (Shimmy's CORS middleware adds its own).
    extra_headers: ClassVar[bytes] = b""

    def __init__(self, model: str, shimmy_shape: ShimmyShape) -> None:
        self.model = model
        self.shimmy_shape = shimmy_shape
        self.created = int(time.time())

    def role(self) -> bytes | None:
        """The event before the first token, if the API sends one."""
        return None

    def content(self, text: str) -> bytes:
        raise NotImplementedError

    def tail(
        self, finish_reason: str | None, usage: dict[str, int] | None, timings: dict[str, Any]
    ) -> list[TailEvent]:
        """The events after the last token, before `done` (`finish_reason` and `usage`:
        the scenario's; None: not sent)."""
        return []

    def done(self) -> bytes | None:
        """The end-of-stream marker, if the API has one."""
        return b"data: [DONE]\n\n"

    def body(self, answer: Answer) -> bytes:
        """The whole non-streamed answer."""
        raise NotImplementedError


class _OpenAIShapes(Shapes):
    """llama-server's OpenAI events: a final chunk with its finish reason and
    `timings`, then a `usage` chunk."""

    _id: ClassVar[str]
    _chunk_object: ClassVar[str]
    _body_object: ClassVar[str]

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": self._chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def content(self, text: str) -> bytes:
        return sse(self._envelope([self._choice(text, None)]))

    def tail(
        self, finish_reason: str | None, usage: dict[str, int] | None, timings: dict[str, Any]
    ) -> list[TailEvent]:
        events: list[TailEvent] = []
        if finish_reason is not None:
            final = {**self._envelope([self._choice(None, finish_reason)]), "timings": timings}
            events.append(("final", sse(final)))
        if usage:
            events.append(
                ("usage", sse({**self._envelope([]), "usage": usage, "timings": timings}))
            )
        return events


class ChatShapes(_OpenAIShapes):
    _id = "chatcmpl-calibration"
    _chunk_object = "chat.completion.chunk"
    _body_object = "chat.completion"

    def role(self) -> bytes:
        delta = {"role": "assistant", "content": None}
        return sse(self._envelope([{"index": 0, "delta": delta, "finish_reason": None}]))

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        delta = {} if text is None else {"content": text}
        return {"index": 0, "delta": delta, "finish_reason": finish_reason}

    def body(self, answer: Answer) -> bytes:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": answer.finish_reason,
        }
        out = {**self._envelope([choice]), "object": self._body_object}
        return json.dumps({**out, "usage": answer.usage, "timings": answer.timings}).encode()


class CompletionsShapes(_OpenAIShapes):
    _id = "cmpl-calibration"
    _chunk_object = "text_completion"
    _body_object = "text_completion"

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def body(self, answer: Answer) -> bytes:
        choice = self._choice(answer.text, answer.finish_reason)
        out = {**self._envelope([choice]), "object": self._body_object}
        return json.dumps({**out, "usage": answer.usage, "timings": answer.timings}).encode()


class ShimmyShapes(Shapes):
    """Shimmy's native API: bare token text (or JSON events), no finish reason, no counts."""

    def content(self, text: str) -> bytes:
        if self.shimmy_shape == "json":
            return sse({"choices": [{"text": text, "index": 0}]})
        # axum's Event::data: one `data:` line per line of the token.
        return b"".join(b"data: " + ln.encode() + b"\n" for ln in text.split("\n")) + b"\n"

    def body(self, answer: Answer) -> bytes:
        return json.dumps({"response": answer.text}).encode()


class Shimmy17Shapes(Shapes):
    """Shimmy 1.7.0's native API: axum's exact framing, serde_json's compact body."""

    extra_headers = CORS_HEADERS

    def content(self, text: str) -> bytes:
        return axum_event(text)

    def done(self) -> bytes:
        return axum_event("[DONE]")

    def body(self, answer: Answer) -> bytes:
        # serde_json: compact, UTF-8 unescaped
        body = {"response": answer.text}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Shimmy17ChatShapes(Shimmy17Shapes):
    """Shimmy 1.7.0's chat chunks (calibration.shimmy.ChatChunks)."""

    def __init__(self, model: str, shimmy_shape: ShimmyShape) -> None:
        super().__init__(model, shimmy_shape)
        self.chat = ChatChunks(model)

    def role(self) -> bytes:
        return self.chat.role()

    def content(self, text: str) -> bytes:
        return self.chat.content(text)

    def tail(
        self, finish_reason: str | None, usage: dict[str, int] | None, timings: dict[str, Any]
    ) -> list[TailEvent]:
        # Shimmy 1.7.0 says "stop" however the generation ended, and sends no usage.
        return [("final", self.chat.final())]

    def body(self, answer: Answer) -> bytes:
        return self.chat.body(answer.text)


class LlamaCompletionShapes(Shapes):
    """llama-server's native /completion: `content` events, then one `"stop": true`
    event with `stop_type` and `timings`; no usage, no [DONE]."""

    def _stop(self, finish_reason: str | None) -> dict[str, Any]:
        stop_type = {"length": "limit", "stop": "eos"}.get(finish_reason or "", "none")
        return {"stop": True, "stop_type": stop_type}

    def content(self, text: str) -> bytes:
        return sse({"index": 0, "content": text, "stop": False})

    def tail(
        self, finish_reason: str | None, usage: dict[str, int] | None, timings: dict[str, Any]
    ) -> list[TailEvent]:
        if finish_reason is None:
            return []
        final = {"index": 0, "content": "", **self._stop(finish_reason), "timings": timings}
        return [("final", sse(final))]

    def done(self) -> None:
        return None

    def body(self, answer: Answer) -> bytes:
        stop = self._stop(answer.finish_reason)
        out = {"index": 0, "content": answer.text, **stop, "timings": answer.timings}
        return json.dumps({**out, "tokens_predicted": answer.usage["completion_tokens"]}).encode()


# The APIs the server mirrors, by declared name (common.server_apis).
SHAPES: dict[str, type[Shapes]] = {
    "openai-chat": ChatShapes,
    "openai-completions": CompletionsShapes,
    "shimmy": ShimmyShapes,
    "llama-completion": LlamaCompletionShapes,
}
# Shimmy 1.7.0 mode: the APIs Shimmy serves (no /v1/completions), as it writes them.
SHIMMY_1_7_SHAPES: dict[str, type[Shapes]] = {
    "shimmy": Shimmy17Shapes,
    "openai-chat": Shimmy17ChatShapes,
}


def prompt_words(request: dict[str, Any]) -> int:
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return len(prompt.split())
    messages = request.get("messages")
    if isinstance(messages, list):
        return sum(
            len(m["content"].split())
            for m in messages
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    return 0


def timings_object(
    prompt_n: int, predicted_n: int, prompt_ns: int, predicted_ns: int
) -> dict[str, Any]:
    """llama-server's `timings` object, from the server's own send stamps."""
    prompt_ms = prompt_ns / 1e6
    predicted_ms = predicted_ns / 1e6
    return {
        "cache_n": 0,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n / prompt_ms * 1e3 if prompt_ms else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": predicted_n / predicted_ms * 1e3 if predicted_ms else 0.0,
    }


def usage_object(prompt_n: int, completion_n: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_n,
        "completion_tokens": completion_n,
        "total_tokens": prompt_n + completion_n,
    }
