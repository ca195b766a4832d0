"""Performance page: TTFT, decode and average tokens/s, E2E per test; ITL
distribution; consistency over long generations; one request's token timeline;
client/server cross-check; where the time goes (memory traffic, estimated).

Every figure is over successful streamed requests (stream and completed);
requests that failed are counted on the quality page's completion rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from evidence.metrics import ratio_of_means
from report.context.common import as_dict, no_gpu_reason
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

# The four figures the protocol asks for per test, in page order.
PER_TEST_METRICS = ("ttft_ms", "decode_tps", "avg_tps", "e2e_s")
LONG_CATEGORY = "extended generation"


@dataclass(frozen=True)
class MetricRow:
    model: str
    test_id: str
    config: str
    stat: Stat


@dataclass(frozen=True)
class MetricTable:
    """One metric per (model, test, configuration), plus all tests pooled."""

    name: str
    title: str
    unit: str
    definition: str
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
class TimelinePoint:
    label: str
    t_ms: float
    tokens: int


@dataclass(frozen=True)
class TokenTimeline:
    model: str
    test_id: str
    repeat: int
    requests: tuple[tuple[str, str], ...]  # (config, request_id)
    points: tuple[TimelinePoint, ...]


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
        name=name,
        title=m.title,
        unit=m.unit,
        definition=m.definition,
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
            "SELECT test_id, min(test_order) o FROM rm WHERE category = ? GROUP BY test_id "
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
        SELECT rm.model, rm.model_order, rm.config_label, rm.config_order, g.gap_ms
        FROM token_gaps g JOIN rm USING (request_id) WHERE {ok_streamed("rm")}
        """
    )
    counts = rows(
        con,
        f"SELECT count(*) FILTER (WHERE {OK_STREAMED}) AS ok, count(*) FILTER (WHERE stream) "
        "AS total, count(*) FILTER (WHERE tokens_disagree) AS disagree FROM rm",
    )[0]
    return PerformanceContext(
        metrics=tuple(_table(con, name) for name in PER_TEST_METRICS),
        ratios=tuple(_ratios(con)),
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
                con, "SELECT token_source, count(*) AS n FROM rm GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        ),
        tokens_disagree=int(counts["disagree"] or 0),
        streamed_ok=int(counts["ok"] or 0),
        streamed_total=int(counts["total"] or 0),
    )


