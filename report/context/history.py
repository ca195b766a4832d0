"""History page: the headline metrics release by release, with a flag where a
change is larger than the confidence intervals allow.

Campaigns are grouped by `campaigns.release_label`; a campaign without one is a
group of its own, placed by its start time and shown as unlabelled. Groups are
ordered by their first campaign's start. A series is one model (by its label)
and configuration, and with several hosts one host too: a release measured on
one machine is never compared with another release on another machine.

The decision rule, stated on the page: two consecutive releases of a series
differ when their 95 % confidence intervals of the mean (Student t, as
everywhere in this report) do not overlap. It is conservative: intervals that
do not overlap mean a difference significant well below the 5 % level, while
overlapping ones can still hide a real change, which is reported as "within
the intervals", not as "no change".
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import duckdb

from common.errors import BuildError
from evidence.metrics import Metric
from evidence.statistics import summarize
from report.context.memory import MemoryContext
from report.queries import OK_STREAMED, Selection, metric, rows, stat_or_empty, stats_by
from report.values import Quantity, Source, Stat

Verdict = Literal["improvement", "regression", "within", "not judged"]


@dataclass(frozen=True)
class Release:
    """One group of campaigns: a release label, or one unlabelled campaign."""

    key: str
    label: str | None  # None: the campaign has no release label
    started_utc: datetime  # its first campaign's start
    campaigns: int
    hosts: int
    order: int


@dataclass(frozen=True)
class Change:
    """How a point compares with the series' previous release."""

    verdict: Verdict
    previous: Release  # the release this one is compared with
    higher: bool | None  # the direction of a flagged change
    reason: str


@dataclass(frozen=True)
class Point:
    release: Release
    stat: Stat
    source: Source | None  # VRAM saved only: where its figures came from
    change: Change | None  # None for the series' first release


@dataclass(frozen=True)
class Series:
    model: str
    config: str
    host: str | None  # set when the shown campaigns span several hosts
    source: Source | None
    points: tuple[Point, ...]


@dataclass(frozen=True)
class HistoryMetric:
    """One headline metric across releases."""

    name: str
    title: str
    unit: str
    higher_is_better: bool
    anchor: str  # its definition on the methodology page
    population: str
    series: tuple[Series, ...]

    @property
    def flagged(self) -> tuple[tuple[Series, Point], ...]:
        return tuple(
            (s, p)
            for s in self.series
            for p in s.points
            if p.change is not None and p.change.verdict in ("improvement", "regression")
        )


@dataclass(frozen=True)
class HistoryContext:
    """The history page: releases, and per headline metric one value per release."""

    releases: tuple[Release, ...]
    metrics: tuple[HistoryMetric, ...]
    by_host: bool

    @property
    def enough(self) -> bool:
        """History needs two releases."""
        return len(self.releases) >= 2

    @property
    def flagged(self) -> tuple[tuple[HistoryMetric, Series, Point], ...]:
        return tuple((m, s, p) for m in self.metrics for s, p in m.flagged)

    @property
    def compared(self) -> int:
        """Pairs of consecutive releases compared (a series measured in both)."""
        return sum(p.change is not None for m in self.metrics for s in m.series for p in s.points)


@dataclass(frozen=True)
class _RequestMetric:
    """A headline metric summarised over requests (`release_requests` rows matching `where`)."""

    name: str
    title: str
    unit: str
    higher_is_better: bool
    anchor: str
    population: str
    where: str
    missing: str


_STREAMED = "successful streamed requests; N requests"
_SCORED = "every scored request, streamed or not; N requests"
_NO_STREAM = "no successful streamed request in this release"
_NO_SCORE = "no score for these requests (scoring has not run)"


def _direction(m: Metric) -> bool:
    """The registry's direction of a metric the page compares across releases."""
    if m.higher_is_better is None:
        raise BuildError(
            f"the history page compares {m.name} across releases, but evidence.metrics "
            "declares no direction for it (higher_is_better)"
        )
    return m.higher_is_better


