"""The three HTTP APIs we drive: how to ask, and how to read each answer.

* `openai-chat`        POST /v1/chat/completions  (llama-server, Shimmy)
* `openai-completions` POST /v1/completions       (llama-server)
* `shimmy`             POST /api/generate         (Shimmy's native API)

Shimmy's native stream has had two shapes: JSON events
(`data: {"choices":[{"text":"Hello","index":0}]}`) and, in its current source,
the bare token text (`data: Hello`); both end with `data: [DONE]`, and a
generation error arrives as `data: [ERROR] ...`. We accept both shapes; a bare
token that merely starts with `{` (code, JSON) stays token text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from common.errors import StreamError

ApiName = Literal["openai-chat", "openai-completions", "shimmy"]
API_NAMES: tuple[ApiName, ...] = ("openai-chat", "openai-completions", "shimmy")

# `reasoning`: a thinking delta (`reasoning_content`, e.g. GPT-OSS under
# llama-server). Stored with its text, but it is not the answer: output_text,
# TTFT and the decode metrics use `content` events only.
ChunkKind = Literal["content", "reasoning", "role", "usage", "done", "other"]

PATHS: dict[ApiName, str] = {
    "openai-chat": "/v1/chat/completions",
    "openai-completions": "/v1/completions",
    "shimmy": "/api/generate",
}


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    max_tokens: int
    temperature: float
    seed: int | None
    stream: bool
    model: str
    cache_prompt: bool | None = None  # llama.cpp extension; None: not sent


@dataclass
class Decoded:
    """What one event (or one non-streamed body) says."""

    kind: ChunkKind
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def request_body(api: ApiName, p: GenerationParams) -> dict[str, Any]:
    """The JSON body for one generation request."""
    if api == "shimmy":
        return {
            "model": p.model,
            "prompt": p.prompt,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "stream": p.stream,
        }
    body: dict[str, Any] = {
        "model": p.model,
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "stream": p.stream,
    }
    if p.seed is not None:
        body["seed"] = p.seed
    if p.stream:
        body["stream_options"] = {"include_usage": True}
    if p.cache_prompt is not None:
        body["cache_prompt"] = p.cache_prompt
    if api == "openai-chat":
        body["messages"] = [{"role": "user", "content": p.prompt}]
    else:
        body["prompt"] = p.prompt
    return body


def decode_event(api: ApiName, data: str) -> Decoded:
    """Decode one SSE `data` payload. Raises StreamError for JSON that is not an event."""
    stripped = data.strip()
    if api == "shimmy":
        # Bare token text: only the exact marker ends it; a token " [DONE] " is text.
        return Decoded("done") if data == "[DONE]" else _decode_shimmy(data, stripped)
    if stripped == "[DONE]":
        return Decoded("done")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StreamError(f"event is not valid JSON ({exc.msg}): {data[:80]!r}") from exc
    if not isinstance(obj, dict):
        raise StreamError(f"event is JSON but not an object: {data[:80]!r}")
    return _decode_object(api, obj)


def _decode_shimmy(data: str, stripped: str) -> Decoded:
    if stripped.startswith("[ERROR]"):
        return Decoded("other", error=stripped[len("[ERROR]") :].strip())
    if stripped.startswith("{"):
        # A bare token can itself start with "{" (code, JSON examples): only an
        # object shaped like an event is one; anything else is token text.
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and _event_shaped(obj):
            return _decode_object("shimmy", obj)
    return Decoded("content", text=data)


def _event_shaped(obj: dict[str, Any]) -> bool:
    """Whether a JSON object in a Shimmy stream is an event, not a token that reads as
    JSON (`{"choices": 5}` is text a model wrote): an OpenAI-style chunk has a list of
    choices (one that is not an object is a malformed event, and says so), an error a
    message (a string, or an object that has one)."""
    choices = obj.get("choices")
    if isinstance(choices, list) and choices:
        return True
    error = obj.get("error")
    return isinstance(error, str) or (isinstance(error, dict) and "message" in error)


def decode_body(api: ApiName, body: bytes) -> Decoded:
    """Decode a non-streamed response body."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StreamError(f"response body is not valid JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise StreamError("response body is JSON but not an object")
    if api == "shimmy" and "response" in obj:
        return Decoded("content", text=str(obj["response"]), finish_reason=None)
    decoded = _decode_object(api, obj)
    if decoded.kind in ("usage", "other") and decoded.error is None and not decoded.text:
        decoded.kind = "content"
    return decoded


def _decode_object(api: ApiName, obj: dict[str, Any]) -> Decoded:
    err = obj.get("error")
    if err is not None:
        message = err.get("message") if isinstance(err, dict) else err
        return Decoded("other", error=str(message))
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    timings = obj.get("timings") if isinstance(obj.get("timings"), dict) else None
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        kind: ChunkKind = "usage" if usage or timings else "other"
        return Decoded(kind, usage=usage, timings=timings)
    choice = choices[0]
    if not isinstance(choice, dict):
        raise StreamError("event's choices[0] is not an object")
    finish = choice.get("finish_reason")
    text, role = _choice_text(api, choice)
    reasoning = _reasoning_text(choice)
    if text:
        kind = "content"
    elif reasoning:
        kind, text = "reasoning", reasoning
    elif role:
        kind = "role"
    elif usage or timings:
        kind = "usage"
    else:
        kind = "other"
    return Decoded(
        kind,
        text=text,
        finish_reason=str(finish) if finish else None,
        usage=usage,
        timings=timings,
    )


def _reasoning_text(choice: dict[str, Any]) -> str:
    for key in ("delta", "message"):
        part = choice.get(key)
        if isinstance(part, dict):
            value = part.get("reasoning_content")
            if isinstance(value, str):
                return value
    return ""


def _choice_text(api: ApiName, choice: dict[str, Any]) -> tuple[str, bool]:
    if "delta" in choice and isinstance(choice["delta"], dict):
        delta = choice["delta"]
        content = delta.get("content")
        return (content if isinstance(content, str) else ""), "role" in delta
    if "message" in choice and isinstance(choice["message"], dict):
        content = choice["message"].get("content")
        return (content if isinstance(content, str) else ""), False
    text = choice.get("text")
    return (text if isinstance(text, str) else ""), False
