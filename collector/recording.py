"""What a campaign writes to the store, and the one writer of each of its tables:
the campaign and its host, the protocol as run, the models, each server run with
its telemetry and the model loads its log showed, and each request with its
chunks and the telemetry sampled since the request before (one transaction each).

The run loop (collector.campaign) and the server's life (collector.session) call
these; neither writes a row itself."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from collector import client as http_client
from collector.config import Config
from collector.engine import EngineBuild
from collector.inventory import (
    allowlisted_environment,
    collect_host,
    lock_inventory,
    measure_memory_bandwidth,
    package_versions,
    redact_env,
)
from collector.log_watch import SeenLoad
from collector.nvml import Nvml
from collector.plan import CampaignContext, Cell, sweep_probes, test_max_tokens
from collector.protocol import PROTOCOL, ProtocolTest
from collector.telemetry import Sample
from collector.tokenizer import TokenCount
from common.secrets import Secrets, redact_argv, redact_url
from evidence.writer import (
    Transaction,
    chunk_table,
    insert_arrow,
    insert_row,
    telemetry_table,
    to_json,
    update_row,
)

if TYPE_CHECKING:
    from collector.session import ServerRunHandle

TOOL_VERSION = "0.1.0"


def stored_config(config: Config) -> dict[str, Any]:
    """The config as the store keeps it: secret values (an `--api-key` argument, a
    server environment variable outside the allowlist) replaced."""
    data: dict[str, Any] = config.model_dump(mode="json")
    server = data["server"]
    server["env"] = redact_env(server["env"])
    if server["command"]:
        server["command"] = redact_argv(server["command"])
    for configuration in data["configurations"]:
        configuration["args"] = redact_argv(configuration["args"])
    if data["sweep"]:
        data["sweep"]["args"] = redact_argv(data["sweep"]["args"])
    return data


def campaign_secrets(config: Config, command: list[str], api_key: str | None) -> Secrets:
    """The secrets a campaign is given, never stored: in its config, its command line,
    the environment its server inherits, and the API key."""
    return Secrets.find(config.model_dump(mode="json"), command, dict(os.environ), values=[api_key])


def create_campaign(
    con: duckdb.DuckDBPyConnection,
    config: Config,
    profile: str,
    command: list[str],
    engine: EngineBuild | None,
) -> str:
    """Insert the campaign, its host, and its protocol; return the campaign id."""
    campaign_id = str(uuid.uuid4())
    nvml = Nvml()
    host = collect_host(nvml)
    nvml.close()
    bandwidth = measure_memory_bandwidth()
    packages = package_versions()
    with Transaction(con):
        exists = con.execute("SELECT 1 FROM hosts WHERE host_id = ?", [host.host_id]).fetchone()
        if not exists:
            facts = dict(host.facts)
            facts["gpus"] = to_json(facts["gpus"])
            insert_row(con, "hosts", {"host_id": host.host_id, **facts})
        origin_ns = time.perf_counter_ns()
        origin_utc = datetime.now(UTC)
        camp = config.campaign
        insert_row(
            con,
            "campaigns",
            {
                "campaign_id": campaign_id,
                "host_id": host.host_id,
                "name": camp.name,
                "release_label": camp.release,
                "profile": profile,
                "protocol_version": PROTOCOL.version,
                "status": "running",
                "started_utc": origin_utc,
                "clock_origin_ns": origin_ns,
                "clock_origin_utc": origin_utc,
                "repeats": camp.repeats,
                "temperature": camp.temperature,
                "seed": camp.seed,
                "pause_s": camp.pause_s,
                "config": to_json(stored_config(config)),
                "command": to_json(command),
                "tool_version": TOOL_VERSION,
                "packages": to_json(packages),
                "lock": to_json(lock_inventory(packages)),
                "environment": to_json(allowlisted_environment()),
                "engine": to_json(engine.identity() if engine else None),
                "mem_bandwidth_bytes_per_s": bandwidth,
            },
        )
        insert_protocol(
            con, campaign_id, lambda test: test_max_tokens(config, test), sweep_probes(config)
        )
    return campaign_id


def insert_protocol(
    con: duckdb.DuckDBPyConnection,
    campaign_id: str,
    max_tokens: Callable[[ProtocolTest], int],
    probes: tuple[ProtocolTest, ...] = (),
) -> None:
    """The protocol exactly as this campaign runs it (`tests`): every test, with the
    token budget sent (`max_tokens`: a profile may cap it) beside the protocol's (for
    a speed probe, its own budget), then the sweep's speed probes."""
    for test in (*PROTOCOL.tests, *probes):
        insert_row(
            con,
            "tests",
            {
                "campaign_id": campaign_id,
                "test_id": test.test_id,
                "ordinal": test.ordinal,
                "category": test.category,
                "prompt": test.prompt,
                "max_tokens": max_tokens(test),
                "protocol_max_tokens": test.max_tokens,
                "success_criteria": test.success_criteria,
            },
        )


