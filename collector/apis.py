"""The HTTP APIs we drive: how to ask, and how to read each answer.

Each API is declared as plain data in `common.server_apis` (its name, path and
what its answers carry); here each declaration gets its `Adapter`: the request
body, and the decoding of one stream event and of one non-streamed body. The
client asks the adapter; nothing else looks at an API's name.

* `openai-chat`, `openai-completions`: OpenAI's chunks and bodies (llama-server;
  Shimmy serves the chat one).
* `shimmy`: Shimmy's native API, below.
* `llama-completion`: llama-server's native /completion: `content` events, then
  one `"stop": true` event with `stop_type` and `timings`, and no [DONE].

Shimmy's native stream has had two shapes: JSON events
(`data: {"choices":[{"text":"Hello","index":0}]}`) and, in its current source,
the bare token text (`data: Hello`); both end with `data: [DONE]`, and a
generation error arrives as `data: [ERROR] ...`. We accept both shapes; a bare
token that merely starts with `{` (code, JSON) stays token text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import BeforeValidator

from common.errors import StreamError
from common.server_apis import API_NAMES, ServerApi, server_api, unknown_api

__all__ = [
    "ADAPTERS",
    "API_NAMES",
    "Adapter",
    "ApiName",
    "ChunkKind",
    "Decoded",
    "GenerationParams",
    "adapter",
    "decode_body",
    "decode_event",
    "request_body",
]


def _declared(name: object) -> str:
    if isinstance(name, str) and name in API_NAMES:
        return name
    raise ValueError(unknown_api())


# An API's name, one of API_NAMES: a config's `server.api` is checked against the
# declarations (with pydantic's words for a wrong choice).
ApiName = Annotated[str, BeforeValidator(_declared)]

# `reasoning`: a thinking delta (`reasoning_content`, e.g. GPT-OSS under
# llama-server). Stored with its text, but it is not the answer: output_text,
# TTFT and the decode metrics use `content` events only.
ChunkKind = Literal["content", "reasoning", "role", "usage", "done", "other"]


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


@dataclass(frozen=True)
class Adapter:
    """One API's behaviour, attached to its declaration."""

    api: ServerApi
    request_body: Callable[[GenerationParams], dict[str, Any]]
    # One SSE `data` payload; raises StreamError for JSON that is not an event.
    decode_event: Callable[[str], Decoded]
    decode_body: Callable[[bytes], Decoded]  # a non-streamed response body


def adapter(name: ApiName) -> Adapter:
    """The adapter of the API called `name`; ValueError names the known ones."""
    try:
        return ADAPTERS[name]
    except KeyError:
        server_api(name)  # raises the ValueError that lists the declared names
        raise


def request_body(api: ApiName, p: GenerationParams) -> dict[str, Any]:
    """The JSON body for one generation request."""
    return adapter(api).request_body(p)


def decode_event(api: ApiName, data: str) -> Decoded:
    """Decode one SSE `data` payload. Raises StreamError for JSON that is not an event."""
    return adapter(api).decode_event(data)


def decode_body(api: ApiName, body: bytes) -> Decoded:
    """Decode a non-streamed response body."""
    return adapter(api).decode_body(body)


def _sampling(p: GenerationParams) -> dict[str, Any]:
    """The temperature, stream flag and (when set) seed of a llama-server request."""
    fields: dict[str, Any] = {"temperature": p.temperature, "stream": p.stream}
    if p.seed is not None:
        fields["seed"] = p.seed
    return fields


# -- OpenAI (llama-server's /v1 routes) ----------------------------------------


def _openai_body(p: GenerationParams) -> dict[str, Any]:
    body: dict[str, Any] = {"model": p.model, "max_tokens": p.max_tokens, **_sampling(p)}
    if p.stream:
        body["stream_options"] = {"include_usage": True}
    if p.cache_prompt is not None:
        body["cache_prompt"] = p.cache_prompt
    return body


def _chat_body(p: GenerationParams) -> dict[str, Any]:
    return {**_openai_body(p), "messages": [{"role": "user", "content": p.prompt}]}


def _completions_body(p: GenerationParams) -> dict[str, Any]:
    return {**_openai_body(p), "prompt": p.prompt}


