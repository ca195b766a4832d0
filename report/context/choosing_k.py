"""Choosing K: device memory against prefill and decode speed for every `--n-cpu-moe K`.

Each point is a configuration of the campaign's sweep that ran the speed probes
(collector.probes): its device memory (the loader log's buffers; measured beside
it), the server's resident memory, and per probe its prefill and decode rates as
measured (`curve_points`) and as the speed model predicts them from the two ends of
the curve (`curve_prediction`), with the error. A configuration that did not fit the
device is a point without speed, its memory estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from evidence.metrics import PROBE_CATEGORY
from evidence.statistics import summarize
from report.context.common import as_dict, as_list
from report.context.memory import MemoryContext, RunMemory
from report.queries import Selection, metric, rows
from report.values import Figure, Missing, Quantity, Stat

MIB = 1 << 20
GIB = 1 << 30
# Graphics memory sizes common on cards; a line is drawn for those inside the range
# of device memory the curve spans.
CARD_GIB = (4, 6, 8, 12, 16, 24, 32, 48, 80, 96, 141)
# A prediction holds where it is within this share of the measured mean, or inside
# the measured point's 95 % interval where that is wider (the test).
TOLERANCE = 0.15


@dataclass(frozen=True)
class Speed:
    """One probe's prefill or decode rate at one K: measured, predicted, error."""

    probe: str  # the probe's test id, e.g. prefill-1024
    prompt_tokens: float | None  # the mean prompt the server processed
    measure: str  # prefill | decode
    source: str  # server timings | TTFT | client
    measured: Stat
    predicted: Figure
    error: Figure  # measured / predicted - 1, in %
    calibration: bool
    # Within TOLERANCE of the prediction, or the prediction inside the measured
    # 95 % interval; None at a calibration point or without a prediction.
    holds: bool | None


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep."""

    model_id: str
    model: str
    config: str
    k: int  # MoE blocks with experts in CPU memory
    device: Figure  # the loader log's device buffers, else the estimate when it did not fit
    device_measured: Figure
    host_rss: Figure
    unfit: str | None
    speeds: tuple[Speed, ...]

    def speed(self, probe: str, measure: str) -> Speed | None:
        return next((s for s in self.speeds if (s.probe, s.measure) == (probe, measure)), None)


@dataclass(frozen=True)
class Probe:
    test_id: str
    prompt_tokens: float | None  # mean over the probe's requests


@dataclass(frozen=True)
class Answer:
    """The Summary's one sentence: the fastest K that loaded on the device in force."""

    model: str
    k: int
    device: Figure
    decode: Stat
    prefill: Stat
    prefill_probe: Probe
    limited: bool  # a device memory size was in force (every K shown loaded within it)
    # K that loaded but have no rate to compare (their probes failed or were starved):
    # "the fastest K measured" is over the others.
    unmeasured: tuple[int, ...] = ()


@dataclass(frozen=True)
class StarvedProbes:
    """The completed streamed probe requests, and those other processes starved of CPU
    (`evidence.metrics`: starved); `left_out` of them are not in any figure here (all of
    them, unless the build counts starved requests)."""

    completed: int
    starved: int
    left_out: int


@dataclass(frozen=True)
class ChoosingKContext:
    points: tuple[Point, ...]
    probes: tuple[Probe, ...]  # by prompt length
    device_limit: Quantity | None  # the device memory in force, where known
    cards: tuple[int, ...]  # card sizes (GiB) inside the curve's memory range
    blocks: dict[str, int]  # MoE blocks per model
    answers: tuple[Answer, ...]
    missing: str | None  # why there is no curve
    starved: StarvedProbes
    tolerance: float = TOLERANCE

    def sources(self, probe: str, measure: str) -> tuple[str, ...]:
        """Where the rates of one probe and measure came from, over every point."""
        return tuple(
            dict.fromkeys(
                s.source
                for p in self.points
                for s in p.speeds
                if (s.probe, s.measure) == (probe, measure)
            )
        )

    @property
    def held(self) -> int:
        """Intermediate points whose predictions all hold."""
        return sum(
            1
            for p in self.points
            if p.speeds
            and all(s.holds for s in p.speeds if s.holds is not None)
            and any(s.holds is not None for s in p.speeds)
        )

    @property
    def tested(self) -> int:
        """Intermediate points with at least one prediction to test."""
        return sum(1 for p in self.points if any(s.holds is not None for s in p.speeds))