def _timing(name: str) -> _RequestMetric:
    m = metric(name)
    return _RequestMetric(
        name,
        m.title,
        m.unit,
        _direction(m),
        f"methodology.md#metric-{name}",
        _STREAMED,
        OK_STREAMED,
        _NO_STREAM,
    )


_REQUEST_METRICS: tuple[_RequestMetric, ...] = (
    _timing("decode_tps"),
    _timing("avg_tps"),
    _timing("ttft_ms"),
    # Scores (from `scoring`, not metrics of evidence.metrics): their scale and
    # direction are the scorers'.
    _RequestMetric(
        "quality",
        "Quality score (1–5)",
        "",
        True,
        "methodology.md#scoring",
        _SCORED,
        "TRUE",
        _NO_SCORE,
    ),
    _RequestMetric(
        "repetition",
        "Repetition score (0–1)",
        "",
        False,
        "methodology.md#scoring",
        _SCORED,
        "TRUE",
        _NO_SCORE,
    ),
)


def judge(previous: Stat, current: Stat, higher_is_better: bool, since: Release) -> Change:
    """The decision rule: non-overlapping 95 % confidence intervals of the mean."""
    if (
        previous.ci_low is None
        or previous.ci_high is None
        or current.ci_low is None
        or current.ci_high is None
    ):
        return Change("not judged", since, None, "a release has N < 2, so no interval to compare")
    if current.ci_low > previous.ci_high:
        higher = True
    elif current.ci_high < previous.ci_low:
        higher = False
    else:
        return Change("within", since, None, "the 95 % confidence intervals overlap")
    better = higher == higher_is_better
    return Change(
        "improvement" if better else "regression",
        since,
        higher,
        "the 95 % confidence intervals do not overlap",
    )