def _ratios(con: duckdb.DuckDBPyConnection) -> list[RatioRow]:
    """Offload / baseline ratio of means per model, over the tests both ran."""
    pairs = rows(
        con,
        f"""
        WITH series AS (
            SELECT DISTINCT model, model_order, model_id, config_label, config_order, n_cpu_moe
            FROM rm WHERE {OK_STREAMED}
        )
        SELECT o.model, o.model_id, o.config_label, b.config_label AS baseline
        FROM series o JOIN series b ON b.model_id = o.model_id AND b.config_label = 'baseline'
        WHERE o.n_cpu_moe IS NOT NULL AND o.n_cpu_moe <> 0
        ORDER BY o.model_order, o.config_order
        """,
    )
    out: list[RatioRow] = []
    for p in pairs:
        # Both sides over the tests both ran, so a sweep's subset is compared like for like.
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE pair_rm AS
            SELECT * FROM rm
            WHERE {OK_STREAMED} AND model_id = $model AND config_label IN ($off, $base)
              AND test_id IN (
                SELECT test_id FROM rm WHERE {OK_STREAMED} AND model_id = $model
                GROUP BY test_id HAVING count(DISTINCT config_label) FILTER
                    (WHERE config_label IN ($off, $base)) = 2)
            """,
            {"model": p["model_id"], "off": p["config_label"], "base": p["baseline"]},
        )
        tests = scalar(con, "SELECT count(DISTINCT test_id) FROM pair_rm")
        for name in ("decode_tps", "ttft_ms", "avg_tps", "e2e_s"):
            stats = stats_by(con, name, ["config_label"], source="pair_rm")
            off = stats.get((p["config_label"],))
            base = stats.get((p["baseline"],))
            if off is None or base is None:
                fig = RatioFigure(None, None, None, "one side has no successful request")
            else:
                r = ratio_of_means(off.summary, base.summary)
                fig = RatioFigure(r.ratio, r.ci_low, r.ci_high)
            out.append(
                RatioRow(
                    p["model"],
                    p["config_label"],
                    p["baseline"],
                    name,
                    metric(name).title,
                    fig,
                    int(tests or 0),
                )
            )
    return out


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
    """Decode rate in each tenth of long generations: does speed hold up?"""
    data = rows(
        con,
        f"""
        WITH tt AS (
            SELECT t.request_id, t.t_ns, (t.token_idx * 10) // t.n_tokens AS decile
            FROM token_times t JOIN rm USING (request_id)
            WHERE {ok_streamed("rm")} AND rm.category = ?
              AND t.n_tokens >= 20
        ), per_request AS (
            SELECT request_id, decile,
                   (count(*) - 1) / nullif((max(t_ns) - min(t_ns)) / 1e9, 0) AS rate
            FROM tt GROUP BY request_id, decile
        )
        SELECT rm.model, rm.config_label, p.decile, count(p.rate) AS n, avg(p.rate) AS mean,
               stddev_samp(p.rate) AS sd, min(p.rate) AS lo, max(p.rate) AS hi,
               min(rm.model_order) AS mo, min(rm.config_order) AS co
        FROM per_request p JOIN rm USING (request_id)
        WHERE p.rate IS NOT NULL
        GROUP BY rm.model, rm.config_label, p.decile
        ORDER BY mo, co, p.decile
        """,
        [LONG_CATEGORY],
    )
    from evidence.metrics import summarize

    return tuple(
        CurvePoint(
            d["model"],
            d["config_label"],
            int(d["decile"]),
            Stat.of(summarize(int(d["n"]), d["mean"], d["sd"], d["lo"], d["hi"]), "tokens/s"),
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
            SELECT test_id FROM rm JOIN tests USING (campaign_id, test_id)
            WHERE {OK_STREAMED} ORDER BY tests.max_tokens DESC, test_order LIMIT 1
        ), cand AS (
            SELECT request_id, model, model_id, test_id, repeat, config_label, e2e_s,
                   row_number() OVER (ORDER BY e2e_s) AS i, count(*) OVER () AS n
            FROM rm
            WHERE {OK_STREAMED} AND test_id = (SELECT test_id FROM longest)
              AND model_order = (SELECT min(model_order) FROM rm WHERE {OK_STREAMED})
              AND config_order = (SELECT max(config_order) FILTER (WHERE config_order <= 1)
                                  FROM rm WHERE {OK_STREAMED})
        )
        SELECT * FROM cand WHERE i = (n + 1) // 2
        """,
    )
    if not pick:
        return Missing("no successful streamed request in this store")
    chosen = pick[0]
    pair = [(chosen["config_label"], chosen["request_id"])]
    if chosen["config_label"] != "baseline":
        base = rows(
            con,
            f"SELECT request_id FROM rm WHERE {OK_STREAMED} AND model_id = ? AND test_id = ? "
            "AND config_label = 'baseline' ORDER BY repeat = ? DESC, e2e_s LIMIT 1",
            [chosen["model_id"], chosen["test_id"], chosen["repeat"]],
        )
        if base:
            pair.insert(0, ("baseline", base[0]["request_id"]))
    ids = [rid for _, rid in pair]
    label = {rid: cfg for cfg, rid in pair}
    points = rows(
        con,
        f"""
        SELECT t.request_id, (t.t_ns - r.sent_ns) / 1e6 AS t_ms, t.token_idx + 1 AS tokens
        FROM token_times t JOIN requests r USING (request_id)
        WHERE t.request_id IN ({", ".join("?" for _ in ids)})
        ORDER BY t.request_id, t.token_idx
        """,
        ids,
    )
    return TokenTimeline(
        model=chosen["model"],
        test_id=chosen["test_id"],
        repeat=int(chosen["repeat"]),
        requests=tuple(pair),
        points=tuple(
            TimelinePoint(label[p["request_id"]], float(p["t_ms"]), int(p["tokens"]))
            for p in points
        ),
    )


