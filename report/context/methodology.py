"""Methodology page: metric definitions (from `evidence.metrics`), statistics,
scoring algorithms (from `scoring`'s docstrings), the protocol as run, the
gates' thresholds, and the exact commands and configuration."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import duckdb

from evidence import metrics
from report.context.common import as_dict, as_list, loads
from report.context.performance import LONG_CATEGORY
from report.context.quality import SIMILARITY_DEFINITION
from report.queries import Selection, rows

# Scoring modules whose docstrings describe an algorithm a page figure uses;
# those not installed are skipped.
SCORING_MODULES = ("repetition", "checks", "quality", "sandbox", "gates")

# Figures the report derives itself (not in evidence.metrics).
REPORT_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("Output similarity (quality preservation)", SIMILARITY_DEFINITION),
    (
        "Implied host memory traffic (estimated)",
        "Decode tokens/s × the weight bytes each token reads from host memory: with every "
        "weight in host memory (no GPU), the non-expert weights plus the active experts' share "
        "(expert tensor bytes × experts used / experts); with --cpu-moe on a GPU host, the "
        "active experts' share only. Compared with the host copy bandwidth the collector "
        "measured at campaign start, it shows whether decoding is bound by memory bandwidth.",
    ),
    (
        "Decode rate along the generation",
        "Long tests (category 'extended generation') only: each request's tokens are cut into "
        "tenths; the rate in a tenth is (tokens in it - 1) / the time between its first and "
        "last token. The chart shows the mean over requests per tenth.",
    ),
    (
        "Completion rate",
        "Requests with status ok and finish reason stop or length, over all requests of the "
        "group (streamed and not).",
    ),
)


@dataclass(frozen=True)
class MetricDoc:
    name: str
    title: str
    unit: str
    definition: str
    view: str


@dataclass(frozen=True)
class Doc:
    title: str
    body: str  # Markdown from this repository's own docstrings


@dataclass(frozen=True)
class ProtocolTest:
    ordinal: int
    test_id: str
    category: str
    prompt: str
    max_tokens: int
    protocol_max_tokens: int
    success_criteria: str


@dataclass(frozen=True)
class GateThreshold:
    gate_id: str
    title: str
    threshold: str


@dataclass(frozen=True)
class ServerCommand:
    model: str
    config: str
    argv: tuple[str, ...] | None
    endpoint: str
    mode: str


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
    tests: tuple[ProtocolTest, ...]
    gates: tuple[GateThreshold, ...]
    command: tuple[str, ...]
    config: Any
    servers: tuple[ServerCommand, ...]


@dataclass(frozen=True)
class MethodologyContext:
    metrics: tuple[MetricDoc, ...]
    report_definitions: tuple[tuple[str, str], ...]
    statistics: tuple[Doc, ...]
    scoring: tuple[Doc, ...]
    campaigns: tuple[CampaignMethod, ...]
    long_category: str


def _doc(obj: Any) -> Doc | None:
    text = inspect.getdoc(obj)
    if not text:
        return None
    first, _, rest = text.partition("\n")
    return Doc(first.strip().rstrip("."), rest.strip())


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
    ("request_timeout_s", "Request timeout (s)"),
    ("stall_timeout_s", "Stall timeout (s)"),
    ("telemetry_hz", "Telemetry sampling rate (Hz)"),
    ("tokenize", "Token counts from the server's /tokenize"),
    ("max_restarts", "Server restarts tolerated per configuration"),
)


def _procedure(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    camp = as_dict(config.get("campaign"))
    return tuple((title, camp[key]) for key, title in _PROCEDURE_KEYS if key in camp)


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> MethodologyContext:
    """The methodology page's context."""
    campaigns = []
    for c in rows(
        con,
        "SELECT * FROM campaigns WHERE campaign_id IN (SELECT campaign_id FROM sel) "
        "ORDER BY started_utc",
    ):
        cid = c["campaign_id"]
        config = as_dict(c["config"])
        campaigns.append(
            CampaignMethod(
                name=c["name"],
                campaign_id=cid,
                profile=c["profile"],
                protocol_version=c["protocol_version"],
                repeats=int(c["repeats"]),
                temperature=float(c["temperature"]),
                seed=c["seed"],
                pause_s=float(c["pause_s"]),
                procedure=_procedure(config),
                tests=tuple(
                    ProtocolTest(**t)
                    for t in rows(
                        con,
                        "SELECT ordinal, test_id, category, prompt, max_tokens, "
                        "protocol_max_tokens, success_criteria FROM tests "
                        "WHERE campaign_id = ? ORDER BY ordinal",
                        [cid],
                    )
                ),
                gates=tuple(
                    GateThreshold(**g)
                    for g in rows(
                        con,
                        "SELECT gate_id, title, threshold FROM gates WHERE campaign_id = ? "
                        "ORDER BY TRY_CAST(regexp_extract(gate_id, '[0-9]+') AS INTEGER) "
                        "NULLS LAST, gate_id",
                        [cid],
                    )
                ),
                command=tuple(str(a) for a in as_list(c["command"])),
                config=loads(c["config"]),
                servers=tuple(
                    ServerCommand(
                        s["model"],
                        s["config_label"],
                        tuple(str(a) for a in as_list(s["argv"])) if s["argv"] else None,
                        s["endpoint"],
                        s["mode"],
                    )
                    for s in rows(
                        con,
                        "SELECT model, config_label, argv, endpoint, mode FROM sel_runs "
                        "WHERE attempt = 1 AND campaign_id = ? ORDER BY model_order, config_order",
                        [cid],
                    )
                ),
            )
        )
    stats = tuple(
        d
        for d in (_doc(metrics.summarize), _doc(metrics.ratio_of_means), _doc(metrics.t95))
        if d is not None
    )
    return MethodologyContext(
        metrics=tuple(
            MetricDoc(m.name, m.title, m.unit, m.definition, m.view)
            for m in metrics.METRICS.values()
        ),
        report_definitions=REPORT_DEFINITIONS,
        statistics=stats,
        scoring=_scoring_docs(),
        campaigns=tuple(campaigns),
        long_category=LONG_CATEGORY,
    )
