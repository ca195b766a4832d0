"""Methodology page: metric definitions (from `evidence.metrics`), statistics,
scoring algorithms (from `scoring`'s docstrings), the protocol as run, the
gates' thresholds, and the exact commands and configuration."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import duckdb

from common.thresholds import DEFAULT_THRESHOLDS
from evidence import metrics, statistics
from report.context.common import Gate, as_dict, as_list, gate_rank, loads
from report.machine_paths import user_command
from report.queries import Selection, record, rows

# Scoring modules whose docstrings describe an algorithm a page figure uses;
# those not installed are skipped.
SCORING_MODULES = (
    "quality",
    "repetition",
    "checks",
    "sandbox",
    "similarity",
    "placement",
    "gates",
)


@dataclass(frozen=True)
class MetricDoc:
    """One metric's entry on the page, from the registry (`evidence.metrics`)."""

    name: str
    title: str
    unit: str
    definition: str
    view: str  # the view that has it as a column, or whose rows it aggregates
    aggregate: bool  # computed by the report per group of the view's rows


def metric_docs() -> tuple[MetricDoc, ...]:
    """Every metric of the registry, in its order, as the page describes it."""
    return tuple(
        MetricDoc(m.name, m.title, m.unit, m.definition, m.source_view, m.aggregate)
        for m in metrics.METRICS.values()
    )


@dataclass(frozen=True)
class Doc:
    title: str
    body: str  # Markdown from this repository's own docstrings


@dataclass(frozen=True)
class TestAsRun:
    ordinal: int
    test_id: str
    category: str
    prompt: str
    max_tokens: int
    protocol_max_tokens: int
    success_criteria: str


@dataclass(frozen=True)
class ServerCommand:
    model: str
    config: str
    argv: tuple[str, ...] | None
    endpoint: str
    mode: str


@dataclass(frozen=True)
class DeviceMethod:
    """The offload device of a campaign's server runs, as the store recorded it."""

    kind: str  # rpc
    launched: bool  # fresh rpc-servers on this host, one set per server run
    endpoints: int  # rpc-servers per server run
    device_threads: tuple[int, ...]  # -t of the rpc-servers
    server_threads: tuple[str, ...]  # -t of the server, as its command line gave it
    cores: int | None  # logical cores of the host


@dataclass(frozen=True)
class CampaignMethod:
    name: str
    campaign_id: str
    profile: str
    protocol_version: str
    repeats: int
    temperature: float
    seed: int | None
    pause_s: float
    procedure: tuple[tuple[str, Any], ...]  # (title, the config's value)
    tests: tuple[TestAsRun, ...]
    gates: tuple[Gate, ...]  # as stored: the page shows their thresholds
    command: tuple[str, ...]
    config: Any
    servers: tuple[ServerCommand, ...]
    thresholds: tuple[tuple[str, Any, bool], ...]  # (name, value, set by the config)
    device: DeviceMethod | None


@dataclass(frozen=True)
class MethodologyContext:
    """The methodology page: definitions, statistics, scoring, procedure."""

    metrics: tuple[MetricDoc, ...]  # every metric of the registry, in its order
    statistics: tuple[Doc, ...]
    scoring: tuple[Doc, ...]
    campaigns: tuple[CampaignMethod, ...]
    long_category: str


def _doc(obj: Any) -> Doc | None:
    """A module's docstring: its first paragraph as the title, the rest as the body."""
    text = inspect.getdoc(obj)
    if not text:
        return None
    first, _, rest = text.partition("\n\n")
    return Doc(" ".join(first.split()).rstrip("."), rest.strip())


def _scoring_docs() -> tuple[Doc, ...]:
    docs = []
    for name in SCORING_MODULES:
        try:
            module = importlib.import_module(f"scoring.{name}")
        except ImportError:
            continue
        doc = _doc(module)
        if doc is not None:
            docs.append(doc)
    return tuple(docs)


_PROCEDURE_KEYS = (
    ("warmup", "Unrecorded warm-up request after each server start"),
    ("non_streaming", "One non-streamed run of each test per configuration"),
    ("max_tokens_cap", "Token budget cap (quick profile)"),
    ("min_tokens_per_s", "Slowest rate a request's deadline allows (tokens/s)"),
    ("request_timeout_s", "Request deadline cap (s; none: from the token budget)"),
    ("stall_timeout_s", "Stall timeout (s; streamed requests)"),
    ("telemetry_hz", "Telemetry sampling rate (Hz)"),
    ("tokenize", "Token counts from the server's /tokenize"),
    ("max_restarts", "Server restarts tolerated per configuration"),
)


