"""Instrument validation page: the collector's own accuracy, overhead and
interference (`nox -s perf`), with the host each figure was measured on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from report.queries import rows
from report.values import Figure, Missing, Quantity


@dataclass(frozen=True)
class PerfResult:
    name: str
    value: Figure
    target: str | None
    passed: bool | None
    detail: Any


@dataclass(frozen=True)
class PerfRun:
    perf_run_id: str
    measured_utc: datetime
    host_id: str
    host: str
    results: tuple[PerfResult, ...]


@dataclass(frozen=True)
class ValidationContext:
    """The instrument validation page."""

    runs: tuple[PerfRun, ...]


def build(con: duckdb.DuckDBPyConnection) -> ValidationContext:
    """All instrument validation runs in the store, newest first."""
    data = rows(
        con,
        """
        SELECT p.*, coalesce(h.cpu_model, 'host not in this store') AS cpu_model,
               h.gpu_status, h.gpus
        FROM perf_results p LEFT JOIN hosts h USING (host_id)
        ORDER BY p.measured_utc DESC, p.perf_run_id, p.name
        """,
    )
    runs: dict[str, list[dict[str, Any]]] = {}
    for d in data:
        runs.setdefault(d["perf_run_id"], []).append(d)
    out = []
    for run_id, items in runs.items():
        first = items[0]
        host = str(first["cpu_model"])
        if first["gpu_status"] and first["gpu_status"] != "ok":
            host += ", no NVIDIA GPU"
        out.append(
            PerfRun(
                perf_run_id=run_id,
                measured_utc=min(i["measured_utc"] for i in items),
                host_id=first["host_id"],
                host=host,
                results=tuple(
                    PerfResult(
                        name=i["name"],
                        value=Quantity(i["value"], i["unit"], "measured")
                        if i["value"] is not None
                        else Missing("the benchmark recorded no value"),
                        target=i["target"],
                        passed=i["passed"],
                        detail=i["detail"],
                    )
                    for i in items
                ),
            )
        )
    return ValidationContext(tuple(out))
