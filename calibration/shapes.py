"""The API shapes on the wire: llama-server's SSE events (OpenAI chat and
completions, with `timings` and `usage`), Shimmy's bare-text and JSON events
(and, in Shimmy 1.7.0 mode, its exact axum framing and chat chunks), and
HTTP/1.1 chunked framing."""

from __future__ import annotations

import json
import time
from typing import Any

from calibration.scenario import ShimmyShape
from calibration.shimmy import ChatChunks, axum_event
from collector.apis import ApiName


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Shapes:
    """The JSON shapes of one API's events and bodies (llama-server's, Shimmy's)."""

    def __init__(
        self, api: ApiName, model: str, shimmy_shape: ShimmyShape, shimmy_1_7: bool = False
    ) -> None:
        self.api = api
        self.model = model
        self.shimmy_shape = shimmy_shape
        self.created = int(time.time())
        # Shimmy 1.7.0's own wire (axum framing, its chat chunks): see calibration.shimmy.
        self.chat_1_7 = ChatChunks(model) if shimmy_1_7 and api == "openai-chat" else None
        self.shimmy_1_7 = shimmy_1_7

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chat = self.api == "openai-chat"
        return {
            "id": "chatcmpl-calibration" if chat else "cmpl-calibration",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def role(self) -> bytes:
        if self.chat_1_7 is not None:
            return self.chat_1_7.role()
        delta = {"role": "assistant", "content": None}
        return sse(self._envelope([{"index": 0, "delta": delta, "finish_reason": None}]))

    def content(self, text: str) -> bytes:
        if self.chat_1_7 is not None:
            return self.chat_1_7.content(text)
        if self.shimmy_1_7:
            return axum_event(text)
        if self.api == "shimmy":
            if self.shimmy_shape == "json":
                return sse({"choices": [{"text": text, "index": 0}]})
            # axum's Event::data: one `data:` line per line of the token.
            return b"".join(b"data: " + ln.encode() + b"\n" for ln in text.split("\n")) + b"\n"
        if self.api == "openai-chat":
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        return sse(self._envelope([choice]))

    def done(self) -> bytes:
        return axum_event("[DONE]") if self.shimmy_1_7 else b"data: [DONE]\n\n"

    def final(self, finish_reason: str, timings: dict[str, Any]) -> bytes:
        if self.api == "openai-chat":
            choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        return sse({**self._envelope([choice]), "timings": timings})

    def usage(self, usage: dict[str, int], timings: dict[str, Any]) -> bytes:
        return sse({**self._envelope([]), "usage": usage, "timings": timings})

    def body(
        self,
        text: str,
        finish_reason: str | None,
        usage: dict[str, int],
        timings: dict[str, Any],
    ) -> bytes:
        if self.chat_1_7 is not None:
            return self.chat_1_7.body(text)
        if self.api == "shimmy":
            if self.shimmy_1_7:  # serde_json: compact, UTF-8 unescaped
                return json.dumps(
                    {"response": text}, separators=(",", ":"), ensure_ascii=False
                ).encode()
            return json.dumps({"response": text}).encode()
        if self.api == "openai-chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        out = {**self._envelope([choice]), "object": obj, "usage": usage, "timings": timings}
        return json.dumps(out).encode()


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