def _host_bandwidth(con: duckdb.DuckDBPyConnection) -> Figure:
    value = scalar(
        con,
        "SELECT max(mem_bandwidth_bytes_per_s) FROM campaigns WHERE campaign_id IN "
        "(SELECT campaign_id FROM sel)",
    )
    if value is None:
        return Missing("the collector did not benchmark host memory for this campaign")
    return Quantity(float(value), "bytes/s", "measured", "numpy copy at campaign start")


def _bottleneck(con: duckdb.DuckDBPyConnection, runs: tuple[RunMemory, ...]) -> list[BottleneckRow]:
    """Implied weight traffic from host memory per configuration (an estimate):
    decode tokens/s times the active weight bytes each token reads from host RAM."""
    facts = {
        r["model_id"]: r
        for r in rows(
            con,
            """
            SELECT m.model_id, m.spec, m.expert_count, m.expert_used_count, h.gpu_status,
                   c.mem_bandwidth_bytes_per_s AS bw
            FROM sel_models m JOIN campaigns c USING (campaign_id)
            JOIN hosts h ON h.host_id = c.host_id
            """,
        )
    }
    decode = stats_by(con, "decode_tps", ["model_id", "config_label"])
    out: list[BottleneckRow] = []
    for run in runs:
        f = facts.get(run.model_id)
        stat = decode.get((run.model_id, run.config)) or Stat.empty(
            "tokens/s", "no successful streamed request"
        )
        per_token = _host_bytes_per_token(run, f)
        implied: Figure
        share: Figure
        if isinstance(per_token, Quantity) and stat.mean is not None:
            implied = Quantity(
                per_token.value * stat.mean,
                "bytes/s",
                "estimated",
                "decode tokens/s × host bytes per token",
            )
            bw = f["bw"] if f else None
            share = (
                Quantity(
                    100.0 * implied.value / float(bw),
                    "%",
                    "estimated",
                    "of the measured host copy bandwidth",
                )
                if bw
                else Missing("host memory bandwidth was not benchmarked")
            )
        else:
            reason = per_token.reason if isinstance(per_token, Missing) else stat.missing or ""
            implied = share = Missing(reason)
        out.append(
            BottleneckRow(run.model, run.config, stat, run.cpu_cores, per_token, implied, share)
        )
    return out


def _host_bytes_per_token(run: RunMemory, f: dict[str, Any] | None) -> Figure:
    spec = as_dict(f["spec"]) if f else {}
    total = spec.get("tensor_bytes_total")
    experts = spec.get("expert_tensor_bytes")
    n_exp = f["expert_count"] if f else None
    used = f["expert_used_count"] if f else None
    if not spec or total is None or experts is None or not n_exp or not used:
        return Missing("the GGUF sizes or expert counts are not recorded")
    active_experts = float(experts) * used / n_exp
    dense = float(total) - float(experts)
    note = "GGUF sizes; each active weight read once per token"
    cpu_only = (f or {}).get("gpu_status") != "ok" or isinstance(run.gpu_log, Missing)
    if cpu_only:
        why = (
            no_gpu_reason((f or {}).get("gpu_status"))
            if (f or {}).get("gpu_status") != "ok"
            else "no GPU buffers in the log"
        )
        return Quantity(
            dense + active_experts, "bytes", "estimated", f"{note}; all in host memory: {why}"
        )
    if not run.offloaded:
        return Missing("every weight is in GPU memory in this configuration")
    layers = spec.get("moe_layer_count") or 0
    share = (
        1.0 if run.n_cpu_moe == -1 or not layers else min(1.0, (run.layers_on_cpu or 0) / layers)
    )
    return Quantity(
        active_experts * share,
        "bytes",
        "estimated",
        f"{note}; the experts of {share:.0%} of MoE layers are in host memory",
    )
