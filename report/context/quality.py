"""Quality page and transcript pages: automated scores, code results, quality
preservation (offload vs baseline), human review, and every transcript.

Scores come from the `scores` table (written by `scoring`, with its version);
human reviews from `reviews`, kept apart from the automated figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import duckdb

from evidence.statistics import summarize
from report.context.common import as_dict
from report.queries import Selection, record, rows, scalar, stat_or_empty, stats_by
from report.values import Missing, Quantity, Stat

# (column of the `sel_request_scores` table, display unit, what a missing value means)
SCORE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("repetition", ""),
    ("check_pct", "%"),
    ("coverage_pct", "%"),
    ("quality", ""),
    ("review", ""),
)

_SLUG = re.compile(r"[^a-z0-9]+")

# What a request that returned no answer (status not ok) did, where its scores would
# be: scoring gives it none (scoring.quality), so every page says "not measured".
NO_ANSWER = {
    "timeout": "timed out",
    "disconnected": "lost its connection",
    "http_error": "got an HTTP error",
    "error": "failed",
}


def no_answer(status: str) -> str | None:
    """What a request with `status` did instead of answering; None for an answer."""
    return None if status == "ok" else NO_ANSWER.get(status, status)


@dataclass(frozen=True)
class QualityRow:
    model: str
    test_id: str
    config: str
    requests: int
    completed: int
    loops: int
    loop_scored: int
    scores: dict[str, Stat]
    # Requests with no answer, so no score: (what they did, how many), e.g. ("timed out", 1).
    unanswered: tuple[tuple[str, int], ...] = ()

    @property
    def completion(self) -> Quantity | Missing:
        if not self.requests:
            return Missing("no request")
        return Quantity(100.0 * self.completed / self.requests, "%", "measured")


@dataclass(frozen=True)
class CodeResult:
    model: str
    config: str
    repeat: int
    stream: bool
    passed: bool
    passed_cases: int | None
    cases: int | None
    function: str | None
    problem: str | None
    request_id: str


@dataclass(frozen=True)
class LostOutput:
    """A request of an offload/baseline pair that returned no answer: the pair has
    nothing to compare."""

    config: str  # its configuration: the offload's or the baseline's
    test_id: str
    repeat: int
    stream: bool
    status: str

    @property
    def what(self) -> str:
        """What it did instead of answering ("timed out")."""
        return no_answer(self.status) or self.status


@dataclass(frozen=True)
class Preservation:
    model: str
    config: str
    baseline_config: str
    quality_delta: Quantity | Missing
    repetition_delta: Quantity | Missing
    check_delta: Quantity | Missing
    similarity: Stat  # scoring.similarity's edit similarity, 0-1
    identical: int
    pairs: int  # pairs compared (both sides answered)
    prefix_words: float | None  # mean words the outputs agree on before they differ
    all_pairs: int = 0  # every pair with the baseline, `lost` ones included
    lost: tuple[LostOutput, ...] = ()  # the requests of those pairs with no answer


@dataclass(frozen=True)
class Review:
    model: str
    config: str
    test_id: str
    score: int
    reviewer: str | None
    note: str | None


@dataclass(frozen=True)
class TranscriptLink:
    test_id: str
    slug: str
    requests: int


@dataclass(frozen=True)
class Containment:
    """How the sandbox held model-written code, as its runs recorded it (one row per
    distinct set of protections)."""

    runs: int
    filesystem: str
    user: str
    network: str
    mechanisms: tuple[str, ...]
    missing: tuple[str, ...]  # layers of the full set this host could not give


@dataclass(frozen=True)
class QualityContext:
    """The quality page: scores, code results, preservation, reviews."""

    has_scores: bool
    scorer_versions: str
    no_scores_reason: str
    overall: tuple[QualityRow, ...]
    per_test: tuple[QualityRow, ...]
    code: tuple[CodeResult, ...]
    containment: tuple[Containment, ...]
    preservation: tuple[Preservation, ...]
    reviews: tuple[Review, ...]
    review_stats: tuple[QualityRow, ...]
    transcripts: tuple[TranscriptLink, ...]


@dataclass(frozen=True)
class Transcript:
    request_id: str
    model: str
    config: str
    repeat: int
    stream: bool
    status: str
    finish_reason: str | None
    finish_reason_inferred: str | None  # evidence.metrics: `length` when the count hit the budget
    output_tokens: int
    token_source: str
    e2e_s: float | None
    error: str | None
    output: str
    repetition: float | None
    loop: bool | None
    check_pass: bool | None
    quality: float | None
    review: float | None
    not_judged: str | None = None  # why the check and quality have no value
    unanswered: str | None = None  # what the request did instead of answering: no scores


@dataclass(frozen=True)
class TranscriptPage:
    """One test's transcripts page."""

    test_id: str
    slug: str
    category: str
    prompt: str
    success_criteria: str
    max_tokens: int
    protocol_max_tokens: int
    transcripts: tuple[Transcript, ...]


