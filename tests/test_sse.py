"""collector.sse and collector.apis: bytes off the socket become decoded events.

Whatever a server sends, and however the network cuts it into reads, the
collector must see the same events, and the only error that may escape is a
StreamError that names what was wrong.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.apis import API_NAMES, ApiName, decode_body, decode_event
from collector.sse import MAX_EVENT_BYTES, SSEEvent, SSEParser
from common.errors import EvidenceError, StreamError

BOM = b"\xef\xbb\xbf"


def parse(chunks: list[bytes], max_event_bytes: int = MAX_EVENT_BYTES) -> list[SSEEvent]:
    """Feed `chunks` in order, then close: every event the stream held."""
    parser = SSEParser(max_event_bytes)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def reference(stream: bytes) -> list[SSEEvent]:
    """The same rules applied to the whole stream at once (the test oracle)."""
    stream = stream.removeprefix(BOM)
    lines = re.split(rb"\r\n|\r|\n", stream)
    if lines[-1] == b"":
        lines.pop()  # the stream ended on a line end: no unterminated tail
    events: list[SSEEvent] = []
    data: list[str] = []
    name = ""
    for raw in lines:
        if not raw:
            if data:
                events.append(SSEEvent("\n".join(data), name or "message"))
            data, name = [], ""
            continue
        if raw.startswith(b":"):
            continue
        field, sep, value = raw.decode("utf-8", errors="replace").partition(":")
        value = value[1:] if sep and value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if data:
        events.append(SSEEvent("\n".join(data), name or "message"))
    return events


# -- line endings, chunking, comments, multi-line data, BOM ------------------

STREAM_LF = b'data: {"a":1}\n\n: keep-alive\n\nevent: ping\ndata: x\n\ndata: [DONE]\n\n'
EXPECTED = [SSEEvent('{"a":1}'), SSEEvent("x", "ping"), SSEEvent("[DONE]")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending_gives_the_same_events(eol: bytes) -> None:
    stream = STREAM_LF.replace(b"\n", eol)
    assert parse([stream]) == EXPECTED


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_a_split_at_every_byte_boundary_gives_the_same_events(eol: bytes) -> None:
    stream = STREAM_LF.replace(b"\n", eol)
    for cut in range(len(stream) + 1):
        assert parse([stream[:cut], stream[cut:]]) == EXPECTED, f"cut at {cut}"
    assert parse([stream[i : i + 1] for i in range(len(stream))]) == EXPECTED


def test_events_come_out_of_the_feed_that_completes_them() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\n") == []
    assert parser.feed(b"\ndata: tw") == [SSEEvent("one")]
    assert parser.feed(b"o\n\n") == [SSEEvent("two")]
    assert parser.close() == []


def test_a_cr_at_the_end_of_a_read_waits_for_a_possible_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent("a")]


def test_comments_are_dropped_and_a_comment_only_stream_has_no_events() -> None:
    assert parse([b": hello\n\n:\n\n: keep-alive\n\n"]) == []


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse([b"data: first\ndata:second\ndata\ndata:  indented\n\n"]) == [
        SSEEvent("first\nsecond\n\n indented")
    ]


def test_an_empty_data_line_is_an_event_with_empty_data() -> None:
    assert parse([b"data:\n\n"]) == [SSEEvent("")]


def test_a_leading_bom_is_dropped_even_split_across_reads() -> None:
    stream = BOM + b"data: x\n\n"
    assert parse([stream]) == [SSEEvent("x")]
    assert parse([stream[:1], stream[1:2], stream[2:]]) == [SSEEvent("x")]


def test_a_bom_later_in_the_stream_is_not_dropped() -> None:
    events = parse([b"data: a\n\n" + BOM + b"data: b\n\n"])
    assert events == [SSEEvent("a")]  # the second line's field is "\ufeffdata"


@pytest.mark.parametrize(
    "tail", [b"data: [DONE]", b"data: [DONE]\n", b"data: [DONE]\r", b"data: [DONE]\r\n"]
)
def test_an_event_without_its_blank_line_is_delivered_at_close(tail: bytes) -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\n" + tail) == [SSEEvent("a")]
    assert parser.close() == [SSEEvent("[DONE]")]


def test_undecodable_bytes_become_replacement_characters() -> None:
    assert parse([b"data: caf\xe9\n\n"]) == [SSEEvent("caf\ufffd")]


# -- the size limit ----------------------------------------------------------


def test_a_line_past_the_limit_without_a_line_end_raises_stream_error() -> None:
    parser = SSEParser()
    parser.feed(b"data: ")
    piece = b"x" * (64 * 1024)
    with pytest.raises(StreamError, match="longer than 4 MiB"):
        for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
            parser.feed(piece)


def test_an_event_past_the_limit_raises_even_when_its_lines_are_short() -> None:
    line = b"data: " + b"x" * 1000 + b"\n"
    with pytest.raises(StreamError, match="larger than"):
        parse([line * 2000], max_event_bytes=1024 * 1024)


def test_events_just_under_the_limit_pass_and_the_count_resets_per_event() -> None:
    line = b"data: " + b"x" * 1000 + b"\n"
    events = parse([(line * 900 + b"\n") * 3], max_event_bytes=1024 * 1024)
    assert len(events) == 3


# -- properties ----------------------------------------------------------------

field_lines = st.one_of(
    st.builds(lambda v: b"data:" + v, st.binary(max_size=12)),
    st.builds(lambda v: b"data: " + v.encode(), st.text(max_size=12)),
    st.builds(lambda v: b"event: " + v.encode(), st.text(max_size=6)),
    st.builds(lambda v: b":" + v, st.binary(max_size=6)),
    st.just(b""),
    st.just(b"id: 7"),
    st.just(b"retry: 10"),
    st.just(b"data"),
).filter(lambda line: b"\r" not in line and b"\n" not in line)
endings = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(field_lines, endings), max_size=25))
    body = b"".join(line + eol for line, eol in lines)
    prefix = BOM if draw(st.booleans()) else b""
    tail = draw(st.sampled_from([b"", b"data: tail", b"data: tail\r"]))
    return prefix + body + tail


@settings(max_examples=300, deadline=None)
@given(stream=event_streams(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_of_a_stream_yields_the_same_events(stream: bytes, cuts: list[int]) -> None:
    whole = parse([stream])
    assert parse(split_at(stream, cuts)) == whole
    assert whole == reference(stream)


@settings(max_examples=50, deadline=None)
@given(stream=event_streams())
def test_byte_at_a_time_equals_all_at_once(stream: bytes) -> None:
    assert parse([stream[i : i + 1] for i in range(len(stream))]) == parse([stream])


# -- decode_event: the three APIs ----------------------------------------------

TIMINGS = {"prompt_n": 5, "prompt_ms": 12.5, "predicted_n": 3, "predicted_ms": 30.0}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def event(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


@pytest.mark.parametrize("api", API_NAMES)
def test_done_is_done_for_every_api(api: ApiName) -> None:
    assert decode_event(api, "[DONE]").kind == "done"
    # Shimmy streams bare tokens: only its exact marker ends; " [DONE] " is a token's text.
    spaced = decode_event(api, " [DONE] ")
    assert spaced.kind == ("content" if api == "shimmy" else "done")


def test_chat_role_content_final_and_usage_chunks() -> None:
    role = decode_event(
        "openai-chat",
        event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}),
    )
    assert (role.kind, role.text) == ("role", "")
    content = decode_event(
        "openai-chat", event({"choices": [{"index": 0, "delta": {"content": " Hi"}}]})
    )
    assert (content.kind, content.text, content.finish_reason) == ("content", " Hi", None)
    final = decode_event(
        "openai-chat",
        event(
            {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                "timings": TIMINGS,
            }
        ),
    )
    assert (final.kind, final.finish_reason, final.timings) == ("usage", "length", TIMINGS)
    usage = decode_event("openai-chat", event({"choices": [], "usage": USAGE, "timings": TIMINGS}))
    assert (usage.kind, usage.usage, usage.timings) == ("usage", USAGE, TIMINGS)


def test_a_chat_chunk_with_both_role_and_content_counts_as_content() -> None:
    decoded = decode_event(
        "openai-chat",
        event({"choices": [{"delta": {"role": "assistant", "content": "Hello"}}]}),
    )
    assert (decoded.kind, decoded.text) == ("content", "Hello")


def test_completions_text_chunks_and_finish() -> None:
    content = decode_event(
        "openai-completions", event({"choices": [{"text": "Hel", "finish_reason": None}]})
    )
    assert (content.kind, content.text) == ("content", "Hel")
    final = decode_event(
        "openai-completions",
        event({"choices": [{"text": "", "finish_reason": "stop"}], "timings": TIMINGS}),
    )
    assert (final.kind, final.finish_reason, final.timings) == ("usage", "stop", TIMINGS)


def test_an_event_with_no_text_no_role_and_no_usage_is_other() -> None:
    assert decode_event("openai-chat", event({"choices": [{"delta": {}}]})).kind == "other"
    assert decode_event("openai-chat", event({"id": "x"})).kind == "other"


@pytest.mark.parametrize("api", ["openai-chat", "openai-completions"])
def test_an_in_stream_error_object_is_reported(api: ApiName) -> None:
    nested = decode_event(api, event({"error": {"code": 500, "message": "KV cache full"}}))
    assert (nested.kind, nested.error) == ("other", "KV cache full")
    flat = decode_event(api, event({"error": "boom"}))
    assert flat.error == "boom"


def test_shimmy_bare_text_tokens_keep_their_spaces_and_newlines() -> None:
    assert decode_event("shimmy", " world").text == " world"
    assert decode_event("shimmy", "a\nb").text == "a\nb"
    assert decode_event("shimmy", "not JSON at all").kind == "content"


@pytest.mark.parametrize("token", ["{", "{}", "{\n", '{"name": "x"}', "{{"])
def test_shimmy_bare_tokens_that_start_with_a_brace_stay_text(token: str) -> None:
    decoded = decode_event("shimmy", token)
    assert (decoded.kind, decoded.text) == ("content", token)


def test_shimmy_json_events_and_errors() -> None:
    decoded = decode_event("shimmy", event({"choices": [{"text": "Hello", "index": 0}]}))
    assert (decoded.kind, decoded.text) == ("content", "Hello")
    error = decode_event("shimmy", "[ERROR] model not loaded")
    assert (error.kind, error.error) == ("other", "model not loaded")
    assert decode_event("shimmy", event({"error": "oom"})).error == "oom"


@pytest.mark.parametrize("api", ["openai-chat", "openai-completions"])
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("this is not JSON", "not valid JSON"),
        ('{"choices": [{"delta": ', "not valid JSON"),
        ("[1, 2, 3]", "not an object"),
        ('{"choices": ["x"]}', "choices\\[0\\] is not an object"),
    ],
)
def test_malformed_openai_events_raise_stream_error(api: ApiName, data: str, message: str) -> None:
    with pytest.raises(StreamError, match=message):
        decode_event(api, data)


def test_a_shimmy_event_shaped_object_that_is_malformed_raises() -> None:
    with pytest.raises(StreamError, match="not an object"):
        decode_event("shimmy", '{"choices": ["x"]}')


# -- decode_body: non-streamed answers ---------------------------------------


def test_chat_completions_and_shimmy_bodies() -> None:
    chat = decode_body(
        "openai-chat",
        json.dumps(
            {
                "choices": [
                    {"message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
                ],
                "usage": USAGE,
                "timings": TIMINGS,
            }
        ).encode(),
    )
    assert (chat.kind, chat.text, chat.finish_reason) == ("content", "Hi", "stop")
    assert (chat.usage, chat.timings) == (USAGE, TIMINGS)
    comp = decode_body(
        "openai-completions",
        json.dumps({"choices": [{"text": "Hi", "finish_reason": "length"}]}).encode(),
    )
    assert (comp.kind, comp.text, comp.finish_reason) == ("content", "Hi", "length")
    shimmy = decode_body("shimmy", b'{"response": "Hi there"}')
    assert (shimmy.kind, shimmy.text) == ("content", "Hi there")


def test_an_empty_answer_with_usage_is_still_the_content() -> None:
    decoded = decode_body(
        "openai-chat",
        json.dumps({"choices": [{"message": {"content": ""}}], "usage": USAGE}).encode(),
    )
    assert (decoded.kind, decoded.text, decoded.usage) == ("content", "", USAGE)


def test_an_error_body_is_reported() -> None:
    decoded = decode_body("openai-chat", b'{"error": {"message": "context too long"}}')
    assert (decoded.kind, decoded.error) == ("other", "context too long")


@pytest.mark.parametrize("body", [b"<html>502</html>", b"", b"[]"])
def test_a_body_that_is_not_a_json_object_raises(body: bytes) -> None:
    with pytest.raises(StreamError):
        decode_body("openai-chat", body)


# -- fuzz: nothing but StreamError escapes ---------------------------------------

KEYS = ["choices", "delta", "content", "text", "role", "message", "usage", "timings"]
KEYS += ["error", "finish_reason", "response", "index"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.one_of(
    json_values.map(json.dumps),
    st.text(max_size=40),
    st.sampled_from(["[DONE]", "[ERROR] x", "{", "[", '{"choices": [', "null", "1e999"]),
)
wire_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from([b"data:", b"data: ", b"{", b"}", b'"choices"', b"[", b"]", b":"])
        | st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"[DONE]", BOM, b"\xff", b"x"]),
        max_size=60,
    ).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(api=st.sampled_from(API_NAMES), data=payloads)
def test_decode_event_raises_nothing_but_stream_error(api: ApiName, data: str) -> None:
    with contextlib.suppress(StreamError):
        decode_event(api, data)


@settings(max_examples=300, deadline=None)
@given(
    api=st.sampled_from(API_NAMES),
    stream=wire_bytes,
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_parser_and_decoder_raise_nothing_but_stream_error(
    api: ApiName, stream: bytes, cuts: list[int]
) -> None:
    try:
        for ev in parse(split_at(stream, cuts), max_event_bytes=64):
            decode_event(api, ev.data)
    except StreamError as exc:
        assert isinstance(exc, EvidenceError)
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(API_NAMES), body=json_values.map(json.dumps).map(str.encode))
def test_decode_body_raises_nothing_but_stream_error(api: ApiName, body: bytes) -> None:
    with contextlib.suppress(StreamError):
        decode_body(api, body)
