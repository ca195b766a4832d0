"""Performance page: TTFT, decode and average tokens/s, E2E per test; ITL
distribution; consistency over long generations; one request's token timeline;
client/server cross-check; where the time goes (memory traffic, estimated).

Every figure is over successful streamed requests (stream and completed) that
other processes did not starve (`in_headline`, unless the build includes them);
requests that failed are counted on the quality page's completion rate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import duckdb

from evidence.metrics import COMPARE_METRICS, LONG_CATEGORY, PER_TEST_METRICS, Metric
from evidence.statistics import paired_ratio, summarize
from report.context import host_load, reloads
from report.context.memory import RunMemory
from report.queries import (
    OK_STREAMED,
    Selection,
    group_keys,
    metric,
    ok_streamed,
    rows,
    scalar,
    stat_or_empty,
    stats_by,
)
from report.values import Figure, Missing, Quantity, RatioFigure, Stat


@dataclass(frozen=True)
class MetricRow:
    model: str
    test_id: str
    config: str
    stat: Stat


@dataclass(frozen=True)
class MetricTable:
    """One metric per (model, test, configuration), plus all tests pooled."""

    metric: Metric  # as `evidence.metrics` defines it
    rows: tuple[MetricRow, ...]
    overall: tuple[MetricRow, ...]


@dataclass(frozen=True)
class RatioRow:
    model: str
    config: str
    baseline_config: str
    metric: str
    title: str
    ratio: RatioFigure
    tests: int


@dataclass(frozen=True)
class CompareCell:
    """One metric of one test: baseline and offload over the same pairs, and the
    paired ratio (`evidence.statistics.paired_ratio`)."""

    baseline: Stat
    offload: Stat
    ratio: RatioFigure


@dataclass(frozen=True)
class CompareRow:
    """One line of the compare table: a test (or "all tests") of one offload
    configuration against its baseline."""

    model: str
    config: str
    baseline_config: str
    test_id: str
    pairs: int
    cells: dict[str, CompareCell]  # metric -> cell, in COMPARE_METRICS order


@dataclass(frozen=True)
class HistBin:
    model: str
    config: str
    ms: float
    share: float


@dataclass(frozen=True)
class PooledItl:
    model: str
    config: str
    gaps: int
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True)
class CurvePoint:
    model: str
    config: str
    decile: int
    rate: Stat


@dataclass(frozen=True)
class TokenArrival:
    label: str
    t_ms: float
    tokens: int


@dataclass(frozen=True)
class TokenTimeline:
    model: str
    test_id: str
    repeat: int
    requests: tuple[tuple[str, str], ...]  # (config, request_id)
    points: tuple[TokenArrival, ...]


@dataclass(frozen=True)
class BottleneckRow:
    model: str
    config: str
    decode: Stat
    cpu_cores: Figure
    host_bytes_per_token: Figure
    implied_bandwidth: Figure
    share: Figure


@dataclass(frozen=True)
class TokenSource:
    source: str
    requests: int


@dataclass(frozen=True)
class PerformanceContext:
    """The performance page: per-test figures, ITL, consistency, timeline."""

    metrics: tuple[MetricTable, ...]
    ratios: tuple[RatioRow, ...]
    compare: tuple[CompareRow, ...]
    itl_hist: tuple[HistBin, ...]
    itl_pooled: tuple[PooledItl, ...]
    long_tests: tuple[str, ...]
    consistency: MetricTable
    curve: tuple[CurvePoint, ...]
    timeline: TokenTimeline | Missing
    client_server: MetricTable
    bottleneck: tuple[BottleneckRow, ...]
    host_bandwidth: Figure
    token_sources: tuple[TokenSource, ...]
    tokens_disagree: int
    streamed_ok: int
    streamed_total: int
    host_load: host_load.HostLoadContext  # requests other processes starved
    # Whether each configuration's server loaded the model inside its requests.
    model_loads: tuple[reloads.ReloadRow, ...] = ()
    # Why no offload configuration is compared, where the reason is not the usual one:
    # the baseline did not fit the device (its error, per model).
    unfit_baselines: tuple[str, ...] = ()


def _table(con: duckdb.DuckDBPyConnection, name: str, where: str = OK_STREAMED) -> MetricTable:
    m = metric(name)
    missing = f"no request in this group has a {m.title.lower()}"
    by_test = ["model", "test_id", "config_label"]
    by_model = ["model", "config_label"]
    test_order = ["model_order", "test_order", "config_order"]
    model_order = ["model_order", "config_order"]
    per_test = stats_by(con, name, by_test + test_order, where=where)
    overall = stats_by(con, name, by_model + model_order, where=where)
    return MetricTable(
        metric=m,
        rows=tuple(
            MetricRow(k[0], k[1], k[2], stat_or_empty(per_test, k, m.unit, missing))
            for k in group_keys(con, by_test, test_order, where)
        ),
        overall=tuple(
            MetricRow(k[0], "all tests", k[1], stat_or_empty(overall, k, m.unit, missing))
            for k in group_keys(con, by_model, model_order, where)
        ),
    )


def build(
    con: duckdb.DuckDBPyConnection, sel: Selection, runs: tuple[RunMemory, ...]
) -> PerformanceContext:
    """The performance page's context (`runs` from the memory context)."""
    long_tests = tuple(
        r["test_id"]
        for r in rows(
            con,
            "SELECT test_id, min(test_order) o FROM sel_requests WHERE category = ? "
            "GROUP BY test_id "
            "ORDER BY o",
            [LONG_CATEGORY],
        )
    )
    long_where = f"{OK_STREAMED} AND category = '{LONG_CATEGORY}'"
    # The per-token gaps of successful streamed requests, computed once for the
    # histogram and the pooled percentiles.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sel_gaps AS
        SELECT q.model, q.model_order, q.config_label, q.config_order, g.gap_ms
        FROM event_gaps g JOIN sel_requests q USING (request_id) WHERE {ok_streamed("q")}
        """
    )
    compare = _compare(con)
    counts = rows(
        con,
        "SELECT count(*) FILTER (WHERE stream AND completed) AS ok, "
        "count(*) FILTER (WHERE stream) "
        "AS total, count(*) FILTER (WHERE tokens_disagree) AS disagree FROM sel_requests",
    )[0]
    return PerformanceContext(
        metrics=tuple(_table(con, name) for name in PER_TEST_METRICS),
        ratios=tuple(_ratios(compare)),
        compare=tuple(compare),
        itl_hist=_itl_hist(con),
        itl_pooled=_itl_pooled(con),
        long_tests=long_tests,
        consistency=_table(con, "consistency_ratio", long_where),
        curve=_curve(con),
        timeline=_timeline(con),
        client_server=_table(con, "client_server_ratio"),
        bottleneck=tuple(_bottleneck(con, runs)),
        host_bandwidth=_host_bandwidth(con),
        token_sources=tuple(
            TokenSource(r["token_source"], int(r["n"]))
            for r in rows(
                con,
                "SELECT token_source, count(*) AS n FROM sel_requests "
                "GROUP BY 1 ORDER BY 2 DESC, 1",
            )
        ),
        tokens_disagree=int(counts["disagree"] or 0),
        streamed_ok=int(counts["ok"] or 0),
        streamed_total=int(counts["total"] or 0),
        host_load=host_load.build(con),
        model_loads=reloads.build(con),
        unfit_baselines=tuple(
            f"{r['model']}: the baseline {r['unfit_error']}"
            for r in rows(
                con,
                "SELECT m.display AS model, f.unfit_error FROM config_fit f "
                "JOIN sel_models m USING (campaign_id, model_id) "
                "WHERE f.config_label = 'baseline' AND f.does_not_fit ORDER BY m.model_order",
            )
        ),
    )


def _pair_values(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every streamed pair of headline requests (`offload_pairs`) of the selection,
    with each compared metric on both sides and its ratio (`offload_pair_ratios`)."""
    sides = ", ".join(
        f"o.{m} AS o_{m}, b.{m} AS b_{m}, r_{m}.offload_ratio AS r_{m}" for m in COMPARE_METRICS
    )
    joins = " ".join(
        f"LEFT JOIN offload_pair_ratios r_{m} ON r_{m}.metric = '{m}' "
        f"AND r_{m}.campaign_id = p.campaign_id AND r_{m}.model_id = p.model_id "
        f"AND r_{m}.config_label = p.config_label AND r_{m}.test_id = p.test_id "
        f"AND r_{m}.repeat = p.repeat AND r_{m}.stream = p.stream"
        for m in COMPARE_METRICS
    )
    return rows(
        con,
        f"""
        SELECT o.model, o.model_order, o.config_order, p.config_label,
               b.config_label AS baseline_label, p.test_id, o.test_order, {sides}
        FROM offload_pairs p
        JOIN sel_requests o ON o.request_id = p.offload_request_id
        JOIN request_metrics b ON b.request_id = p.baseline_request_id
        {joins}
        WHERE p.stream AND o.in_headline AND b.in_headline
        ORDER BY o.model_order, o.config_order, o.test_order, p.repeat
        """,
    )