def build(
    con: duckdb.DuckDBPyConnection, sel: Selection, memory: MemoryContext
) -> ChoosingKContext:
    """The Choosing K page's context."""
    facts = rows(
        con,
        """
        SELECT c.*, p.predicted_curve_rate, p.prediction_error, p.calibration_point,
               p.time_none IS NOT NULL AS calibrated
        FROM curve_points c
        JOIN sel_models m USING (campaign_id, model_id)
        LEFT JOIN curve_prediction p
            USING (campaign_id, model_id, config_label, test_id, measure)
        ORDER BY c.model_id, c.n_cpu_moe, c.prompt_tokens, c.measure DESC
        """,
    )
    blocks = {
        str(r["model_id"]): int(r["n"])
        for r in rows(
            con,
            "SELECT model_id, json_extract(spec, '$.moe_layer_count')::INTEGER AS n "
            "FROM sel_models WHERE n IS NOT NULL",
        )
    }
    probes = tuple(
        Probe(str(r["test_id"]), r["tokens"])
        for r in rows(
            con,
            # Shortest prompt first: by the prompt the server counted, else by the
            # probes' order in `tests` (which is by nominal length).
            "SELECT c.test_id, avg(c.prompt_tokens) AS tokens FROM curve_points c "
            "JOIN sel_models USING (campaign_id, model_id) "
            "JOIN tests t USING (campaign_id, test_id) GROUP BY c.test_id "
            "ORDER BY min(c.prompt_tokens) NULLS LAST, min(t.ordinal)",
        )
    )
    by_config: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in facts:
        by_config.setdefault((str(f["model_id"]), str(f["config_label"])), []).append(f)
    points = []
    for run in memory.runs:
        found = by_config.get((run.model_id, run.config))
        if found is None and not _swept(run):
            continue
        points.append(_point(run, found or [], blocks.get(run.model_id)))
    points.sort(key=lambda p: (p.model, p.k))
    limit = _device_limit(con)
    devices = [p.device.value for p in points if isinstance(p.device, Quantity)]
    cards = tuple(g for g in CARD_GIB if devices and min(devices) <= g * GIB <= max(devices) * 1.25)
    missing = None
    if not any(p.speeds for p in points):
        missing = (
            "no speed probe in this campaign; a sweep section with prompt_tokens runs them, "
            "as the default campaign does"
        )
    return ChoosingKContext(
        tuple(points),
        probes,
        limit,
        cards,
        blocks,
        _answers(points, probes, limit is not None),
        missing,
        _starved(con),
    )


def _starved(con: duckdb.DuckDBPyConnection) -> StarvedProbes:
    """The selection's probe requests that a busy host starved: the protocol pages'
    host-load section reads `sel_requests`, which holds no probe, so this page says it."""
    (counts,) = rows(
        con,
        f"""SELECT count(*) AS completed,
                   count(*) FILTER (WHERE r.starved) AS starved,
                   count(*) FILTER (WHERE NOT r.in_headline) AS left_out
            FROM request_metrics r
            JOIN sel_models USING (campaign_id, model_id)
            JOIN tests t USING (campaign_id, test_id)
            WHERE t.category = '{PROBE_CATEGORY}' AND r.stream AND r.completed""",
    )
    return StarvedProbes(
        int(counts["completed"] or 0), int(counts["starved"] or 0), int(counts["left_out"] or 0)
    )


def _swept(run: RunMemory) -> bool:
    return run.config.startswith("n-cpu-moe-")