def slug(test_id: str) -> str:
    """A file name for a test's transcript page."""
    return _SLUG.sub("-", test_id.lower()).strip("-") or "test"


def _prepare(con: duckdb.DuckDBPyConnection) -> None:
    # A request with no answer (status not ok) has no automated score: scoring stores
    # none since scorer 4, and those an older scorer stored are not shown.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE sel_request_scores AS
        SELECT sel_requests.*, s.repetition, s.loop, s.check_pass * 100 AS check_pct,
               s.check_coverage * 100 AS coverage_pct, s.quality, rv.review,
               s.same_exact, s.same_similarity, s.same_prefix_words, s.not_judged
        FROM sel_requests
        LEFT JOIN sel_scores s
            ON s.request_id = sel_requests.request_id AND sel_requests.status = 'ok'
        LEFT JOIN (SELECT request_id, avg(score) AS review FROM reviews GROUP BY request_id) rv
            ON rv.request_id = sel_requests.request_id
        """
    )


def _rows(
    con: duckdb.DuckDBPyConnection, groups: list[str], order: list[str], missing: str
) -> tuple[QualityRow, ...]:
    keys = groups + order
    base = rows(
        con,
        f"""
        SELECT {", ".join(keys)}, count(*) AS requests,
               count(*) FILTER (WHERE completed) AS completed,
               count(*) FILTER (WHERE loop = 1) AS loops, count(loop) AS loop_scored,
               list(status ORDER BY status) FILTER (WHERE status <> 'ok') AS failed
        FROM sel_request_scores GROUP BY {", ".join(keys)} ORDER BY {", ".join(order)}
        """,
    )
    tables = {
        col: stats_by(
            con, col, keys, where="TRUE", source="sel_request_scores", unit=unit, missing=missing
        )
        for col, unit in SCORE_COLUMNS
    }
    out = []
    for b in base:
        key = tuple(b[k] for k in keys)
        out.append(
            record(
                QualityRow,
                b,
                test_id=b.get("test_id", "all tests"),
                config=b["config_label"],
                unanswered=_unanswered(b["failed"] or []),
                scores={
                    col: stat_or_empty(
                        tables[col],
                        key,
                        unit,
                        "no human review yet" if col == "review" else missing,
                    )
                    for col, unit in SCORE_COLUMNS
                },
            )
        )
    return tuple(out)


def _unanswered(statuses: list[str]) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    for status in statuses:
        what = no_answer(status) or status
        counts[what] = counts.get(what, 0) + 1
    return tuple(counts.items())


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> QualityContext:
    """The quality page's context."""
    _prepare(con)
    scored = int(scalar(con, "SELECT count(*) FROM sel_scores") or 0)
    cut = int(scalar(con, "SELECT count(not_judged) FROM sel_scores") or 0)
    if not scored:
        reason = "no scores in the store for these requests: scoring has not run on this campaign"
    elif cut:
        reason = (
            f"{cut} outputs reached the profile's token cap, below the protocol's budget: "
            "checks and quality cannot judge a cut answer"
        )
    else:
        reason = "no score of this kind for these requests"
    versions = scalar(
        con,
        "SELECT string_agg(DISTINCT scorer_version, ', ' ORDER BY scorer_version) FROM scores "
        "WHERE request_id IN (SELECT request_id FROM sel_requests)",
    )
    return QualityContext(
        has_scores=scored > 0,
        scorer_versions=str(versions) if versions else "none",
        no_scores_reason=reason,
        overall=_rows(con, ["model", "config_label"], ["model_order", "config_order"], reason),
        per_test=_rows(
            con,
            ["model", "test_id", "config_label"],
            ["model_order", "test_order", "config_order"],
            reason,
        ),
        code=_code(con),
        containment=_containment(con),
        preservation=_preservation(con, reason),
        reviews=tuple(
            record(Review, r)
            for r in rows(
                con,
                """
                SELECT q.model, q.config_label AS config, q.test_id, v.score, v.reviewer, v.note
                FROM reviews v JOIN sel_requests q USING (request_id)
                ORDER BY q.model_order, q.test_order, q.config_order, v.reviewed_utc
                """,
            )
        ),
        review_stats=_rows(
            con, ["model", "config_label"], ["model_order", "config_order"], "no human review yet"
        ),
        transcripts=tuple(
            TranscriptLink(r["test_id"], slug(r["test_id"]), int(r["n"]))
            for r in rows(
                con,
                "SELECT test_id, count(*) AS n, min(test_order) AS o FROM sel_requests "
                "GROUP BY test_id ORDER BY o, test_id",
            )
        ),
    )