def _prepare(con: duckdb.DuckDBPyConnection, by_host: bool) -> None:
    # '' rather than NULL for "all hosts": group keys are joined with USING.
    host = "c.host_id" if by_host else "''"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sel_releases AS
        SELECT campaign_id, {host} AS host, release_label,
               coalesce('release ' || release_label, 'campaign ' || campaign_id) AS release_key,
               started_utc
        FROM campaigns c WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns);

        CREATE OR REPLACE TEMP TABLE release_requests AS
        SELECT sel_requests.*, r.release_key, r.host, s.quality, s.repetition
        FROM sel_requests
        JOIN sel_releases r USING (campaign_id)
        LEFT JOIN sel_scores s USING (request_id)
        WHERE (sel_requests.model_id, sel_requests.config_label) IN
            (SELECT model_id, config_label FROM sel_series WHERE main);
        """
    )


def _releases(con: duckdb.DuckDBPyConnection) -> tuple[Release, ...]:
    found = rows(
        con,
        """
        SELECT r.release_key, any_value(r.release_label) AS label,
               min(r.started_utc) AS started, count(*) AS campaigns,
               count(DISTINCT c.host_id) AS hosts
        FROM sel_releases r JOIN campaigns c USING (campaign_id)
        GROUP BY r.release_key ORDER BY started, r.release_key
        """,
    )
    return tuple(
        Release(r["release_key"], r["label"], r["started"], int(r["campaigns"]), int(r["hosts"]), i)
        for i, r in enumerate(found)
    )


def _series(
    keys: Sequence[tuple[str, str, str, Source | None]],
    values: dict[tuple[Any, ...], Stat],
    releases: tuple[Release, ...],
    higher_is_better: bool,
) -> tuple[Series, ...]:
    out = []
    for model, config, host, source in keys:
        points: list[Point] = []
        for release in releases:
            stat = values.get((model, config, host, source, release.key))
            if stat is None:
                continue  # this series was not run in this release
            previous = next((p for p in reversed(points) if p.stat.n > 0), None)
            change = (
                judge(previous.stat, stat, higher_is_better, previous.release)
                if previous is not None and stat.n > 0
                else None
            )
            points.append(Point(release, stat, source, change))
        out.append(Series(model, config, host or None, source, tuple(points)))
    return tuple(out)


def _request_metric(
    con: duckdb.DuckDBPyConnection, releases: tuple[Release, ...], spec: _RequestMetric
) -> HistoryMetric:
    groups = ["model_label", "config_label", "host", "release_key"]
    unit, missing = spec.unit, spec.missing
    table = stats_by(
        con,
        spec.name,
        groups,
        where=spec.where,
        source="release_requests",
        unit=unit,
        missing=missing,
    )
    present = rows(
        con,
        """
        SELECT model_label, config_label, host, release_key
        FROM release_requests GROUP BY ALL
        """,
    )
    values = {
        (r["model_label"], r["config_label"], r["host"], None, r["release_key"]): stat_or_empty(
            table,
            (r["model_label"], r["config_label"], r["host"], r["release_key"]),
            unit,
            missing,
        )
        for r in present
    }
    keys = [
        (r["model_label"], r["config_label"], r["host"], None)
        for r in rows(
            con,
            """
            SELECT model_label, config_label, host, min(model_order) AS mo,
                   min(config_order) AS co
            FROM release_requests GROUP BY ALL ORDER BY mo, co, host
            """,
        )
    ]
    series = _series(keys, values, releases, spec.higher_is_better)
    return HistoryMetric(
        spec.name,
        spec.title,
        unit,
        spec.higher_is_better,
        spec.anchor,
        spec.population,
        series,
    )


def _vram_metric(
    con: duckdb.DuckDBPyConnection, releases: tuple[Release, ...], memory: MemoryContext
) -> HistoryMetric:
    """VRAM saved: one figure per campaign (its headline, with its source), so N is
    the number of campaigns in the release; sources are never pooled."""
    vram = metric("vram_saved_pct")
    info = {
        r["model_id"]: r
        for r in rows(
            con,
            """
            SELECT m.model_id, m.label, m.model_order, r.host, r.release_key
            FROM sel_models m JOIN sel_releases r USING (campaign_id)
            """,
        )
    }
    main = {
        (r["model_id"], r["config_label"])
        for r in rows(con, "SELECT model_id, config_label FROM sel_series WHERE main")
    }
    grouped: dict[tuple[Any, ...], list[float]] = {}
    order: dict[tuple[str, str, str, Source | None], tuple[int, int]] = {}
    for c in memory.comparisons:
        m = info.get(c.model_id)
        if m is None or (c.model_id, c.config) not in main:
            continue
        if not isinstance(c.headline, Quantity) or c.headline.source is None:
            continue
        key = (m["label"], c.config, m["host"], c.headline.source)
        grouped.setdefault((*key, m["release_key"]), []).append(c.headline.value)
        rank = (int(m["model_order"]), 0 if c.n_cpu_moe == -1 else 1 + (c.n_cpu_moe or 0))
        order[key] = min(order.get(key, rank), rank)
    values: dict[tuple[Any, ...], Stat] = {}
    for key, found in grouped.items():
        sd = statistics.stdev(found) if len(found) > 1 else None
        summary = summarize(len(found), statistics.fmean(found), sd, min(found), max(found))
        values[key] = Stat.of(summary, vram.unit)
    keys = sorted(order, key=lambda k: (order[k], k[2] or "", k[3] or ""))
    series = _series(keys, values, releases, _direction(vram))
    return HistoryMetric(
        vram.name,
        vram.title,
        vram.unit,
        _direction(vram),
        f"methodology.md#metric-{vram.name}",
        "one figure per campaign (its headline source); N campaigns",
        series,
    )


def build(con: duckdb.DuckDBPyConnection, sel: Selection, memory: MemoryContext) -> HistoryContext:
    """The history page's context, over the shown campaigns."""
    hosts = {c.host_id for c in sel.campaigns}
    by_host = len(hosts) > 1
    _prepare(con, by_host)
    releases = _releases(con)
    metrics = [_vram_metric(con, releases, memory)]
    metrics += [_request_metric(con, releases, spec) for spec in _REQUEST_METRICS]
    return HistoryContext(releases, tuple(metrics), by_host)