def _side(values: list[float], unit: str) -> Stat:
    found = [v for v in values if v is not None]
    if not found:
        return Stat.empty(unit, "no value on this side")
    sd = statistics.stdev(found) if len(found) > 1 else None
    return Stat.of(summarize(len(found), statistics.fmean(found), sd, min(found), max(found)), unit)


def _cell(pairs: list[dict[str, Any]], name: str) -> CompareCell:
    unit = metric(name).unit
    ratios = [p[f"r_{name}"] for p in pairs if p[f"r_{name}"] is not None]
    found, n = paired_ratio(ratios)
    figure = (
        RatioFigure(found.ratio, found.ci_low, found.ci_high, n=n)
        if found.ratio is not None
        else RatioFigure(None, None, None, "no pair with this figure on both sides")
    )
    return CompareCell(
        _side([p[f"b_{name}"] for p in pairs], unit),
        _side([p[f"o_{name}"] for p in pairs], unit),
        figure,
    )


def _compare(con: duckdb.DuckDBPyConnection) -> list[CompareRow]:
    """The compare table: per offload configuration, each test and all tests pooled."""
    groups: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = {}
    for p in _pair_values(con):
        key = (p["model"], p["config_label"], p["baseline_label"])
        groups.setdefault(key, {}).setdefault(p["test_id"], []).append(p)
    out = []
    for (model, config, base), by_test in groups.items():
        every = [p for pairs in by_test.values() for p in pairs]
        for test_id, pairs in [*by_test.items(), ("all tests", every)]:
            out.append(
                CompareRow(
                    model,
                    config,
                    base,
                    test_id,
                    len(pairs),
                    {name: _cell(pairs, name) for name in COMPARE_METRICS},
                )
            )
    return out


