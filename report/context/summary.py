"""Summary page: the release verdict from the gates, headline figures, and the
protocol's summary table (one row per model and configuration)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from report.context.memory import MemoryContext
from report.context.performance import PerformanceContext
from report.context.quality import QualityContext
from report.queries import Campaign, Selection, rows, scalar, stat_or_empty, stats_by
from report.values import Figure, Missing, Quantity, RatioFigure, Stat


@dataclass(frozen=True)
class Gate:
    campaign: str
    gate_id: str
    title: str
    status: str
    threshold: str
    measured: str


@dataclass(frozen=True)
class Verdict:
    status: str  # READY | NOT READY | INCOMPLETE | NO VERDICT
    sentence: str
    passed: int
    failed: int
    unmeasured: int


@dataclass(frozen=True)
class SummaryRow:
    model: str
    config: str
    parameters: Figure
    vram_saved: Figure | None  # None: this row is the baseline reference
    avg_tps: Stat
    quality: Stat
    repetition: Stat


@dataclass(frozen=True)
class Headline:
    model: str
    config: str
    vram_saved: Figure
    decode: RatioFigure
    ttft: RatioFigure
    tests: int


@dataclass(frozen=True)
class StoreCounts:
    requests: int
    chunks: int
    server_runs: int
    telemetry: int


@dataclass(frozen=True)
class SummaryContext:
    campaigns: tuple[Campaign, ...]
    verdict: Verdict
    gates: tuple[Gate, ...]
    rows: tuple[SummaryRow, ...]
    headlines: tuple[Headline, ...]
    counts: StoreCounts
    synthetic: bool
    unfinished: tuple[Campaign, ...]
    estimated_tokens: int


def _verdict(gates: tuple[Gate, ...]) -> Verdict:
    passed = sum(g.status == "PASS" for g in gates)
    failed = sum(g.status == "FAIL" for g in gates)
    unmeasured = len(gates) - passed - failed
    if not gates:
        return Verdict(
            "NO VERDICT",
            "The release gates have not been computed for this campaign (scoring has not run), "
            "so there is no verdict.",
            0, 0, 0,
        )
    if failed:
        return Verdict(
            "NOT READY", f"{failed} of {len(gates)} release gates failed.", passed, failed,
            unmeasured,
        )
    if unmeasured:
        return Verdict(
            "INCOMPLETE",
            f"No gate failed, but {unmeasured} of {len(gates)} could not be measured on this "
            "host; the verdict needs them.",
            passed, failed, unmeasured,
        )
    return Verdict("READY", f"All {len(gates)} release gates pass.", passed, 0, 0)


def build(
    con: duckdb.DuckDBPyConnection,
    sel: Selection,
    memory: MemoryContext,
    performance: PerformanceContext,
    quality: QualityContext,
) -> SummaryContext:
    """The summary page's context, from the other pages' contexts and the gates."""
    gates = tuple(
        Gate(g["name"], g["gate_id"], g["title"], g["status"], g["threshold"], g["measured"])
        for g in rows(
            con,
            """
            SELECT c.name, g.gate_id, g.title, g.status, g.threshold, g.measured
            FROM gates g JOIN campaigns c USING (campaign_id)
            WHERE g.campaign_id IN (SELECT campaign_id FROM sel)
            ORDER BY c.started_utc,
                     TRY_CAST(regexp_extract(g.gate_id, '[0-9]+') AS INTEGER) NULLS LAST,
                     g.gate_id
            """,
        )
    )
    avg = stats_by(con, "avg_tps", ["model", "config_label"])
    params = {
        r["display"]: r["parameter_count"]
        for r in rows(con, "SELECT display, parameter_count FROM sel_models")
    }
    vram = {(c.model, c.config): c.headline for c in memory.comparisons}
    q_rows = {(q.model, q.config): q for q in quality.overall}
    series = rows(
        con,
        "SELECT DISTINCT model, model_order, config_label, config_order, n_cpu_moe FROM rm "
        "ORDER BY model_order, config_order",
    )
    table = []
    for s in series:
        key = (s["model"], s["config_label"])
        q = q_rows.get(key)
        p = params.get(s["model"])
        offloaded = s["n_cpu_moe"] is not None and s["n_cpu_moe"] != 0
        table.append(
            SummaryRow(
                model=s["model"],
                config=s["config_label"],
                parameters=Quantity(float(p), "params", None)
                if p is not None
                else Missing("the model file was not inspected"),
                vram_saved=vram.get(key, Missing("no baseline to compare with"))
                if offloaded
                else None,
                avg_tps=stat_or_empty(avg, key, "tokens/s", "no successful streamed request"),
                quality=q.scores["quality"]
                if q
                else Stat.empty("/ 5", quality.no_scores_reason),
                repetition=q.scores["repetition"]
                if q
                else Stat.empty("", quality.no_scores_reason),
            )
        )
    ratios = {(r.model, r.config, r.metric): r for r in performance.ratios}
    headlines = []
    for c in memory.comparisons:
        decode = ratios.get((c.model, c.config, "decode_tps"))
        ttft = ratios.get((c.model, c.config, "ttft_ms"))
        none = RatioFigure(None, None, None, "no successful streamed request on both sides")
        headlines.append(
            Headline(
                c.model,
                c.config,
                c.headline,
                decode.ratio if decode else none,
                ttft.ratio if ttft else none,
                decode.tests if decode else 0,
            )
        )
    count = {
        t: int(scalar(con, sql) or 0)
        for t, sql in (
            ("requests", "SELECT count(*) FROM rm"),
            ("chunks", "SELECT sum(event_count) FROM requests WHERE request_id IN "
                       "(SELECT request_id FROM rm)"),
            ("server_runs", "SELECT count(*) FROM sel_runs"),
            ("telemetry", "SELECT count(*) FROM telemetry WHERE server_run_id IN "
                          "(SELECT server_run_id FROM sel_runs)"),
        )
    }
    return SummaryContext(
        campaigns=sel.campaigns,
        verdict=_verdict(gates),
        gates=gates,
        rows=tuple(table),
        headlines=tuple(headlines),
        counts=StoreCounts(**count),
        synthetic=any("SYNTHETIC" in c.name.upper() for c in sel.campaigns),
        unfinished=tuple(c for c in sel.campaigns if c.status != "complete"),
        estimated_tokens=sum(s.requests for s in performance.token_sources if s.source == "chunks"),
    )
