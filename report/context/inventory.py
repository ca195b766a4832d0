"""Hardware and software inventory: the host(s) and every version involved."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from report.context.common import Gpu, as_dict, as_list, gpus, no_gpu_reason
from report.queries import Selection, record, rows
from report.values import Figure, Missing, Quantity


@dataclass(frozen=True)
class Host:
    host_id: str
    campaigns: str
    cpu_model: str
    cpu_cores: Figure
    cpu_threads: Figure
    ram: Figure
    os: str
    kernel: str
    machine: str
    gpus: tuple[Gpu, ...]
    gpu_driver: str | None
    cuda_version: str | None
    gpu_status: str
    no_gpu: str | None


@dataclass(frozen=True)
class ServerBuild:
    model: str
    config: str
    version: str | None
    mode: str
    api: str
    # As the server's own log reports them (llama_context, system_info, the KV cache line):
    # what it ran with, not what we asked for. Empty when the log has none of them.
    settings: dict[str, str]
    settings_missing: str | None  # why there are none: no loader log, an older collector
    fit: str  # what `--fit` did: its last line, "off (-fit off)", or why unknown


def _settings_missing(summary: dict[str, Any]) -> str | None:
    if not summary:
        return "no loader log"
    if "settings" not in summary:
        return "not read: the store's collector predates it"
    return None


def _fit(summary: dict[str, Any], argv: list[Any]) -> str:
    lines = summary.get("fit_lines") or []
    if lines:
        return f"ran: {lines[-1]}"
    for flag, value in itertools.pairwise(argv):
        if flag in ("-fit", "--fit"):
            return f"{value} ({flag} {value})"
    return "not in the log" if summary else "no loader log"


@dataclass(frozen=True)
class Software:
    campaign: str
    campaign_id: str
    tool_version: str
    started_utc: datetime
    packages: tuple[tuple[str, str], ...]
    engine: tuple[tuple[str, str], ...]
    environment: tuple[tuple[str, str], ...]
    servers: tuple[ServerBuild, ...]
    bandwidth: Figure


@dataclass(frozen=True)
class InventoryContext:
    """The inventory page: hosts and software per campaign."""

    hosts: tuple[Host, ...]
    software: tuple[Software, ...]


def _count(value: Any, what: str) -> Figure:
    return Quantity(value, "", None) if value is not None else Missing(f"{what} not recorded")


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    data = as_dict(value)
    out = []
    for key in sorted(data):
        item = data[key]
        text = ", ".join(str(x) for x in item) if isinstance(item, list) else str(item)
        out.append((str(key), text))
    return tuple(out)


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> InventoryContext:
    """The inventory page's context."""
    hosts = []
    for h in rows(
        con,
        """
        SELECT h.*, string_agg(c.name, '; ' ORDER BY c.started_utc) AS campaigns
        FROM hosts h JOIN campaigns c USING (host_id)
        WHERE c.campaign_id IN (SELECT campaign_id FROM sel_campaigns)
        GROUP BY ALL ORDER BY min(c.started_utc)
        """,
    ):
        status = h["gpu_status"] or "not recorded"
        hosts.append(
            Host(
                host_id=h["host_id"],
                campaigns=h["campaigns"],
                cpu_model=h["cpu_model"] or "not recorded",
                cpu_cores=_count(h["cpu_cores"], "physical cores"),
                cpu_threads=_count(h["cpu_threads"], "logical CPUs"),
                ram=Quantity(float(h["ram_bytes"]), "bytes", "measured")
                if h["ram_bytes"] is not None
                else Missing("RAM size not recorded"),
                os=" ".join(x for x in (h["os"], h["os_release"]) if x) or "not recorded",
                kernel=h["kernel"] or "not recorded",
                machine=h["machine"] or "not recorded",
                gpus=gpus(h["gpus"], "NVML reported no memory size"),
                gpu_driver=h["gpu_driver"],
                cuda_version=h["cuda_version"],
                gpu_status=status,
                no_gpu=None if status == "ok" else no_gpu_reason(status),
            )
        )
    software = []
    for c in rows(
        con,
        """
        SELECT c.* FROM campaigns c WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)
        ORDER BY started_utc
        """,
    ):
        servers = tuple(
            record(
                ServerBuild,
                s,
                settings={
                    str(k): str(v)
                    for k, v in (as_dict(s["log_summary"]).get("settings") or {}).items()
                },
                settings_missing=_settings_missing(as_dict(s["log_summary"])),
                fit=_fit(as_dict(s["log_summary"]), as_list(s["argv"])),
            )
            for s in rows(
                con,
                "SELECT model, config_label AS config, version, mode, api, log_summary, argv "
                "FROM sel_runs WHERE attempt = 1 AND campaign_id = ? "
                "ORDER BY model_order, config_order",
                [c["campaign_id"]],
            )
        )
        bw = c["mem_bandwidth_bytes_per_s"]
        software.append(
            record(
                Software,
                c,
                campaign=c["name"],
                packages=_pairs(c["packages"]),
                engine=_pairs(c["engine"]),
                environment=_pairs(c["environment"]),
                servers=servers,
                bandwidth=Quantity(float(bw), "bytes/s", "measured", "numpy copy, best of 5")
                if bw is not None
                else Missing("host memory bandwidth was not benchmarked"),
            )
        )
    return InventoryContext(tuple(hosts), tuple(software))