def _ratios(compare: list[CompareRow]) -> list[RatioRow]:
    """The headline ratios: each offload configuration over all its paired tests."""
    tests = {(r.model, r.config): 0 for r in compare}
    for r in compare:
        if r.test_id != "all tests":
            tests[(r.model, r.config)] += 1
    return [
        RatioRow(
            r.model,
            r.config,
            r.baseline_config,
            name,
            metric(name).title,
            r.cells[name].ratio,
            tests[(r.model, r.config)],
        )
        for r in compare
        if r.test_id == "all tests"
        for name in COMPARE_METRICS
    ]


def _itl_hist(con: duckdb.DuckDBPyConnection) -> tuple[HistBin, ...]:
    """Per-token gaps in log-spaced bins (20 per decade), as a share of each series."""
    data = rows(
        con,
        """
        WITH g AS (
            SELECT model, model_order, config_label, config_order,
                   round(floor(log10(greatest(gap_ms, 0.01)) * 20) / 20, 2) AS bin
            FROM sel_gaps
        )
        SELECT model, config_label, bin, count(*) / sum(count(*)) OVER
                   (PARTITION BY model, config_label) AS share,
               min(model_order) AS mo, min(config_order) AS co
        FROM g GROUP BY model, config_label, bin
        ORDER BY mo, co, bin
        """,
    )
    return tuple(
        HistBin(d["model"], d["config_label"], 10 ** (float(d["bin"]) + 0.025), float(d["share"]))
        for d in data
    )