def _served_at(endpoint: str | None) -> str:
    """Where an attached model lives, for `models.path`: its server, named without
    the endpoint's credentials (free text keeps a short password that a bare URL's
    structural redaction would have caught)."""
    return f"(served at {redact_url(endpoint or '')})"


def register_models(ctx: CampaignContext, inspect: Callable[[Path], dict[str, Any]]) -> None:
    """Insert (or, on resume, find) a `models` row per configured model."""
    for model in ctx.config.models:
        row = ctx.con.execute(
            "SELECT model_id FROM models WHERE campaign_id = ? AND label = ?",
            [ctx.campaign_id, model.label],
        ).fetchone()
        if row is not None:
            ctx.model_ids[model.label] = str(row[0])
            continue
        model_id = str(uuid.uuid4())
        path = ctx.model_paths.get(model.label)
        spec: dict[str, Any] = inspect(path) if path is not None else {}
        insert_row(
            ctx.con,
            "models",
            {
                "model_id": model_id,
                "campaign_id": ctx.campaign_id,
                "label": model.label,
                "path": str(path) if path else _served_at(ctx.config.server.endpoint),
                "sha256": spec.get("sha256"),
                "file_bytes": spec.get("file_bytes"),
                "architecture": spec.get("architecture"),
                "name": spec.get("name") or model.request_name,
                "parameter_count": spec.get("parameter_count"),
                "block_count": spec.get("block_count"),
                "context_length": spec.get("context_length"),
                "expert_count": spec.get("expert_count"),
                "expert_used_count": spec.get("expert_used_count"),
                "expert_shared_count": spec.get("expert_shared_count"),
                "tensor_bytes_total": spec.get("tensor_bytes_total"),
                "expert_tensor_count": spec.get("expert_tensor_count"),
                "expert_tensor_bytes": spec.get("expert_tensor_bytes"),
                "expected_vram_saved_pct": model.expected_vram_saved_pct,
                "spec": to_json(spec or None),
            },
        )
        ctx.model_ids[model.label] = model_id