def _code(con: duckdb.DuckDBPyConnection) -> tuple[CodeResult, ...]:
    """Requests whose check ran code in the sandbox (the score's detail has cases)."""
    data = rows(
        con,
        """
        SELECT q.request_id, q.model, q.config_label AS config, q.repeat, q.stream, s.value,
               s.detail
        FROM scores s JOIN sel_requests q USING (request_id)
        WHERE s.name = 'check' AND json_extract(s.detail, '$.cases') IS NOT NULL
        ORDER BY q.model_order, q.config_order, q.stream DESC, q.repeat
        """,
    )
    out = []
    for d in data:
        detail = as_dict(d["detail"])
        cases = detail.get("cases")
        # The stored reason, whatever stopped the code: a load error, a timeout, a
        # kill, else the first failing case's own error (a RecursionError, say).
        failed_case = next(
            (
                c.get("error")
                for c in (cases if isinstance(cases, list) else [])
                if isinstance(c, dict) and not c.get("passed") and c.get("error")
            ),
            None,
        )
        problem = (
            detail.get("load_error")
            or ("timed out" if detail.get("timed_out") else detail.get("killed_by"))
            or failed_case
            or (None if d["value"] else "a case returned a wrong value")
        )
        passed_cases = detail.get("passed_cases")
        out.append(
            record(
                CodeResult,
                d,
                passed=bool(d["value"]),
                passed_cases=int(passed_cases) if isinstance(passed_cases, int) else None,
                cases=len(cases) if isinstance(cases, list) else None,
                function=str(detail["function"]) if detail.get("function") else None,
                problem=str(problem) if problem else None,
            )
        )
    return tuple(out)


def _containment(con: duckdb.DuckDBPyConnection) -> tuple[Containment, ...]:
    """The sandbox's protections over the code runs shown, from each check's own record."""
    data = rows(
        con,
        """
        SELECT json_extract(s.detail, '$.isolation') AS isolation, count(*) AS runs
        FROM scores s JOIN sel_requests q USING (request_id)
        WHERE s.name = 'check' AND json_extract(s.detail, '$.cases') IS NOT NULL
        GROUP BY 1 ORDER BY runs DESC
        """,
    )
    out = []
    for d in data:
        iso = as_dict(d["isolation"])
        out.append(
            Containment(
                runs=int(d["runs"]),
                filesystem=str(iso.get("filesystem") or "not recorded"),
                user=str(iso.get("user") or "not recorded"),
                network=str(iso.get("network") or "not recorded"),
                mechanisms=tuple(str(m) for m in iso.get("mechanisms") or ()),
                missing=tuple(str(m) for m in iso.get("missing") or ()),
            )
        )
    return tuple(out)


def _delta(value: Any, unit: str) -> Quantity | Missing:
    if value is None:
        return Missing("a side has no score")
    return Quantity(float(value), unit, "derived", "offload minus baseline, paired requests")