def _json_object(raw: str | bytes, what: str, shown: str = "") -> dict[str, Any]:
    """`raw` as a JSON object; the StreamError says `what` it was, then `shown`."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StreamError(f"{what} is not valid JSON ({exc.msg}){shown}") from exc
    if not isinstance(obj, dict):
        raise StreamError(f"{what} is JSON but not an object{shown}")
    return obj


def _event_object(data: str) -> dict[str, Any]:
    return _json_object(data, "event", f": {data[:80]!r}")


def _decode_openai_event(data: str) -> Decoded:
    if data.strip() == "[DONE]":
        return Decoded("done")
    return _decode_object(_event_object(data))


def _body_object(body: bytes) -> dict[str, Any]:
    return _json_object(body, "response body")


def _decode_openai_body(body: bytes) -> Decoded:
    return _openai_answer(_body_object(body))


def _openai_answer(obj: dict[str, Any]) -> Decoded:
    decoded = _decode_object(obj)
    if decoded.kind in ("usage", "other") and decoded.error is None and not decoded.text:
        decoded.kind = "content"
    return decoded


# -- Shimmy's native API ---------------------------------------------------------


def _shimmy_body(p: GenerationParams) -> dict[str, Any]:
    return {
        "model": p.model,
        "prompt": p.prompt,
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "stream": p.stream,
    }


def _decode_shimmy_event(data: str) -> Decoded:
    # Bare token text: only the exact marker ends it; a token " [DONE] " is text.
    return Decoded("done") if data == "[DONE]" else _decode_shimmy(data, data.strip())


def _decode_shimmy_body(body: bytes) -> Decoded:
    obj = _body_object(body)
    if "response" in obj:
        return Decoded("content", text=str(obj["response"]), finish_reason=None)
    return _openai_answer(obj)


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
            return _decode_object(obj)
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


def _server_error(obj: dict[str, Any]) -> Decoded | None:
    """An `error` member (a string, or an object with a `message`), as an error event."""
    err = obj.get("error")
    if err is None:
        return None
    message = err.get("message") if isinstance(err, dict) else err
    return Decoded("other", error=str(message))


def _decode_object(obj: dict[str, Any]) -> Decoded:
    if (error := _server_error(obj)) is not None:
        return error
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
    text, role = _choice_text(choice)
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


def _choice_text(choice: dict[str, Any]) -> tuple[str, bool]:
    if "delta" in choice and isinstance(choice["delta"], dict):
        delta = choice["delta"]
        content = delta.get("content")
        return (content if isinstance(content, str) else ""), "role" in delta
    if "message" in choice and isinstance(choice["message"], dict):
        content = choice["message"].get("content")
        return (content if isinstance(content, str) else ""), False
    text = choice.get("text")
    return (text if isinstance(text, str) else ""), False


# -- llama-server's native /completion -----------------------------------------

# Why it stopped (`stop_type`), in OpenAI's words; "none": it has not.
_STOP_TYPES = {"eos": "stop", "word": "stop", "limit": "length"}


def _llama_completion_body(p: GenerationParams) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": p.prompt, "n_predict": p.max_tokens, **_sampling(p)}
    if p.cache_prompt is not None:
        body["cache_prompt"] = p.cache_prompt
    return body


def _decode_llama_completion_event(data: str) -> Decoded:
    # Its stream ends with the `"stop": true` event, not a marker; one is still accepted.
    if data.strip() == "[DONE]":
        return Decoded("done")
    obj = _event_object(data)
    decoded = _llama_completion(obj)
    if obj.get("stop") is True and decoded.kind == "content" and not decoded.text:
        decoded.kind = "done"  # the last event: why it stopped, and its timings
    return decoded


def _decode_llama_completion_body(body: bytes) -> Decoded:
    decoded = _llama_completion(_body_object(body))
    if decoded.error is None:
        decoded.kind = "content"
    return decoded


def _llama_completion(obj: dict[str, Any]) -> Decoded:
    if (error := _server_error(obj)) is not None:
        return error
    content = obj.get("content")
    timings = obj.get("timings") if isinstance(obj.get("timings"), dict) else None
    finish = _STOP_TYPES.get(str(obj.get("stop_type"))) if obj.get("stop") is True else None
    text = content if isinstance(content, str) else ""
    return Decoded("content", text=text, finish_reason=finish, timings=timings)


# -- the registry ----------------------------------------------------------------


def _register(*adapters: Adapter) -> dict[ApiName, Adapter]:
    by_name = {a.api.name: a for a in adapters}
    # Every declared API has its adapter, and no adapter is undeclared.
    missing = set(API_NAMES) ^ set(by_name)
    if missing or len(by_name) != len(adapters):
        raise RuntimeError(f"API declarations and adapters differ: {sorted(missing)}")
    return {name: by_name[name] for name in API_NAMES}


ADAPTERS: dict[ApiName, Adapter] = _register(
    Adapter(server_api("openai-chat"), _chat_body, _decode_openai_event, _decode_openai_body),
    Adapter(
        server_api("openai-completions"),
        _completions_body,
        _decode_openai_event,
        _decode_openai_body,
    ),
    Adapter(server_api("shimmy"), _shimmy_body, _decode_shimmy_event, _decode_shimmy_body),
    Adapter(
        server_api("llama-completion"),
        _llama_completion_body,
        _decode_llama_completion_event,
        _decode_llama_completion_body,
    ),
)
