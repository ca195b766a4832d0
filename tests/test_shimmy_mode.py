"""Shimmy 1.7.0 as it really behaves, met by the real collector.

The calibration server's Shimmy mode (calibration.shimmy) plays what Shimmy's v1.7.0 source
does: a model load per request with its loader log, axum's SSE framing of bare tokens, chat
chunks that end "stop" whatever happened, no usage (0/0 when not streamed), no /tokenize. The
collector must store every output byte for byte, the finish reason as the server said it and
as inferred, and token counts from the model's own tokenizer (llama-tokenize, offline).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from calibration.scenario import Scenario, StreamRecord
from calibration.server import CalibratedServer
from calibration.shimmy import ShimmyMode, axum_event
from collector.tokenizer import OutputCounter
from tests.support.cli import collect_here, query, request_metrics
from tests.support.report import build, project
from tests.support.stores import MS, StoreFactory

# Tokens as a real model streams them: leading spaces or none, newlines alone and inside a
# token, indentation, multi-byte UTF-8, text that looks like SSE or JSON.
TOKENS = (
    "Hello", ",", " world", "!\n", "\n", "  two spaces", "x\ny", "é", " 日本語", " 🙂",
    '{"k": 1}', "data: z", " [DONE] ", "\ttab", " ", "end.",
)  # fmt: skip
TEXT = "".join(TOKENS)
TEST = "simple-response"


def test_axum_framing_is_shimmys() -> None:
    # axum 0.7's Event::data: "data:" + one extra space only before a leading space; one
    # `data:` line per line of the token; the blank line ends the event.
    assert axum_event("Hello") == b"data:Hello\n\n"
    assert axum_event(" world") == b"data:  world\n\n"
    assert axum_event("x\ny") == b"data:x\ndata:y\n\n"
    assert axum_event("\n") == b"data:\ndata:\n\n"
    assert axum_event("[DONE]") == b"data:[DONE]\n\n"


@dataclass(frozen=True)
class Attached:
    """A quick campaign of TEST attached to a fresh Shimmy-mode server with one API:
    its store, the server's records of the requests it got, and its loader log."""

    db: Path
    records: list[StreamRecord]
    log: str


@pytest.fixture(scope="module")
def attached(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Attached]:
    """The campaign with API `api`, run once in this module and only read by its tests."""
    runs: dict[str, Attached] = {}

    def run(api: str) -> Attached:
        if api not in runs:
            log = io.StringIO()
            scenario = Scenario(
                tokens=len(TOKENS), words=TOKENS, words_are_tokens=True, gap_s=0.001
            )
            db = tmp_path_factory.mktemp(api) / "e.duckdb"
            with CalibratedServer(scenario, shimmy=ShimmyMode(load_s=0.05, log=log)) as server:
                _attach(server, api, db)
                runs[api] = Attached(db, list(server.records), log.getvalue())
        return runs[api]

    return run


def _attach(server: CalibratedServer, api: str, db: Path) -> None:
    flags = ["--endpoint", server.base_url, "--api", api, "--model", "m", "--quick"]
    done = collect_here(*flags, "--tests", TEST, "--db", str(db))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("api", ["shimmy", "openai-chat"])
def test_outputs_are_stored_byte_for_byte(attached: Callable[[str], Attached], api: str) -> None:
    run = attached(api)
    db, records = run.db, run.records
    rows = query(db, "SELECT request_id, stream, output_text, finish_reason FROM requests")
    assert {stream for _, stream, _, _ in rows} == {True, False}
    for request_id, stream, output, finish in rows:
        assert output == TEXT
        # As the server said it: /api/generate never says; chat always says "stop".
        assert finish == (None if api == "shimmy" else "stop")
        if stream:
            chunks = query(
                db,
                "SELECT text FROM chunks WHERE request_id = ? AND kind = 'content' ORDER BY seq",
                [request_id],
            )
            assert [t for (t,) in chunks] == list(TOKENS)
    # One load per generation request (the warm-up's too), each logged whole.
    assert run.log.count("llama_context: graph splits = ") == len(records)
    assert len(records) == 3
    assert all(r.load_ended_ns and r.headers_ns and r.headers_ns > r.load_ended_ns
               for r in records)  # fmt: skip