def _procedure(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    camp = as_dict(config.get("campaign"))
    return tuple((title, camp[key]) for key, title in _PROCEDURE_KEYS if key in camp)


def _thresholds(config: dict[str, Any]) -> tuple[tuple[str, Any, bool], ...]:
    """The gate thresholds applied: scoring's defaults, overridden by the config."""

    overrides = as_dict(config.get("gates"))
    names = list(DEFAULT_THRESHOLDS) + [k for k in overrides if k not in DEFAULT_THRESHOLDS]
    return tuple(
        (name, overrides.get(name, DEFAULT_THRESHOLDS.get(name)), name in overrides)
        for name in names
    )


def _threads(argv: list[Any]) -> str | None:
    for flag in ("-t", "--threads"):
        if flag in argv[:-1]:
            return str(argv[argv.index(flag) + 1])
    return None


def _device(con: duckdb.DuckDBPyConnection, campaign_id: str) -> DeviceMethod | None:
    runs = rows(
        con,
        "SELECT r.device, r.argv, h.cpu_threads FROM sel_runs r "
        "JOIN campaigns c USING (campaign_id) JOIN hosts h USING (host_id) "
        "WHERE r.campaign_id = ? AND r.device IS NOT NULL",
        [campaign_id],
    )
    if not runs:
        return None
    servers = [
        s
        for r in runs
        for s in as_list(as_dict(r["device"]).get("rpc_servers"))
        if isinstance(s, dict)
    ]
    per_run = max(len(as_list(as_dict(r["device"]).get("rpc_servers"))) for r in runs)
    return DeviceMethod(
        kind=str(as_dict(runs[0]["device"]).get("kind", "rpc")),
        launched=all(bool(s.get("launched")) for s in servers),
        endpoints=per_run,
        device_threads=tuple(sorted({int(s["threads"]) for s in servers if s.get("threads")})),
        server_threads=tuple(
            sorted({t for r in runs if (t := _threads(as_list(r["argv"]))) is not None})
        ),
        cores=runs[0]["cpu_threads"],
    )


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> MethodologyContext:
    """The methodology page's context."""
    campaigns = []
    for c in rows(
        con,
        "SELECT * FROM campaigns WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns) "
        "ORDER BY started_utc",
    ):
        cid = c["campaign_id"]
        config = as_dict(c["config"])
        campaigns.append(
            record(
                CampaignMethod,
                c,
                procedure=_procedure(config),
                tests=tuple(
                    TestAsRun(**t)
                    for t in rows(
                        con,
                        "SELECT ordinal, test_id, category, prompt, max_tokens, "
                        "protocol_max_tokens, success_criteria FROM tests "
                        "WHERE campaign_id = ? ORDER BY ordinal",
                        [cid],
                    )
                ),
                gates=tuple(
                    sorted(
                        (
                            record(Gate, g, campaign=c["name"])
                            for g in rows(con, "SELECT * FROM gates WHERE campaign_id = ?", [cid])
                        ),
                        key=lambda g: gate_rank(g.gate_id),
                    )
                ),
                thresholds=_thresholds(config),
                device=_device(con, cid),
                command=tuple(user_command(as_list(c["command"]))),
                config=loads(c["config"]),
                servers=tuple(
                    record(
                        ServerCommand,
                        s,
                        argv=tuple(str(a) for a in as_list(s["argv"])) if s["argv"] else None,
                    )
                    for s in rows(
                        con,
                        "SELECT model, config_label AS config, argv, endpoint, mode FROM sel_runs "
                        "WHERE attempt = 1 AND campaign_id = ? ORDER BY model_order, config_order",
                        [cid],
                    )
                ),
            )
        )
    stats = tuple(
        Doc(f"{fn.__name__}", " ".join((inspect.getdoc(fn) or "").split()))
        for fn in (statistics.summarize, statistics.ratio_of_means, statistics.t95)
        if inspect.getdoc(fn)
    )
    return MethodologyContext(
        metrics=metric_docs(),
        statistics=stats,
        scoring=_scoring_docs(),
        campaigns=tuple(campaigns),
        long_category=metrics.LONG_CATEGORY,
    )