def _itl_pooled(con: duckdb.DuckDBPyConnection) -> tuple[PooledItl, ...]:
    data = rows(
        con,
        """
        SELECT model, config_label, count(*) AS gaps,
               quantile_cont(gap_ms, 0.5) AS p50, quantile_cont(gap_ms, 0.9) AS p90,
               quantile_cont(gap_ms, 0.99) AS p99,
               min(model_order) AS mo, min(config_order) AS co
        FROM sel_gaps
        GROUP BY model, config_label ORDER BY mo, co
        """,
    )
    return tuple(
        PooledItl(
            d["model"],
            d["config_label"],
            int(d["gaps"]),
            float(d["p50"]),
            float(d["p90"]),
            float(d["p99"]),
        )
        for d in data
    )


def _curve(con: duckdb.DuckDBPyConnection) -> tuple[CurvePoint, ...]:
    """Decode rate in each tenth of long generations (the `decode_deciles` view)."""
    unit = metric("decode_rate_along_generation").unit
    data = rows(
        con,
        """
        SELECT q.model, q.config_label, d.decile, count(d.rate) AS n, avg(d.rate) AS mean,
               stddev_samp(d.rate) AS sd, min(d.rate) AS lo, max(d.rate) AS hi,
               min(q.model_order) AS mo, min(q.config_order) AS co
        FROM (SELECT request_id, decile, decode_rate_along_generation AS rate
              FROM decode_deciles) d
        JOIN sel_requests q USING (request_id)
        WHERE d.rate IS NOT NULL
        GROUP BY q.model, q.config_label, d.decile
        ORDER BY mo, co, d.decile
        """,
    )
    return tuple(
        CurvePoint(
            d["model"],
            d["config_label"],
            int(d["decile"]),
            Stat.of(summarize(int(d["n"]), d["mean"], d["sd"], d["lo"], d["hi"]), unit),
        )
        for d in data
    )


def _timeline(con: duckdb.DuckDBPyConnection) -> TokenTimeline | Missing:
    """One request's tokens over time: the median-E2E offload request of the test
    with the largest budget, and the baseline request of the same repeat."""
    pick = rows(
        con,
        f"""
        WITH longest AS (
            SELECT test_id FROM sel_requests JOIN tests USING (campaign_id, test_id)
            WHERE {OK_STREAMED} ORDER BY tests.max_tokens DESC, test_order LIMIT 1
        ), cand AS (
            SELECT request_id, model, model_id, test_id, repeat, config_label, e2e_s,
                   row_number() OVER (ORDER BY e2e_s) AS i, count(*) OVER () AS n
            FROM sel_requests
            WHERE {OK_STREAMED} AND test_id = (SELECT test_id FROM longest)
              AND model_order = (SELECT min(model_order) FROM sel_requests WHERE {OK_STREAMED})
              AND config_order = (SELECT max(config_order) FILTER (WHERE config_order <= 1)
                                  FROM sel_requests WHERE {OK_STREAMED})
        )
        SELECT * FROM cand WHERE i = (n + 1) // 2
        """,
    )
    if not pick:
        return Missing("no successful streamed request in this store")
    chosen = pick[0]
    pair = [(chosen["config_label"], chosen["request_id"])]
    base = rows(
        con,
        f"SELECT p.baseline_request_id, b.config_label FROM offload_pairs p "
        f"JOIN sel_requests b ON b.request_id = p.baseline_request_id "
        f"WHERE p.offload_request_id = ? AND {ok_streamed('b')}",
        [chosen["request_id"]],
    )
    if base:
        pair.insert(0, (base[0]["config_label"], base[0]["baseline_request_id"]))
    ids = [rid for _, rid in pair]
    label = {rid: cfg for cfg, rid in pair}
    points = rows(
        con,
        f"""
        SELECT t.request_id, (t.t_ns - r.sent_ns) / 1e6 AS t_ms, t.event_idx + 1 AS tokens
        FROM event_times t JOIN requests r USING (request_id)
        WHERE t.request_id IN ({", ".join("?" for _ in ids)})
        ORDER BY t.request_id, t.event_idx
        """,
        ids,
    )
    return TokenTimeline(
        model=chosen["model"],
        test_id=chosen["test_id"],
        repeat=int(chosen["repeat"]),
        requests=tuple(pair),
        points=tuple(
            TokenArrival(label[p["request_id"]], float(p["t_ms"]), int(p["tokens"])) for p in points
        ),
    )