def store_request(
    ctx: CampaignContext,
    run: ServerRunHandle,
    cell: Cell,
    result: http_client.RequestResult,
    tokenized: TokenCount,
    samples: list[Sample],
) -> str:
    request_id = str(uuid.uuid4())
    usage = result.usage or {}
    with Transaction(ctx.con):
        insert_row(
            ctx.con,
            "requests",
            {
                "request_id": request_id,
                "server_run_id": run.server_run_id,
                "campaign_id": ctx.campaign_id,
                "test_id": cell.test_id,
                "repeat": cell.repeat,
                "stream": cell.stream,
                "api": result.api,
                "prompt": result.params.prompt,
                "max_tokens": result.params.max_tokens,
                "temperature": result.params.temperature,
                "seed": result.params.seed,
                "started_utc": result.started_utc,
                "status": result.status,
                "http_status": result.http_status,
                "error": result.error,
                "finish_reason": result.finish_reason,
                "output_text": result.output_text,
                "sent_ns": result.sent_ns,
                "first_token_ns": result.first_token_ns,
                "done_ns": result.done_ns,
                "usage_prompt_tokens": _int(usage.get("prompt_tokens")),
                "usage_completion_tokens": _int(usage.get("completion_tokens")),
                "server_timings": to_json(result.timings),
                "tokenized_output_tokens": tokenized.tokens,
                "tokenizer": tokenized.tokenizer,
                "tokenizer_error": tokenized.error,
                "event_count": len(result.chunk_t_ns),
            },
        )
        insert_arrow(
            ctx.con,
            "chunks",
            chunk_table(request_id, result.chunk_t_ns, result.chunk_text, result.chunk_kind),
        )
        _insert_telemetry(ctx.con, run.server_run_id, samples)
        # The model loads the server's log showed during this request (and before it).
        record_request_loads(ctx.con, run, request_id, result.sent_ns)
    return request_id


def open_server_run(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
    """Insert a server run's row, as it starts (or fails to)."""
    insert_row(con, "server_runs", row)


def update_server_run(
    con: duckdb.DuckDBPyConnection, server_run_id: str, values: dict[str, Any]
) -> None:
    """Record what is learnt of a server run while it starts (its PID, its command)."""
    update_row(con, "server_runs", "server_run_id", server_run_id, values)


def close_server_run(
    con: duckdb.DuckDBPyConnection,
    server_run_id: str,
    samples: list[Sample],
    loads: list[SeenLoad],
    values: dict[str, Any],
) -> None:
    """A server run's end in one transaction: the telemetry sampled since its last
    request, the model loads seen since (in no request's name), and its final row."""
    with Transaction(con):
        _insert_telemetry(con, server_run_id, samples)
        _insert_loads(con, server_run_id, loads, None)
        update_server_run(con, server_run_id, values)


def _insert_telemetry(
    con: duckdb.DuckDBPyConnection, server_run_id: str, samples: list[Sample]
) -> None:
    insert_arrow(con, "telemetry", telemetry_table(server_run_id, samples))


def _insert_loads(
    con: duckdb.DuckDBPyConnection,
    server_run_id: str,
    loads: list[SeenLoad],
    request_id: str | None,
) -> None:
    for load in loads:
        insert_row(
            con,
            "server_loads",
            {
                "server_run_id": server_run_id,
                "seq": load.seq,
                "request_id": request_id,
                "first_line_ns": load.first_line_ns,
                "last_line_ns": load.last_line_ns,
                "log_offset": load.log_offset,
            },
        )


def record_request_loads(
    con: duckdb.DuckDBPyConnection, run: ServerRunHandle, request_id: str, sent_ns: int
) -> None:
    """Store the loads the log has shown since the request before, right after this
    request ended: in the request's name those whose first line was seen after it
    was sent (the load happened inside it), the ones before it (start-up, the
    warm-up) in no one's. Requests are served one at a time, so time alone
    attributes a load."""
    if run.watcher is None:
        return  # attached: no log to read
    loads = run.watcher.take()
    _insert_loads(con, run.server_run_id, [x for x in loads if x.first_line_ns < sent_ns], None)
    _insert_loads(
        con, run.server_run_id, [x for x in loads if x.first_line_ns >= sent_ns], request_id
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def reopen_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str) -> None:
    """A resumed campaign is `running` again (finish_campaign closes it once more)."""
    update_row(con, "campaigns", "campaign_id", campaign_id, {"status": "running"})


def finish_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str, status: str) -> None:
    update_row(
        con,
        "campaigns",
        "campaign_id",
        campaign_id,
        {"status": status, "finished_utc": datetime.now(UTC)},
    )
