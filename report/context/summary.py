"""Summary page: the release verdict from the gates, headline figures, and the
protocol's summary table (one row per model and configuration)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import duckdb

from report.context.choosing_k import Answer as KAnswer
from report.context.choosing_k import ChoosingKContext
from report.context.common import Gate, gate_rank
from report.context.host_load import HostLoadContext
from report.context.memory import MemoryContext
from report.context.performance import PerformanceContext
from report.context.quality import LostOutput, QualityContext
from report.context.scope import ScopeLine, scope_lines, server_name
from report.queries import (
    Campaign,
    Selection,
    metric,
    record,
    rows,
    scalar,
    stat_or_empty,
    stats_by,
)
from report.values import Figure, Missing, Quantity, RatioFigure, Stat


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
    host: str  # hosts.host_id of the model's campaign
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
class Answer:
    """What one offload configuration did to one model: the first thing on the page."""

    model: str
    config: str
    baseline_config: str
    vram_saved: Figure
    baseline_memory: Figure
    offload_memory: Figure
    decode: RatioFigure
    decode_baseline: Stat
    decode_offload: Stat
    ttft: RatioFigure
    # Why the baseline has no measured figure: it did not fit the device (None: it ran).
    baseline_unfit: str | None
    identical: int | None  # outputs identical to the baseline's, of `pairs`
    pairs: int  # every pair with the baseline, those `lost` included
    preservation_reason: str
    lost: tuple[LostOutput, ...] = ()  # requests of those pairs with no answer, either side


@dataclass(frozen=True)
class FailedConfig:
    """A configuration that ran requests and had not one succeed: a failure, said first."""

    model: str
    config: str
    requests: int
    first_error: str  # the first failed request's status and error, one line


@dataclass(frozen=True)
class StoreCounts:
    requests: int
    chunks: int
    server_runs: int
    telemetry: int


@dataclass(frozen=True)
class SummaryContext:
    """The summary page: verdict, headline figures, summary table."""

    campaigns: tuple[Campaign, ...]
    verdict: Verdict
    gates: tuple[Gate, ...]
    rows: tuple[SummaryRow, ...]
    headlines: tuple[Headline, ...]
    counts: StoreCounts
    synthetic: bool
    unfinished: tuple[Campaign, ...]
    estimated_tokens: int
    sweeps: tuple[str, ...]  # configurations that ran a subset of the tests
    multi_host: bool  # the shown campaigns span several hosts: rows say which
    scope: tuple[ScopeLine, ...]  # what these runs could and could not show
    answers: tuple[Answer, ...]
    server: str  # the server that ran, as the intro names it
    failing_gates: tuple[Gate, ...]  # FAIL and NOT MEASURED: shown open
    passing_gates: tuple[Gate, ...]  # PASS: one click away
    host_load: HostLoadContext  # requests other processes starved, beside the headline
    unfit_baselines: tuple[str, ...] = ()  # models whose baseline did not fit the device
    failed_configs: tuple[FailedConfig, ...] = ()  # configurations with no successful request
    # Per model, the fastest K of the sweep that loaded (the Choosing K page's answer).
    fastest_k: dict[str, KAnswer] = field(default_factory=dict)


def _verdict(
    gates: tuple[Gate, ...], load: HostLoadContext, failed: tuple[FailedConfig, ...] = ()
) -> Verdict:
    """The gates' verdict, a configuration that failed outright before it (whatever the
    gates say, it is not ready), and what a busy host did to the campaigns it disturbed."""
    verdict = _gates_verdict(gates)
    if failed:
        said = "; ".join(
            f"{f.model} / {f.config} failed: not one of its {f.requests} requests succeeded"
            for f in failed
        )
        verdict = dataclasses.replace(
            verdict, status="NOT READY", sentence=f"{said}. {verdict.sentence}"
        )
    busy = " ".join(
        f"The host was busy during campaign {c.name}: other processes starved "
        f"{c.starved} of its {c.streamed} streamed requests (more than "
        f"{c.limit.value:g} %), so its timings describe the host's load as much as the "
        "configurations; rerun it on a quiet machine."
        for c in load.busy
    )
    if not busy:
        return verdict
    return dataclasses.replace(verdict, sentence=f"{verdict.sentence} {busy}")


def _gates_verdict(gates: tuple[Gate, ...]) -> Verdict:
    passed = sum(g.status == "PASS" for g in gates)
    failed = sum(g.status == "FAIL" for g in gates)
    unmeasured = len(gates) - passed - failed
    if not gates:
        return Verdict(
            "NO VERDICT",
            "The release gates have not been computed for this campaign (scoring has not run), "
            "so there is no verdict.",
            0,
            0,
            0,
        )
    if failed:
        return Verdict(
            "NOT READY",
            f"{failed} of {len(gates)} release gates failed.",
            passed,
            failed,
            unmeasured,
        )
    if unmeasured:
        return Verdict(
            "INCOMPLETE",
            f"No gate failed, but {unmeasured} of {len(gates)} could not be measured on this "
            "host; the verdict needs them.",
            passed,
            failed,
            unmeasured,
        )
    return Verdict("READY", f"All {len(gates)} release gates pass.", passed, 0, 0)


def _failed_configs(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], FailedConfig]:
    """Configurations that ran requests and had not one succeed, in page order."""
    return {
        (r["model"], r["config_label"]): FailedConfig(
            r["model"], r["config_label"], int(r["n"]), " ".join(str(r["first"]).split())[:200]
        )
        for r in rows(
            con,
            "SELECT q.model, q.config_label, count(*) AS n, "
            "arg_min(q.status || ': ' || coalesce(r.error, ''), q.sent_ns) AS first "
            "FROM sel_requests q JOIN requests r USING (request_id) "
            "GROUP BY q.model, q.config_label, q.model_order, q.config_order "
            "HAVING count(*) FILTER (WHERE q.status = 'ok') = 0 "
            "ORDER BY q.model_order, q.config_order",
        )
    }


def _starved(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    """Successful streamed requests other processes starved, per configuration: the
    only ones a starvation reason may be given for."""
    return {
        (r["model"], r["config_label"]): int(r["n"])
        for r in rows(
            con,
            "SELECT model, config_label, count(*) AS n FROM sel_requests "
            "WHERE stream AND completed AND NOT in_headline GROUP BY ALL",
        )
    }


def build(
    con: duckdb.DuckDBPyConnection,
    sel: Selection,
    memory: MemoryContext,
    performance: PerformanceContext,
    quality: QualityContext,
    choosing: ChoosingKContext,
) -> SummaryContext:
    """The summary page's context, from the other pages' contexts and the gates."""
    found = rows(
        con,
        """
        SELECT c.name AS campaign, c.started_utc, g.gate_id, g.title, g.status, g.threshold,
               g.measured
        FROM sel_gates g JOIN campaigns c USING (campaign_id)
        """,
    )
    found.sort(key=lambda g: (g["started_utc"], gate_rank(g["gate_id"])))
    gates = tuple(record(Gate, g) for g in found)
    avg = stats_by(con, "avg_tps", ["model", "config_label"])
    models = rows(con, "SELECT display, parameter_count, host_id FROM sel_models")
    params = {r["display"]: r["parameter_count"] for r in models}
    hosts = {r["display"]: r["host_id"] for r in models}
    vram = {(c.model, c.config): c.headline for c in memory.comparisons}
    failed = _failed_configs(con)
    starved = _starved(con)
    q_rows = {(q.model, q.config): q for q in quality.overall}
    series = rows(
        con,
        "SELECT DISTINCT model, model_order, config_label, config_order, n_cpu_moe "
        "FROM sel_requests "
        "WHERE (model_id, config_label) IN (SELECT model_id, config_label FROM sel_series "
        "WHERE main) ORDER BY model_order, config_order",
    )
    sweeps = tuple(
        r["config_label"]
        for r in rows(
            con,
            "SELECT config_label, min(n_cpu_moe) AS k FROM sel_series WHERE NOT main "
            "GROUP BY config_label ORDER BY k, config_label",
        )
    )
    main = {(r["model"], r["config_label"]) for r in series}
    table = []
    for s in series:
        key = (s["model"], s["config_label"])
        q = q_rows.get(key)
        p = params.get(s["model"])
        offloaded = s["n_cpu_moe"] is not None and s["n_cpu_moe"] != 0
        parameters: Figure = (
            Quantity(float(p), "params", None)
            if p is not None
            else Missing("the model file was not inspected")
        )
        broken = failed.get(key)
        if broken:
            # Not one answer: no rate, no score, and no saving to read as a result.
            why = f"not one of its {broken.requests} requests succeeded"
            nothing = Stat.empty("", f"{why}: no answer to judge")
            vram_saved: Figure | None = Missing(f"this configuration failed: {why}")
            avg_tps, scores = Stat.empty(metric("avg_tps").unit, why), (nothing, nothing)
        else:
            no_rate = (
                f"every successful streamed request was starved by other processes; "
                f"{starved[key]} left out"
                if starved.get(key)
                else "no successful streamed request"
            )
            vram_saved = vram.get(key, Missing("no baseline to compare with"))
            avg_tps = stat_or_empty(avg, key, metric("avg_tps").unit, no_rate)
            unscored = Stat.empty("", quality.no_scores_reason)
            scores = (
                q.scores["quality"] if q else unscored,
                q.scores["repetition"] if q else unscored,
            )
        table.append(
            SummaryRow(
                model=s["model"],
                config=s["config_label"],
                host=hosts[s["model"]],
                parameters=parameters,
                vram_saved=vram_saved if offloaded else None,
                avg_tps=avg_tps,
                quality=scores[0],
                repetition=scores[1],
            )
        )
    ratios = {(r.model, r.config, r.metric): r for r in performance.ratios}
    headlines = []
    for c in memory.comparisons:
        if (c.model, c.config) not in main:
            continue
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
            ("requests", "SELECT count(*) FROM sel_requests"),
            (
                "chunks",
                "SELECT sum(event_count) FROM requests WHERE request_id IN "
                "(SELECT request_id FROM sel_requests)",
            ),
            ("server_runs", "SELECT count(*) FROM sel_runs"),
            (
                "telemetry",
                "SELECT count(*) FROM telemetry WHERE server_run_id IN "
                "(SELECT server_run_id FROM sel_runs)",
            ),
        )
    }
    return SummaryContext(
        campaigns=sel.campaigns,
        verdict=_verdict(gates, performance.host_load, tuple(failed.values())),
        gates=gates,
        rows=tuple(table),
        headlines=tuple(headlines),
        counts=StoreCounts(**count),
        synthetic=any("SYNTHETIC" in c.name.upper() for c in sel.campaigns),
        unfinished=tuple(c for c in sel.campaigns if c.status != "complete"),
        estimated_tokens=sum(s.requests for s in performance.token_sources if s.source == "chunks"),
        sweeps=sweeps,
        multi_host=len({c.host_id for c in sel.campaigns}) > 1,
        scope=scope_lines(con),
        answers=tuple(_answers(memory, performance, quality, main, failed, starved)),
        server=server_name(con),
        failing_gates=tuple(g for g in gates if g.status != "PASS"),
        passing_gates=tuple(g for g in gates if g.status == "PASS"),
        host_load=performance.host_load,
        unfit_baselines=tuple(u.model for u in memory.unfit_baselines),
        failed_configs=tuple(failed.values()),
        fastest_k={a.model: a for a in choosing.answers},
    )


def _no_pair_reason(
    model: str,
    sides: tuple[str, str],
    failed: dict[tuple[str, str], FailedConfig],
    starved: dict[tuple[str, str], int],
) -> str:
    """Why an offload configuration (`sides`: baseline, offload) has no paired figure:
    a side that failed, else requests other processes starved on either side, else
    no pair (starvation is named only where it took requests that had succeeded)."""
    for config in reversed(sides):
        if (model, config) in failed:
            f = failed[(model, config)]
            return f"{config} failed: not one of its {f.requests} requests succeeded"
    excluded = sum(starved.get((model, config), 0) for config in sides)
    if excluded:
        return (
            # Shown inside "not measured (...)": no parentheses of its own.
            "no pair of successful streamed requests that other processes did not starve; "
            f"{excluded} starved left out"
        )
    return "no pair of successful streamed requests"


def _answers(
    memory: MemoryContext,
    performance: PerformanceContext,
    quality: QualityContext,
    main: set[tuple[str, str]],
    failed: dict[tuple[str, str], FailedConfig],
    starved: dict[tuple[str, str], int],
) -> list[Answer]:
    """One answer per offload configuration of the main plan (not the sweep), from the
    figures the other pages show: the same numbers, never recomputed."""
    overall = {(r.model, r.config): r for r in performance.compare if r.test_id == "all tests"}
    kept = {(p.model, p.config): p for p in quality.preservation}
    out = []
    for c in memory.comparisons:
        if (c.model, c.config) not in main:
            continue
        row = overall.get((c.model, c.config))
        unfit = next((u.reason for u in memory.unfit_baselines if u.model == c.model), None)
        why = (
            "no baseline request to pair with: the baseline does not fit the device"
            if unfit
            else _no_pair_reason(c.model, (c.baseline_config, c.config), failed, starved)
        )
        none = RatioFigure(None, None, None, why)
        empty = Stat.empty(metric("decode_tps").unit, why)
        pres = kept.get((c.model, c.config))
        # A configuration none of whose requests succeeded answers no question, memory
        # included: its load is on the memory page, but an answer would read as a result.
        broken = failed.get((c.model, c.config))
        gone = (
            Missing(
                f"this configuration failed: not one of its {broken.requests} requests succeeded"
            )
            if broken
            else None
        )
        out.append(
            Answer(
                model=c.model,
                config=c.config,
                baseline_config=c.baseline_config,
                vram_saved=gone or c.headline,
                baseline_memory=gone or c.baseline_gpu,
                offload_memory=gone or c.offload_gpu,
                decode=row.cells["decode_tps"].ratio if row else none,
                decode_baseline=row.cells["decode_tps"].baseline if row else empty,
                decode_offload=row.cells["decode_tps"].offload if row else empty,
                ttft=row.cells["ttft_ms"].ratio if row else none,
                baseline_unfit=unfit,
                identical=pres.identical if pres and pres.pairs else None,
                pairs=pres.all_pairs if pres else 0,
                preservation_reason=quality.no_scores_reason
                if not quality.has_scores
                else "no baseline output to compare with: the baseline does not fit the device"
                if unfit
                else "no output of this configuration was compared with the baseline's",
                lost=pres.lost if pres else (),
            )
        )
    return out