def _host_bandwidth(con: duckdb.DuckDBPyConnection) -> Figure:
    value = scalar(
        con,
        "SELECT max(mem_bandwidth_bytes_per_s) FROM campaigns WHERE campaign_id IN "
        "(SELECT campaign_id FROM sel_campaigns)",
    )
    if value is None:
        return Missing("the collector did not benchmark host memory for this campaign")
    return Quantity(float(value), "bytes/s", "measured", "numpy copy at campaign start")


def _bottleneck(con: duckdb.DuckDBPyConnection, runs: tuple[RunMemory, ...]) -> list[BottleneckRow]:
    """Implied weight traffic from host memory per configuration (the `host_traffic`
    view, an estimate), beside the measured decode rate and CPU use."""
    traffic = {
        (r["model_id"], r["config_label"]): r
        for r in rows(
            con,
            "SELECT h.*, c.mem_bandwidth_bytes_per_s AS bw FROM host_traffic h "
            "JOIN sel_models m USING (campaign_id, model_id) JOIN campaigns c USING (campaign_id)",
        )
    }
    decode = stats_by(con, "decode_tps", ["model_id", "config_label"])
    out: list[BottleneckRow] = []
    for run in runs:
        t = traffic.get((run.model_id, run.config))
        stat = decode.get((run.model_id, run.config)) or Stat.empty(
            metric("decode_tps").unit, "no successful streamed request"
        )
        per_token: Figure
        implied: Figure
        share: Figure
        if t is None or t["host_bytes_per_token"] is None:
            per_token = implied = share = Missing(
                "the GGUF sizes or expert counts are not recorded"
            )
        else:
            per_token = Quantity(
                float(t["host_bytes_per_token"]),
                metric("host_bytes_per_token").unit,
                "estimated",
                "GGUF sizes; each active weight read once per token",
            )
            implied = (
                Quantity(
                    float(t["implied_host_traffic"]),
                    metric("implied_host_traffic").unit,
                    "estimated",
                    "decode tokens/s × host bytes per token",
                )
                if t["implied_host_traffic"] is not None
                else Missing(stat.missing or "no decode rate")
            )
            share = (
                Quantity(
                    float(t["host_bandwidth_pct"]),
                    "%",
                    "estimated",
                    "of the measured host copy bandwidth",
                )
                if t["host_bandwidth_pct"] is not None
                else Missing(
                    "host memory bandwidth was not benchmarked"
                    if not t["bw"]
                    else stat.missing or "no decode rate"
                )
            )
        out.append(
            BottleneckRow(run.model, run.config, stat, run.cpu_cores, per_token, implied, share)
        )
    return out
