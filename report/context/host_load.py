"""Requests disturbed by the host: the ones other processes starved of CPU
(`evidence.metrics`: other_cpu_cores, starved, in_headline, starved_rate), how
many the headline figures leave out, and the campaigns that had many of them.

Shown on the first screen (the count beside the headline, a busy campaign in
the verdict) and listed request by request on the performance page.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from common.thresholds import DEFAULT_THRESHOLDS
from evidence.metrics import group_sql
from report.queries import metric, record, rows
from report.values import Figure, Missing, Quantity
from scoring.gates import campaign_thresholds


@dataclass(frozen=True)
class StarvedRequest:
    """One request during which other processes used more than the threshold."""

    model: str
    config: str
    test_id: str
    repeat: int
    stream: bool
    request_id: str
    other_cores: Quantity
    e2e: Figure
    avg_tps: Figure
    excluded: bool  # left out of the headline figures


@dataclass(frozen=True)
class BusyCampaign:
    """A campaign with more starved streamed requests than `max_starved_share`."""

    name: str
    starved: int
    streamed: int
    share: Quantity  # starved_rate, %
    limit: Quantity  # max_starved_share, %


@dataclass(frozen=True)
class HostLoadContext:
    thresholds: tuple[float, ...]  # max_other_cpu_cores of the shown campaigns (cores)
    starved: int  # requests flagged starved
    excluded: int  # completed requests left out of the headline figures
    unmeasured: int  # requests whose host load was not measured
    requests: int
    flagged: tuple[StarvedRequest, ...]
    busy: tuple[BusyCampaign, ...]

    @property
    def included(self) -> bool:
        """The build counts starved requests (`--include-starved`)."""
        return self.starved > 0 and self.excluded == 0


def _figure(value: float | None, unit: str, reason: str) -> Figure:
    return Missing(reason) if value is None else Quantity(float(value), unit, "measured")


def build(con: duckdb.DuckDBPyConnection) -> HostLoadContext:
    """The host-load facts of the selection (`report.queries.prepare` ran)."""
    counts = rows(
        con,
        """SELECT count(*) FILTER (WHERE starved) AS starved,
                  count(*) FILTER (WHERE completed AND NOT in_headline) AS excluded,
                  count(*) FILTER (WHERE starved IS NULL) AS unmeasured,
                  count(*) AS requests
           FROM sel_requests""",
    )[0]
    flagged = tuple(
        record(
            StarvedRequest,
            r,
            other_cores=Quantity(
                float(r["other_cpu_cores"]), metric("other_cpu_cores").unit, "measured"
            ),
            e2e=_figure(r["e2e_s"], metric("e2e_s").unit, "the request has no end time"),
            avg_tps=_figure(r["avg_tps"], metric("avg_tps").unit, "no token count or no end time"),
            excluded=bool(r["completed"] and not r["in_headline"]),
        )
        for r in rows(
            con,
            """SELECT model, config_label AS config, test_id, repeat, stream, request_id,
                      other_cpu_cores, e2e_s, avg_tps, completed, in_headline
               FROM sel_requests WHERE starved
               ORDER BY model_order, config_order, test_order, repeat, stream DESC""",
        )
    )
    busy = []
    thresholds = set()
    for c in rows(
        con,
        f"""SELECT r.campaign_id, any_value(c.name) AS name,
                   {group_sql("starved_rate")} AS pct,
                   count(*) FILTER (WHERE r.stream AND r.starved) AS starved,
                   count(*) FILTER (WHERE r.stream) AS streamed,
                   min(c.started_utc) AS started
            FROM sel_requests r JOIN campaigns c USING (campaign_id)
            GROUP BY r.campaign_id ORDER BY started, r.campaign_id""",
    ):
        limits = campaign_thresholds(con, c["campaign_id"])
        thresholds.add(limits["max_other_cpu_cores"])
        limit_pct = 100.0 * limits["max_starved_share"]
        if c["pct"] is not None and c["pct"] > limit_pct:
            busy.append(
                record(
                    BusyCampaign,
                    c,
                    share=Quantity(float(c["pct"]), metric("starved_rate").unit, "measured"),
                    limit=Quantity(limit_pct, "%"),
                )
            )
    return HostLoadContext(
        thresholds=tuple(sorted(thresholds)) or (DEFAULT_THRESHOLDS["max_other_cpu_cores"],),
        starved=int(counts["starved"] or 0),
        excluded=int(counts["excluded"] or 0),
        unmeasured=int(counts["unmeasured"] or 0),
        requests=int(counts["requests"] or 0),
        flagged=flagged,
        busy=tuple(busy),
    )
