"""Hosts page: the machines behind the shown campaigns, side by side.

A host is `hosts.host_id`, a hash of stable hardware facts, so campaigns from
one machine group together however many stores they came through. With
several hosts the table keeps only the facts that differ, so the reader sees
at a glance what separates the machines (the rest is listed by name); with one
host it shows all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from report.context.common import Gpu, as_dict, as_list, gpus
from report.queries import Campaign, Selection, rows
from report.values import Figure, Missing, Quantity

# One host's value of one fact: text, a figure, or its GPUs (an empty tuple: none).
Cell = str | Quantity | Missing | tuple[Gpu, ...]


@dataclass(frozen=True)
class HostFact:
    """One row of the side-by-side table: a fact and its value on each host."""

    name: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class HostColumn:
    host_id: str
    campaigns: tuple[Campaign, ...]  # the shown campaigns run on this host, oldest first


@dataclass(frozen=True)
class HostsContext:
    """The hosts page: one column per host, the facts that tell them apart."""

    hosts: tuple[HostColumn, ...]
    facts: tuple[HostFact, ...]  # with several hosts, only those that differ
    same: tuple[str, ...]  # facts with one value on every host

    @property
    def multiple(self) -> bool:
        return len(self.hosts) > 1


def _text(value: Any, missing: str = "not recorded") -> str:
    return str(value) if value not in (None, "") else missing


def _joined(values: list[Any], missing: str) -> str:
    distinct = sorted({str(v).strip() for v in values if v not in (None, "")})
    return "; ".join(distinct) if distinct else missing


def _engine_field(campaigns: list[dict[str, Any]], *keys: str) -> str:
    """A field of the embedded engine's build identity, over the host's campaigns."""
    engines = [as_dict(c["engine"]) for c in campaigns]
    if not any(engines):
        return "not the embedded engine"
    found = [next((e[k] for k in keys if e.get(k) is not None), None) for e in engines]
    return _joined(found, "not recorded")


# (fact, raw value used to compare hosts, the cell shown). Raw values are
# compared, not the cells, so two figures that print alike still count as equal
# only when they are.
_Fact = tuple[str, Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], Cell]]


def _figure(value: Any, unit: str, what: str) -> Figure:
    if value is None:
        return Missing(f"{what} not recorded")
    return Quantity(float(value), unit, "measured")


def _count(value: Any, what: str) -> Figure:
    # Kept an int, so it prints as a count (16, not 16.0).
    return Quantity(int(value), "", None) if value is not None else Missing(f"{what} not recorded")


def _gpus(h: dict[str, Any]) -> tuple[Gpu, ...]:
    return gpus(h["gpus"], "GPU memory size not recorded")


def _gpu_key(h: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (str(g.get("name")), g.get("memory_bytes"))
        for g in as_list(h["gpus"])
        if isinstance(g, dict)
    )


def _column(name: str, column: str, cell: Callable[[Any], Cell] = str) -> _Fact:
    """A fact that is one column of the host's row: its value compared, `cell` of it shown."""
    return (name, lambda h: h[column], lambda h: cell(h[column]))


FACTS: tuple[_Fact, ...] = (
    _column("CPU", "cpu_model", _text),
    _column("Physical cores", "cpu_cores", lambda v: _count(v, "physical cores")),
    _column("Logical CPUs", "cpu_threads", lambda v: _count(v, "logical CPUs")),
    _column("Memory", "ram_bytes", lambda v: _figure(v, "bytes", "RAM size")),
    _column("Operating system", "os_text"),
    _column("Kernel", "kernel", _text),
    _column("Architecture", "machine", _text),
    ("GPUs", _gpu_key, _gpus),
    _column("NVIDIA driver", "gpu_driver", lambda v: _text(v, "not reported")),
    _column("CUDA (driver API)", "cuda_version", lambda v: _text(v, "not reported")),
    _column("GPU status", "gpu_status", _text),
    # Set by `build` from the host's campaigns and server runs, already as text.
    _column("Engine build", "engine_build"),
    _column("Engine compiler", "engine_compiler"),
    _column("Server version", "server_version"),
    _column("Release labels", "releases"),
)


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> HostsContext:
    """The hosts page's context, over the hosts of the shown campaigns."""
    hosts = rows(
        con,
        """
        SELECT h.* FROM hosts h
        JOIN (SELECT host_id, min(started_utc) AS first FROM campaigns
              WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns) GROUP BY host_id) f
            USING (host_id)
        ORDER BY f.first, h.host_id
        """,
    )
    campaigns = rows(
        con,
        "SELECT * FROM campaigns WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns) "
        "ORDER BY started_utc, campaign_id",
    )
    versions = rows(
        con,
        "SELECT c.host_id, r.version FROM sel_runs r JOIN campaigns c USING (campaign_id) "
        "WHERE r.attempt = 1",
    )
    shown = {c.campaign_id: c for c in sel.campaigns}
    columns = []
    for h in hosts:
        mine = [c for c in campaigns if c["host_id"] == h["host_id"]]
        h["os_text"] = " ".join(x for x in (h["os"], h["os_release"]) if x) or "not recorded"
        h["engine_build"] = _engine_field(mine, "build", "llama_build")
        h["engine_compiler"] = _engine_field(mine, "compiler")
        h["server_version"] = _joined(
            [
                (v["version"] or "").splitlines()[0] if v["version"] else None
                for v in versions
                if v["host_id"] == h["host_id"]
            ],
            "not recorded (attached server)",
        )
        h["releases"] = _joined([c["release_label"] for c in mine], "none")
        columns.append(HostColumn(h["host_id"], tuple(shown[c["campaign_id"]] for c in mine)))
    facts: list[HostFact] = []
    same: list[str] = []
    for name, raw, cell in FACTS:
        if len(hosts) > 1 and len({repr(raw(h)) for h in hosts}) == 1:
            same.append(name)
            continue
        facts.append(HostFact(name, tuple(cell(h) for h in hosts)))
    return HostsContext(tuple(columns), tuple(facts), tuple(same))
