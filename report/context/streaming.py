"""Streaming page: how steadily tokens arrive, and streamed vs non-streamed runs."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from evidence.metrics import Metric
from evidence.statistics import ratio_of_means
from report.queries import (
    OK_STREAMED,
    Selection,
    group_keys,
    metric,
    record,
    rows,
    stat_or_empty,
    stats_by,
)
from report.values import RatioFigure, Stat

STREAM_METRICS = ("itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "max_stall_ms", "itl_cv")
NON_STREAMED = "NOT stream AND completed"


@dataclass(frozen=True)
class StreamRow:
    model: str
    test_id: str
    config: str
    stats: tuple[Stat, ...]  # in STREAM_METRICS order


@dataclass(frozen=True)
class CompareRow:
    model: str
    test_id: str
    config: str
    streamed_e2e: Stat
    plain_e2e: Stat
    streamed_tps: Stat
    plain_tps: Stat
    ratio: RatioFigure  # streamed E2E / non-streamed E2E


@dataclass(frozen=True)
class EventRow:
    """What the gaps are made of, per configuration: the raw event and token counts."""

    model: str
    config: str
    requests: int
    content_events: int
    gaps: int  # sum over requests of (content events - 1): one gap between two events
    tokens: int  # the server's (or tokenizer's) count, summed
    estimated: int  # requests whose count fell back to the number of events
    tokens_per_event: Stat


@dataclass(frozen=True)
class StreamingContext:
    """The streaming page: responsiveness and streamed vs not."""

    columns: tuple[Metric, ...]  # STREAM_METRICS, as `evidence.metrics` defines them
    overall: tuple[StreamRow, ...]
    per_test: tuple[StreamRow, ...]
    compare: tuple[CompareRow, ...]
    compare_overall: tuple[CompareRow, ...]
    non_streamed: int
    events: tuple[EventRow, ...]


def _stream_rows(
    con: duckdb.DuckDBPyConnection, groups: list[str], order: list[str]
) -> tuple[StreamRow, ...]:
    tables = [stats_by(con, name, groups + order) for name in STREAM_METRICS]
    out = []
    for key in group_keys(con, groups, order):
        values = dict(zip(groups, key[: len(groups)], strict=True))
        out.append(
            StreamRow(
                model=values["model"],
                test_id=values.get("test_id", "all tests"),
                config=values["config_label"],
                stats=tuple(
                    stat_or_empty(t, key, metric(n).unit, "fewer than two content events")
                    for t, n in zip(tables, STREAM_METRICS, strict=True)
                ),
            )
        )
    return tuple(out)


def _compare(
    con: duckdb.DuckDBPyConnection, groups: list[str], order: list[str]
) -> tuple[CompareRow, ...]:
    keys_sql = ", ".join(groups + order)
    present = rows(
        con,
        f"SELECT DISTINCT {keys_sql} FROM sel_requests WHERE {NON_STREAMED} ORDER BY "
        + ", ".join(order),
    )
    if not present:
        return ()
    all_keys = groups + order
    s_e2e = stats_by(con, "e2e_s", all_keys)
    p_e2e = stats_by(con, "e2e_s", all_keys, where=NON_STREAMED)
    s_tps = stats_by(con, "avg_tps", all_keys)
    p_tps = stats_by(con, "avg_tps", all_keys, where=NON_STREAMED)
    out = []
    for row in present:
        key = tuple(row[k] for k in all_keys)
        e2e_s = stat_or_empty(s_e2e, key, metric("e2e_s").unit, "no successful streamed request")
        e2e_p = stat_or_empty(
            p_e2e, key, metric("e2e_s").unit, "no successful non-streamed request"
        )
        if e2e_s.n and e2e_p.n:
            r = ratio_of_means(e2e_s, e2e_p)
            ratio = RatioFigure(r.ratio, r.ci_low, r.ci_high)
        else:
            ratio = RatioFigure(None, None, None, "one side has no successful request")
        out.append(
            CompareRow(
                model=row["model"],
                test_id=row.get("test_id", "all tests"),
                config=row["config_label"],
                streamed_e2e=e2e_s,
                plain_e2e=e2e_p,
                streamed_tps=stat_or_empty(
                    s_tps, key, metric("avg_tps").unit, "no streamed request"
                ),
                plain_tps=stat_or_empty(
                    p_tps, key, metric("avg_tps").unit, "no non-streamed request"
                ),
                ratio=ratio,
            )
        )
    return tuple(out)


def _events(con: duckdb.DuckDBPyConnection) -> tuple[EventRow, ...]:
    per_event = stats_by(con, "tokens_per_event", ["model", "config_label"])
    found = rows(
        con,
        f"""
        SELECT model, config_label AS config, count(*) AS requests,
               sum(content_events) AS content_events,
               sum(greatest(content_events - 1, 0)) AS gaps,
               sum(output_tokens) AS tokens,
               count(*) FILTER (WHERE token_source = 'chunks') AS estimated
        FROM sel_requests WHERE {OK_STREAMED}
        GROUP BY model, config_label, model_order, config_order
        ORDER BY model_order, config_order
        """,
    )
    return tuple(
        record(
            EventRow,
            r,
            tokens_per_event=stat_or_empty(
                per_event,
                (r["model"], r["config"]),
                metric("tokens_per_event").unit,
                "no streamed request with a content event",
            ),
        )
        for r in found
    )


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> StreamingContext:
    """The streaming page's context."""
    by_test = ["model", "test_id", "config_label"]
    by_model = ["model", "config_label"]
    test_order = ["model_order", "test_order", "config_order"]
    model_order = ["model_order", "config_order"]
    non_streamed = rows(con, f"SELECT count(*) AS n FROM sel_requests WHERE {NON_STREAMED}")[0]["n"]
    return StreamingContext(
        columns=tuple(metric(n) for n in STREAM_METRICS),
        overall=_stream_rows(con, by_model, model_order),
        per_test=_stream_rows(con, by_test, test_order),
        compare=_compare(con, by_test, test_order),
        compare_overall=_compare(con, by_model, model_order),
        non_streamed=int(non_streamed or 0),
        events=_events(con),
    )