def test_chat_usage_zero_is_no_count_and_nothing_counted_says_why(
    attached: Callable[[str], Attached],
) -> None:
    db = attached("openai-chat").db
    usage = query(db, "SELECT usage_completion_tokens FROM requests WHERE NOT stream")
    assert usage == [(0,)]  # stored as the server sent it
    rows = request_metrics(db, "m.stream, m.token_source, r.tokenizer, r.tokenizer_error")
    for _, source, tokenizer, error in rows:
        # Attached with no model file: no tokenizer, the reason stored, the count estimated.
        assert source == "chunks" and tokenizer is None and error


def test_a_budget_cut_stream_is_inferred_length(tmp_path: Path) -> None:
    # 100 words asked, the quick profile's 32-token budget: Shimmy stops at 32 and says "stop".
    with CalibratedServer(
        Scenario(tokens=100, gap_s=0.001), shimmy=ShimmyMode(load_s=0.01, log=io.StringIO())
    ) as server:
        db = tmp_path / "e.duckdb"
        _attach(server, "openai-chat", db)
    rows = request_metrics(db, "m.stream, m.finish_reason, finish_reason_inferred, completed, "
                    "content_events", order="m.stream")  # fmt: skip
    streamed = rows[-1]
    assert streamed[:4] == (True, "stop", "length", True) and streamed[4] == 32
    # The site shows both: the server's "stop" and the inferred length beside it.
    root = project(tmp_path)
    build(db, root)
    page = (root / "docs" / "transcripts" / f"{TEST}.md").read_text(encoding="utf-8")
    shown = 'stop</span>; inferred <span class="untrusted">length</span>: count reached max_tokens'
    assert shown in page


def test_stop_at_exactly_max_tokens_is_completed_and_inferred_length(store: StoreFactory) -> None:
    # Issue 12: a finish reason "stop" at exactly max_tokens counts as completed.
    rid = store.request("baseline", [(t * MS, "w") for t in range(1, 9)], max_tokens=8, tokenized=8)
    m = store.metrics(rid)
    assert m["finish_reason"] == "stop" and m["finish_reason_inferred"] == "length"
    assert m["completed"]
    short = store.metrics(store.request("baseline", [(MS, "w")], max_tokens=8, tokenized=1))
    assert short["finish_reason_inferred"] == "stop" and short["completed"]


def test_shimmys_native_api_gives_no_reason_and_still_completes(store: StoreFactory) -> None:
    # Regression: `completed` wanted a finish reason, which /api/generate never sends.
    rid = store.request(
        "baseline", [(MS, "a"), (2 * MS, "b")], finish_reason=None, api="shimmy", tokenized=2
    )
    m = store.metrics(rid)
    assert m["finish_reason_inferred"] == "stop" and m["completed"]
    full = store.request(
        "baseline", [(MS, "a")] * 3, finish_reason=None, api="shimmy", max_tokens=3
    )
    assert store.metrics(full)["finish_reason_inferred"] == "length"


def test_usage_zero_for_an_output_is_no_count(store: StoreFactory) -> None:
    # Regression: Shimmy's non-streamed usage 0/0 made output_tokens 0 ('usage').
    rid = store.request("baseline", [(MS, "seven tokens")], stream=False, usage_tokens=0,
                        tokenized=7)  # fmt: skip
    m = store.metrics(rid)
    assert m["token_source"] == "tokenize" and m["output_tokens"] == 7
    assert not m["tokens_disagree"]
    empty = store.metrics(store.request("baseline", [], stream=False, usage_tokens=0))
    assert empty["token_source"] == "usage" and empty["output_tokens"] == 0


def test_tokenizer_count_is_cross_checked_against_events(store: StoreFactory) -> None:
    events = [(t * MS, "w") for t in range(1, 11)]
    assert not store.metrics(store.request("baseline", events, tokenized=10))["tokens_disagree"]
    assert store.metrics(store.request("baseline", events, tokenized=20))["tokens_disagree"]


def test_no_llama_tokenize_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVIDENCE_CACHE_DIR", str(tmp_path))  # no engine cached here
    counted = OutputCounter.for_model(None, tmp_path / "m.gguf").count("hi", None)
    assert counted.tokens is None and counted.error and "llama-tokenize" in counted.error
