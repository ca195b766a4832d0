"""Servers that load the model for every request (Shimmy 1.7.0): per configuration,
whether its server did (`reloads_per_request`), how long the load inside a request
took, and the time to first token once it was done. Shown on the Performance page
(TTFT apart from the load) and the Memory page (memory per request, not after load)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from report.queries import metric, rows, stat_or_empty, stats_by
from report.values import Figure, Missing, Quantity, Stat

NO_LOG = "per-request reload not verifiable: no server log (the server was attached, not launched)"


@dataclass(frozen=True)
class ReloadRow:
    """One server configuration (its first start) and the model loads inside its requests."""

    server_run_id: str
    model: str
    config: str
    verdict: str  # "reloads" | "keeps" | "not verifiable"
    with_load: int
    recorded: int
    load_median: Figure  # `model_load_ms_median`
    load: Stat  # `model_load_ms` over successful streamed requests
    ttft: Stat
    ttft_after_load: Stat
    # Memory per request: the highest sample during each request (the model is
    # resident only then), minus the device's figure before launch.
    device_peak: Stat
    rss_peak: Stat

    @property
    def reloads(self) -> bool:
        return self.verdict == "reloads"


def build(con: duckdb.DuckDBPyConnection) -> tuple[ReloadRow, ...]:
    """Every configuration's verdict, in page order."""
    runs = rows(
        con,
        """
        SELECT r.server_run_id, r.model, r.model_id, r.config_label, l.reloads_per_request,
               l.requests_with_load, l.model_load_ms_median,
               (SELECT count(*) FROM requests q WHERE q.server_run_id = r.server_run_id)
                   AS recorded
        FROM sel_runs r JOIN server_run_loads l USING (server_run_id)
        -- A server that never became ready (it did not fit the device, it failed to
        -- start) served nothing whose loads could be told.
        WHERE r.attempt = 1 AND r.status NOT IN ('does_not_fit', 'failed_start')
        ORDER BY r.model_order, r.config_order
        """,
    )
    groups = ["model_id", "config_label"]
    names = (
        "model_load_ms",
        "ttft_ms",
        "ttft_after_load_ms",
        "request_device_peak_delta_bytes",
        "request_rss_peak_bytes",
    )
    stats = {name: stats_by(con, name, groups) for name in names}
    out = []
    for r in runs:
        key = (r["model_id"], r["config_label"])
        flag = r["reloads_per_request"]
        verdict = "not verifiable" if flag is None else "reloads" if flag else "keeps"
        median = r["model_load_ms_median"]

        def stat(name: str, key: tuple[str, str] = key) -> Stat:
            # The population is the headline's: a request other processes starved is
            # left out, so "none" may mean "all starved", which the reason must not hide.
            return stat_or_empty(
                stats[name],
                key,
                metric(name).unit,
                "no counted request had a load (starved ones are left out)",
            )

        out.append(
            ReloadRow(
                server_run_id=r["server_run_id"],
                model=r["model"],
                config=r["config_label"],
                verdict=verdict,
                with_load=int(r["requests_with_load"] or 0),
                recorded=int(r["recorded"] or 0),
                load_median=Quantity(
                    float(median),
                    metric("model_load_ms_median").unit,
                    "measured",
                    "from the server's log",
                )
                if median is not None
                else Missing(NO_LOG if flag is None else "no finished load inside a request"),
                load=stat("model_load_ms"),
                ttft=stat("ttft_ms"),
                ttft_after_load=stat("ttft_after_load_ms"),
                device_peak=stat("request_device_peak_delta_bytes"),
                rss_peak=stat("request_rss_peak_bytes"),
            )
        )
    return tuple(out)
