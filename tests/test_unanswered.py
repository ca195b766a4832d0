"""A request that returned no answer is not measured for quality, and is counted.

Regression: a non-streamed request cut by the stall timeout was scored "quality 1/5,
check fail" on the Transcripts page, and the Summary's first screen said "35 of 35
outputs identical" without saying that a 36th output was missing. A failed or cut
request (status not ok) gets no quality, check or repetition score, every page says
"not measured" and why, and the Summary counts it beside the identical outputs.

The store: one model, `baseline` and `cpu-moe`, three tests streamed once and once
not; every pair identical, except that cpu-moe's non-streamed technical-documentation
timed out. It is scored by the scorer, then given the scores an older scorer stored
for the failed request, as a store collected before this fix still has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from collector.protocol import PROTOCOL
from collector.recording import insert_protocol
from evidence.store import open_store
from evidence.writer import to_json
from report.context import choosing_k, memory, performance, quality, summary
from report.queries import prepare, select_campaigns
from scoring.store import rescore_campaign
from tests.support.report import build, project
from tests.support.stores import MS, StoreFactory

TESTS = ("simple-response", "technical-explanation", "technical-documentation")
FAILED = ("cpu-moe", "technical-documentation", False)
CUT = (
    "request exceeded its deadline of 1120 s (1000 tokens at 1 tok/s + 120 s to first "
    "byte) waiting for the response headers"
)
ANSWER = "Hello there! I am well, thank you for asking. How are you today?"


def _store(db: Path) -> str:
    """The store described above, scored; returns the failed request's id."""
    with open_store(db) as con:
        factory = StoreFactory(con).campaign()
        insert_protocol(con, factory.campaign_id, lambda test: test.max_tokens)
        factory.server_run("baseline")
        factory.server_run("cpu-moe", n_cpu_moe=-1)
        budgets = {t.test_id: t.max_tokens for t in PROTOCOL.tests}
        failed = ""
        for config in ("baseline", "cpu-moe"):
            for stream in (True, False):
                for i, test_id in enumerate(TESTS):
                    t0 = (i + 1) * 1000 * MS
                    if (config, test_id, stream) == FAILED:
                        failed = factory.request(
                            config,
                            [],
                            sent_ns=t0,
                            test_id=test_id,
                            stream=stream,
                            status="timeout",
                            finish_reason=None,
                            max_tokens=budgets[test_id],
                        )
                        con.execute(
                            "UPDATE requests SET error = ? WHERE request_id = ?", [CUT, failed]
                        )
                        continue
                    words = [
                        (t0 + (k + 1) * 50 * MS, f" {w}") for k, w in enumerate(ANSWER.split())
                    ]
                    factory.request(
                        config,
                        words,
                        sent_ns=t0,
                        test_id=test_id,
                        stream=stream,
                        max_tokens=budgets[test_id],
                    )
        rescore_campaign(con, factory.campaign_id)
    return failed


def _scores(db: Path, request_id: str) -> dict[str, float | None]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT name, value FROM scores WHERE request_id = ?", [request_id]
        ).fetchall()
    return dict(rows)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("unanswered") / "e.duckdb"
    failed = _store(db)
    return db, failed


def test_the_scorer_stores_no_quality_check_or_repetition_for_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "e.duckdb"
    failed = _store(db)
    assert _scores(db, failed) == {"completed": 0.0}


@pytest.fixture(scope="module")
def stale(store: tuple[Path, str]) -> Path:
    """The store as one scored before this fix: the failed request judged on nothing."""
    db, failed = store
    with duckdb.connect(str(db)) as con:
        for name, value in (("repetition", 0.0), ("loop", 0.0), ("check", 0.0), ("quality", 1.0)):
            con.execute(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, '3+rubric.1')",
                [failed, name, value, to_json({})],
            )
    return db


@pytest.fixture
def opened(stale: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with open_store(stale, read_only=True) as con:
        yield con


def test_the_transcript_says_not_measured(opened: duckdb.DuckDBPyConnection) -> None:
    sel = select_campaigns(opened, [])
    prepare(opened, sel)
    quality.build(opened, sel)
    (page,) = [p for p in quality.transcript_pages(opened) if p.test_id == FAILED[1]]
    (failed,) = [t for t in page.transcripts if (t.config, t.stream) == (FAILED[0], FAILED[2])]
    assert (failed.status, failed.error, failed.unanswered) == ("timeout", CUT, "timed out")
    assert (failed.quality, failed.check_pass, failed.repetition, failed.loop) == (None,) * 4


def test_quality_and_preservation_count_it_apart(opened: duckdb.DuckDBPyConnection) -> None:
    sel = select_campaigns(opened, [])
    prepare(opened, sel)
    q = quality.build(opened, sel)
    row = next(r for r in q.per_test if (r.config, r.test_id) == FAILED[:2])
    assert row.unanswered == (("timed out", 1),)
    assert (row.requests, row.scores["quality"].n) == (2, 1)  # the streamed one alone
    (pres,) = q.preservation
    assert (pres.identical, pres.pairs, pres.all_pairs) == (5, 5, 6)
    assert pres.lost == (quality.LostOutput("cpu-moe", FAILED[1], 1, False, "timeout"),)


def test_the_summary_counts_the_missing_output(opened: duckdb.DuckDBPyConnection) -> None:
    sel = select_campaigns(opened, [])
    prepare(opened, sel)
    mem = memory.build(opened, sel)
    perf = performance.build(opened, sel, mem.runs)
    page = summary.build(
        opened, sel, mem, perf, quality.build(opened, sel), choosing_k.build(opened, sel, mem)
    )
    (answer,) = page.answers
    assert (answer.identical, answer.pairs) == (5, 6)
    assert [(x.test_id, x.stream, x.what) for x in answer.lost] == [
        ("technical-documentation", False, "timed out")
    ]


def test_every_page_shows_it(stale: Path, tmp_path: Path) -> None:
    root = project(tmp_path)
    build(stale, root)
    docs = root / "docs"
    index = (docs / "index.md").read_text(encoding="utf-8")
    assert (
        "| **Outputs** | 5 of 6 outputs identical to the baseline's at the same seed; "
        "1 timed out: technical-documentation (not streamed) |"
    ) in index
    transcripts = (docs / "transcripts" / "technical-documentation.md").read_text("utf-8")
    (failed,) = [b for b in transcripts.split("<details") if 'class="transcript failed"' in b]
    summary_line = failed.split("</summary>")[0]
    assert "quality 1/5" not in summary_line and "check fail" not in summary_line
    assert summary_line.endswith(
        'quality, check and repetition <span class="not-measured">not measured</span> '
        "(request timed out: no answer to judge)"
    )
    page = (docs / "quality.md").read_text(encoding="utf-8")
    assert "not measured</span> (1 request timed out: no answer to judge)" in page
    assert "| 5 of 6; 1 timed out, not compared |" in page