def _point(run: RunMemory, facts: list[dict[str, Any]], blocks: int | None) -> Point:
    k = run.n_cpu_moe or 0
    if k < 0 and blocks is not None:
        k = blocks
    device: Figure = run.gpu_log if isinstance(run.gpu_log, Quantity) else run.gpu_estimated
    if run.unfit:
        device = run.gpu_estimated
    return Point(
        run.model_id,
        run.model,
        run.config,
        k,
        device,
        run.gpu_idle_measured,
        run.rss_idle,
        run.unfit,
        tuple(_speed(f) for f in facts),
    )


def _speed(f: dict[str, Any]) -> Speed:
    unit = metric("curve_rate").unit
    summary = summarize(int(f["n"]), f["curve_rate"], f["rate_sd"], f["rate_min"], f["rate_max"])
    measured = Stat.of(summary, unit)
    calibration = bool(f["calibration_point"])
    note = "calibration point" if calibration else "predicted from the ends"
    predicted: Figure
    error: Figure
    if f["predicted_curve_rate"] is None:
        why = (
            "the speed model needs this probe at K = 0 and at K = all"
            if not f["calibrated"]
            else "no expert-byte split for this K in the model's inspection"
        )
        predicted = error = Missing(why)
    else:
        predicted = Quantity(float(f["predicted_curve_rate"]), unit, "estimated", note)
        error = Quantity(100.0 * float(f["prediction_error"]), "%", "derived", note)
    return Speed(
        str(f["test_id"]),
        f["prompt_tokens"],
        str(f["measure"]),
        str(f["source"]),
        measured,
        predicted,
        error,
        calibration,
        _holds(measured, predicted, calibration),
    )


def _holds(measured: Stat, predicted: Figure, calibration: bool) -> bool | None:
    if calibration or not isinstance(predicted, Quantity) or measured.mean is None:
        return None
    if abs(measured.mean / predicted.value - 1) <= TOLERANCE:
        return True
    low, high = measured.ci_low, measured.ci_high
    return low is not None and high is not None and low <= predicted.value <= high


def _device_limit(con: duckdb.DuckDBPyConnection) -> Quantity | None:
    """The device memory in force: the RPC device's held size, else a GPU's total."""
    sizes: set[int] = set()
    totals: set[int] = set()
    for r in rows(con, "SELECT DISTINCT device, gpu_before FROM sel_runs WHERE mode = 'launch'"):
        device = as_dict(r["device"])
        if device.get("memory_bytes"):
            sizes.add(int(device["memory_bytes"]))
        for gpu in as_list(as_dict(r["gpu_before"]).get("devices")):
            if isinstance(gpu, dict) and gpu.get("memory_total_bytes"):
                totals.add(int(gpu["memory_total_bytes"]))
    if len(sizes) == 1:
        return Quantity(float(sizes.pop()), "bytes", "measured", "the RPC device's held size")
    if not sizes and len(totals) == 1:
        return Quantity(float(totals.pop()), "bytes", "measured", "the GPU's total memory (NVML)")
    return None


def _answers(points: list[Point], probes: tuple[Probe, ...], limited: bool) -> tuple[Answer, ...]:
    """Per model, the fastest-decoding K that loaded: decode after the shortest probe
    prompt, prefill at the longest."""
    if not probes:
        return ()
    short, long = probes[0], probes[-1]
    answers = []
    for model in dict.fromkeys(p.model for p in points):
        loaded = [
            (p, d, f)
            for p in points
            if p.model == model and not p.unfit
            for d, f in [(p.speed(short.test_id, "decode"), p.speed(long.test_id, "prefill"))]
            if d is not None and f is not None and d.measured.mean is not None
        ]
        if not loaded:
            continue
        p, d, f = max(loaded, key=lambda x: (x[1].measured.mean or 0.0, -x[0].k))
        measured = {q.k for q, _, _ in loaded}
        unmeasured = tuple(
            q.k for q in points if q.model == model and not q.unfit and q.k not in measured
        )
        answers.append(
            Answer(model, p.k, p.device, d.measured, f.measured, long, limited, unmeasured)
        )
    return tuple(answers)