def _preservation(con: duckdb.DuckDBPyConnection, reason: str) -> tuple[Preservation, ...]:
    """Offload vs baseline per model: the scorer's same-seed comparisons of the
    outputs (`scoring.similarity`), and the change in the automated scores."""
    # Score changes are over pairs (same test, repeat and streaming mode), so an
    # offload configuration that ran a subset of the tests is compared like for like.
    data = rows(
        con,
        """
        WITH pairs AS (
            SELECT o.model, o.model_order, o.model_id, o.config_label, o.config_order,
                   o.same_exact, o.same_similarity, o.same_prefix_words,
                   o.quality - b.quality AS dq, o.repetition - b.repetition AS drep,
                   o.check_pct - b.check_pct AS dchk
            FROM offload_pairs p
            JOIN sel_request_scores o ON o.request_id = p.offload_request_id
            JOIN sel_request_scores b ON b.request_id = p.baseline_request_id
        )
        SELECT model, model_id, config_label AS config, 'baseline' AS baseline_config,
               count(same_similarity) AS pairs, count(*) AS all_pairs,
               count(*) FILTER (WHERE same_exact = 1) AS identical,
               avg(same_similarity) AS mean, stddev_samp(same_similarity) AS sd,
               min(same_similarity) AS lo, max(same_similarity) AS hi,
               avg(same_prefix_words) AS prefix_words,
               avg(dq) AS dq, avg(drep) AS drep, avg(dchk) AS dchk
        FROM pairs
        GROUP BY model, model_order, model_id, config_label, config_order
        ORDER BY model_order, config_order
        """,
    )
    no_pairs = (
        reason
        if reason.startswith("no scores")
        else "scoring has not compared these outputs with the baseline's"
    )
    lost = _lost(con)
    return tuple(
        record(
            Preservation,
            d,
            lost=lost.get((d["model"], d["config"]), ()),
            quality_delta=_delta(d["dq"], "points"),
            repetition_delta=_delta(d["drep"], ""),
            check_delta=_delta(d["dchk"], "points"),
            similarity=Stat.of(
                summarize(int(d["pairs"]), d["mean"], d["sd"], d["lo"], d["hi"]),
                "",
                missing=no_pairs,
            ),
        )
        for d in data
    )


def _lost(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], tuple[LostOutput, ...]]:
    """Per (model, offload configuration): the requests of its pairs with the baseline
    that returned no answer, either side, in protocol order."""
    data = rows(
        con,
        """
        SELECT o.model, o.config_label AS offload, q.config_label AS config, q.test_id,
               q.repeat, q.stream, q.status
        FROM offload_pairs p
        JOIN sel_requests o ON o.request_id = p.offload_request_id
        JOIN sel_requests b ON b.request_id = p.baseline_request_id
        JOIN sel_requests q ON q.request_id IN (o.request_id, b.request_id)
        WHERE q.status <> 'ok'
        ORDER BY o.model_order, o.config_order, q.test_order, q.stream DESC, q.repeat,
                 q.config_order
        """,
    )
    out: dict[tuple[str, str], list[LostOutput]] = {}
    for d in data:
        out.setdefault((d["model"], d["offload"]), []).append(record(LostOutput, d))
    return {key: tuple(lost) for key, lost in out.items()}


def transcript_pages(con: duckdb.DuckDBPyConnection) -> tuple[TranscriptPage, ...]:
    """Every request's output, grouped by test (one page per test)."""
    tests = rows(
        con,
        """
        SELECT test_id, min(category) AS category, min(prompt) AS prompt,
               min(success_criteria) AS success_criteria, max(max_tokens) AS max_tokens,
               max(protocol_max_tokens) AS protocol_max_tokens, min(ordinal) AS o
        FROM tests WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)
        GROUP BY test_id ORDER BY o, test_id
        """,
    )
    data = rows(
        con,
        """
        SELECT q.request_id, q.model, q.config_label AS config, q.repeat, q.stream, q.status,
               q.finish_reason, q.finish_reason_inferred, q.output_tokens, q.token_source,
               q.e2e_s, q.test_id,
               r.error, r.output_text AS output, q.repetition, q.loop, q.check_pct, q.quality,
               q.review, q.not_judged
        FROM sel_request_scores q JOIN requests r USING (request_id)
        ORDER BY q.test_order, q.model_order, q.config_order, q.stream DESC, q.repeat
        """,
    )
    by_test: dict[str, list[Transcript]] = {}
    for d in data:
        by_test.setdefault(d["test_id"], []).append(
            record(
                Transcript,
                d,
                output_tokens=int(d["output_tokens"] or 0),
                loop=None if d["loop"] is None else d["loop"] >= 1,
                check_pass=None if d["check_pct"] is None else d["check_pct"] >= 100,
                unanswered=no_answer(d["status"]),
            )
        )
    pages = [
        record(
            TranscriptPage,
            t,
            slug=slug(t["test_id"]),
            transcripts=tuple(by_test.get(t["test_id"], ())),
        )
        for t in tests
    ]
    return tuple(p for p in pages if p.transcripts)
