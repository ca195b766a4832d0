"""Running a campaign: the protocol's cells against each server configuration.

A cell is (model, configuration, test, repeat, stream); each becomes one row in
`requests`. Per configuration: a clean server start, one unrecorded warm-up
request, the tests in protocol order for each repeat (pause between tests),
then one non-streamed run of each test. Everything is written as it happens,
one transaction per request, so `--resume` can pick up exactly where an
interrupted campaign stopped.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx

from collector import client as http_client
from collector.apis import GenerationParams
from collector.config import Config, Configuration, ModelEntry
from collector.engine import EngineBuild
from collector.inventory import (
    allowlisted_environment,
    collect_host,
    measure_memory_bandwidth,
    package_versions,
    redact_argv,
    redact_env,
)
from collector.nvml import Nvml
from collector.progress import CampaignProgress
from collector.protocol import PROTOCOL, ProtocolTest
from collector.server import (
    LaunchSpec,
    RunningServer,
    check_endpoint,
    free_port,
    launch,
    server_version,
)
from collector.telemetry import Sample, TelemetrySampler
from evidence.errors import EngineError, ServerError, StoreError
from evidence.writer import (
    Transaction,
    chunk_table,
    insert_arrow,
    insert_row,
    telemetry_table,
    to_json,
    update_row,
)

TOOL_VERSION = "0.1.0"


@dataclass(frozen=True)
class Cell:
    model: str
    config: str
    test_id: str
    repeat: int
    stream: bool


@dataclass(frozen=True)
class ServerPlan:
    """One server configuration of one model, and the cells it serves."""

    model: ModelEntry
    configuration: Configuration
    cells: tuple[Cell, ...]
    tests: tuple[ProtocolTest, ...]


@dataclass
class CampaignContext:
    con: duckdb.DuckDBPyConnection
    campaign_id: str
    config: Config
    progress: CampaignProgress
    model_ids: dict[str, str] = field(default_factory=dict)
    model_paths: dict[str, Path] = field(default_factory=dict)
    engine: EngineBuild | None = None
    data_dir: Path = Path("data")
    api_key: str | None = None
    clock: Callable[[], int] = time.perf_counter_ns


def _test_max_tokens(config: Config, test: ProtocolTest) -> int:
    cap = config.campaign.max_tokens_cap
    return min(test.max_tokens, cap) if cap else test.max_tokens


def server_plans(config: Config) -> list[ServerPlan]:
    """Every server configuration to start, in order, with its cells."""
    plans: list[ServerPlan] = []
    camp = config.campaign
    main_tests = PROTOCOL.select(camp.tests)
    configurations: list[tuple[Configuration, tuple[ProtocolTest, ...], int, bool]] = [
        (c, main_tests, camp.repeats, camp.non_streaming) for c in config.configurations
    ]
    if config.sweep is not None:
        sweep_tests = PROTOCOL.select(config.sweep.tests) if config.sweep.tests else main_tests
        for k in config.sweep.n_cpu_moe:
            args = [a.replace("{k}", str(k)) for a in config.sweep.args] if k > 0 else []
            configurations.append(
                (
                    Configuration(label=f"n-cpu-moe-{k}", args=args, n_cpu_moe=k),
                    sweep_tests,
                    config.sweep.repeats,
                    False,
                )
            )
    for model in config.models:
        for configuration, tests, repeats, non_streaming in configurations:
            cells = [
                Cell(model.label, configuration.label, t.test_id, r, True)
                for r in range(1, repeats + 1)
                for t in tests
            ]
            if non_streaming:
                cells += [
                    Cell(model.label, configuration.label, t.test_id, 1, False) for t in tests
                ]
            plans.append(ServerPlan(model, configuration, tuple(cells), tests))
    return plans


def done_cells(con: duckdb.DuckDBPyConnection, campaign_id: str) -> set[Cell]:
    """Cells of `campaign_id` that already have a stored request (any status)."""
    rows = con.execute(
        """
        SELECT m.label, s.config_label, r.test_id, r.repeat, r.stream
        FROM requests r
        JOIN server_runs s USING (server_run_id)
        JOIN models m ON m.model_id = s.model_id
        WHERE r.campaign_id = ?
        """,
        [campaign_id],
    ).fetchall()
    return {Cell(*row) for row in rows}


def find_resumable(con: duckdb.DuckDBPyConnection, campaign_id: str | None) -> str:
    """The campaign to resume: the given id, else the latest unfinished one."""
    if campaign_id:
        row = con.execute(
            "SELECT campaign_id, status FROM campaigns WHERE campaign_id = ?", [campaign_id]
        ).fetchone()
        if row is None:
            raise StoreError(
                f"no campaign {campaign_id} in this store; list them with "
                f"`python -m collector campaigns`"
            )
        return str(row[0])
    row = con.execute(
        "SELECT campaign_id FROM campaigns WHERE status <> 'complete' "
        "ORDER BY started_utc DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise StoreError(
            "no unfinished campaign to resume in this store; start a new one without --resume"
        )
    return str(row[0])


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
                "packages": to_json(package_versions()),
                "environment": to_json(allowlisted_environment()),
                "engine": to_json(engine.identity() if engine else None),
                "mem_bandwidth_bytes_per_s": bandwidth,
            },
        )
        for test in PROTOCOL.tests:
            insert_row(
                con,
                "tests",
                {
                    "campaign_id": campaign_id,
                    "test_id": test.test_id,
                    "ordinal": test.ordinal,
                    "category": test.category,
                    "prompt": test.prompt,
                    "max_tokens": _test_max_tokens(config, test),
                    "protocol_max_tokens": test.max_tokens,
                    "success_criteria": test.success_criteria,
                },
            )
    return campaign_id


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
                "path": str(path) if path else f"(served at {ctx.config.server.endpoint})",
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


def _fill(template: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for part in template:
        for key, value in values.items():
            part = part.replace("{" + key + "}", value)
        out.append(part)
    return out


def _launch_spec(ctx: CampaignContext, plan: ServerPlan) -> LaunchSpec:
    srv = ctx.config.server
    assert srv.command is not None
    port = srv.port or free_port(srv.host)
    path = ctx.model_paths.get(plan.model.label)
    values = {
        "llama_server": str(ctx.engine.server) if ctx.engine else "llama-server",
        "model_path": str(path) if path else "",
        "model_dir": str(path.parent) if path else "",
        "model_name": plan.model.request_name,
        "host": srv.host,
        "port": str(port),
    }
    argv = _fill(srv.command, values) + _fill(plan.configuration.args, values)
    env = {**os.environ, **srv.env} if srv.env else None
    return LaunchSpec(
        argv=argv,
        host=srv.host,
        port=port,
        health_path=srv.health_path,
        startup_timeout_s=srv.startup_timeout_s,
        env=env,
    )


class _Telemetry:
    """The sampler of the current server run, drained into each request's transaction."""

    def __init__(self, hz: float) -> None:
        self.hz = hz
        self.sampler: TelemetrySampler | None = None

    def start(self, pid: int | None) -> None:
        self.sampler = TelemetrySampler(pid, self.hz)
        self.sampler.start()

    def drain(self) -> list[Sample]:
        return self.sampler.drain() if self.sampler else []

    def stop(self) -> list[Sample]:
        sampler, self.sampler = self.sampler, None
        return sampler.stop() if sampler else []


def _gpu_before() -> dict[str, Any] | None:
    nv = Nvml()
    try:
        sample = nv.sample(set())
        if sample is None:
            return {"available": False, "reason": nv.reason}
        return {
            "available": True,
            "mem_used_bytes": sample.mem_used_bytes,
            "devices": [d.__dict__ for d in nv.devices()],
        }
    finally:
        nv.close()


@dataclass
class _ServerRun:
    server_run_id: str
    server: RunningServer | None
    base_url: str


def _start_server(
    ctx: CampaignContext, plan: ServerPlan, telemetry: _Telemetry, restart_of: str | None
) -> _ServerRun:
    srv = ctx.config.server
    run_id = str(uuid.uuid4())
    model_id = ctx.model_ids[plan.model.label]
    base_row: dict[str, Any] = {
        "server_run_id": run_id,
        "campaign_id": ctx.campaign_id,
        "model_id": model_id,
        "config_label": plan.configuration.label,
        "n_cpu_moe": plan.configuration.n_cpu_moe,
        "mode": srv.mode,
        "api": srv.api,
        "restart_of": restart_of,
        "started_utc": datetime.now(UTC),
    }
    if srv.mode == "attach":
        assert srv.endpoint is not None
        try:
            check_endpoint(srv.endpoint)
        except ServerError as exc:
            row = {**base_row, "endpoint": srv.endpoint, "status": "failed_start"}
            insert_row(ctx.con, "server_runs", {**row, "error": str(exc)})
            raise
        telemetry.start(None)
        insert_row(
            ctx.con, "server_runs", {**base_row, "endpoint": srv.endpoint, "status": "running"}
        )
        return _ServerRun(run_id, None, srv.endpoint)
    spec = _launch_spec(ctx, plan)
    version = server_version(spec.argv[0])
    gpu_before = _gpu_before()
    log_path = ctx.data_dir / "logs" / f"{run_id}.log"
    endpoint = f"http://{spec.host}:{spec.port}"
    insert_row(
        ctx.con,
        "server_runs",
        {
            **base_row,
            "endpoint": endpoint,
            "argv": to_json(redact_argv(spec.argv)),
            "version": version,
            "status": "starting",
            "gpu_before": to_json(gpu_before),
        },
    )
    try:
        server = launch(
            spec,
            log_path,
            clock=ctx.clock,
            on_started=lambda s: telemetry.start(s.pid),
        )
    except (ServerError, EngineError) as exc:
        samples = telemetry.stop()
        _finish_failed_start(ctx, run_id, log_path, str(exc), samples)
        raise
    assert server.ready_ns is not None
    update_row(
        ctx.con,
        "server_runs",
        "server_run_id",
        run_id,
        {
            "pid": server.pid,
            "launch_ns": server.launch_ns,
            "ready_ns": server.ready_ns,
            "load_ms": (server.ready_ns - server.launch_ns) / 1e6,
            "status": "running",
        },
    )
    ctx.progress.server(
        plan.model.label,
        plan.configuration.label,
        f"ready in {(server.ready_ns - server.launch_ns) / 1e9:.2f} s "
        f"(pid {server.pid}, {endpoint})",
    )
    return _ServerRun(run_id, server, server.base_url)


def _log_summary(text: str) -> tuple[dict[str, Any] | None, str | None]:
    from collector.loader_log import parse_loader_log
    from evidence.errors import LogParseError

    try:
        return parse_loader_log(text).to_json(), None
    except LogParseError as exc:
        return None, str(exc)


def _finish_failed_start(
    ctx: CampaignContext, run_id: str, log_path: Path, error: str, samples: list[Sample]
) -> None:
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    summary, _ = _log_summary(text) if text else (None, None)
    with Transaction(ctx.con):
        insert_arrow(ctx.con, "telemetry", telemetry_table(run_id, samples))
        update_row(
            ctx.con,
            "server_runs",
            "server_run_id",
            run_id,
            {
                "status": "failed_start",
                "error": error,
                "log_text": text,
                "log_summary": to_json(summary),
                "stopped_ns": ctx.clock(),
            },
        )


def _stop_server(
    ctx: CampaignContext,
    run: _ServerRun,
    telemetry: _Telemetry,
    status: str,
    error: str | None = None,
) -> None:
    exit_code = None
    text = None
    summary = None
    if run.server is not None:
        # After our own stop this is the terminate signal's code (-15 on POSIX):
        # stored as the fact it is; `status` says whether the server crashed.
        exit_code = run.server.stop(clock=ctx.clock)
        text = run.server.log_text()
        summary, parse_error = _log_summary(text)
        if parse_error and error is None and status == "stopped":
            error = f"loader log not parsed: {parse_error}"
    samples = telemetry.stop()
    with Transaction(ctx.con):
        insert_arrow(ctx.con, "telemetry", telemetry_table(run.server_run_id, samples))
        update_row(
            ctx.con,
            "server_runs",
            "server_run_id",
            run.server_run_id,
            {
                "status": status,
                "exit_code": exit_code,
                "stopped_ns": ctx.clock(),
                "log_text": text,
                "log_summary": to_json(summary),
                "error": error,
            },
        )


def _tokenize(base_url: str, text: str, headers: dict[str, str]) -> int | None:
    """llama-server's /tokenize count of the output: the tokenizer-accurate figure."""
    if not text:
        return 0
    try:
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            response = http.post(
                base_url.rstrip("/") + "/tokenize",
                json={"content": text, "add_special": False},
                headers=headers,
            )
        if response.status_code != 200:
            return None
        tokens = response.json().get("tokens")
        return len(tokens) if isinstance(tokens, list) else None
    except (httpx.HTTPError, ValueError):
        return None


def _store_request(
    ctx: CampaignContext,
    run: _ServerRun,
    cell: Cell,
    result: http_client.RequestResult,
    tokenized: int | None,
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
                "tokenized_output_tokens": tokenized,
                "event_count": len(result.chunk_t_ns),
            },
        )
        insert_arrow(
            ctx.con,
            "chunks",
            chunk_table(request_id, result.chunk_t_ns, result.chunk_text, result.chunk_kind),
        )
        insert_arrow(ctx.con, "telemetry", telemetry_table(run.server_run_id, samples))
    return request_id


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _summary(result: http_client.RequestResult, tokens: int | None) -> str:
    if result.status != "ok":
        return (result.error or "")[:100]
    n = tokens if tokens is not None else result.content_events
    e2e = ((result.done_ns or result.sent_ns) - result.sent_ns) / 1e9
    ttft = ""
    if result.first_token_ns is not None:
        ttft = f"TTFT {(result.first_token_ns - result.sent_ns) / 1e6:.0f} ms, "
    rate = f"{n / e2e:.1f} tok/s" if e2e > 0 else ""
    return f"{n} tokens, {ttft}E2E {e2e:.2f} s, {rate} ({result.finish_reason})"


def _headers(ctx: CampaignContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.api_key}"} if ctx.api_key else {}


def _params(
    ctx: CampaignContext, plan: ServerPlan, test: ProtocolTest, stream: bool
) -> GenerationParams:
    camp = ctx.config.campaign
    return GenerationParams(
        prompt=test.prompt,
        max_tokens=_test_max_tokens(ctx.config, test),
        temperature=camp.temperature,
        seed=camp.seed,
        stream=stream,
        model=plan.model.request_name,
        cache_prompt=camp.cache_prompt,
    )


@contextlib.contextmanager
def _server_session(
    ctx: CampaignContext, plan: ServerPlan, restart_of: str | None = None
) -> Iterator[tuple[_ServerRun, _Telemetry]]:
    telemetry = _Telemetry(ctx.config.campaign.telemetry_hz)
    run = _start_server(ctx, plan, telemetry, restart_of)
    status, error = "stopped", None
    try:
        yield run, telemetry
    except KeyboardInterrupt:
        status, error = "stopped", "campaign interrupted (Ctrl-C)"
        raise
    finally:
        if run.server is not None and not run.server.alive() and status == "stopped":
            status = "crashed"
            error = error or f"server exited with code {run.server.process.returncode}"
        _stop_server(ctx, run, telemetry, status, error)


def run_plan(ctx: CampaignContext, plan: ServerPlan, skip: set[Cell]) -> None:
    """Serve every cell of `plan` not in `skip`, restarting a crashed server."""
    todo = [c for c in plan.cells if c not in skip]
    if not todo:
        return
    tests = {t.test_id: t for t in plan.tests}
    camp = ctx.config.campaign
    restarts = 0
    restart_of: str | None = None
    timeouts = http_client.Timeouts(stall_s=camp.stall_timeout_s, request_s=camp.request_timeout_s)
    while todo:
        ctx.progress.server(
            plan.model.label,
            plan.configuration.label,
            "starting server" + (" again after a crash" if restart_of else ""),
        )
        with _server_session(ctx, plan, restart_of) as (run, telemetry):
            time.sleep(camp.idle_window_s)
            if camp.warmup:
                http_client.generate(
                    run.base_url,
                    ctx.config.server.api,
                    _params(ctx, plan, PROTOCOL.tests[0], True),
                    timeouts=timeouts,
                    headers=_headers(ctx),
                )
            previous_test: str | None = None
            while todo:
                cell = todo[0]
                if previous_test is not None and cell.test_id != previous_test and camp.pause_s:
                    time.sleep(camp.pause_s)
                previous_test = cell.test_id
                ctx.progress.request(cell.test_id, cell.repeat, camp.repeats, cell.stream)
                result = http_client.generate(
                    run.base_url,
                    ctx.config.server.api,
                    _params(ctx, plan, tests[cell.test_id], cell.stream),
                    timeouts=timeouts,
                    clock=ctx.clock,
                    headers=_headers(ctx),
                    on_content=ctx.progress.on_content,
                )
                server_died = run.server is not None and not run.server.alive()
                tokenized = None
                if camp.tokenize and not server_died and ctx.config.server.api != "shimmy":
                    tokenized = _tokenize(run.base_url, result.output_text, _headers(ctx))
                _store_request(ctx, run, cell, result, tokenized, telemetry.drain())
                ctx.progress.finished(result.status, _summary(result, tokenized))
                todo.pop(0)
                if server_died:
                    restarts += 1
                    restart_of = run.server_run_id
                    ctx.progress.message(
                        f"server died during {cell.test_id} (exit "
                        f"{run.server.process.returncode if run.server else '?'}); "
                        f"request stored as {result.status}"
                    )
                    if restarts > camp.max_restarts:
                        raise ServerError(
                            f"server crashed {restarts} times for {plan.configuration.label}; "
                            f"see its log in data/logs/{run.server_run_id}.log"
                        )
                    break


def finish_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str, status: str) -> None:
    update_row(
        con,
        "campaigns",
        "campaign_id",
        campaign_id,
        {"status": status, "finished_utc": datetime.now(UTC)},
    )


def score_campaign(
    con: duckdb.DuckDBPyConnection, campaign_id: str, progress: CampaignProgress
) -> None:
    """Compute scores and gates from the stored rows (scoring never runs a model)."""
    try:
        from scoring.store import rescore_campaign
    except ImportError:  # scoring not installed in this environment
        progress.message("scoring unavailable: scores and gates not computed")
        return
    rescore_campaign(con, campaign_id)


def run_campaign(
    con: duckdb.DuckDBPyConnection,
    config: Config,
    *,
    profile: str,
    command: list[str],
    model_paths: dict[str, Path],
    engine: EngineBuild | None,
    inspect: Callable[[Path], dict[str, Any]],
    resume: str | bool | None = False,
    progress: CampaignProgress,
    data_dir: Path = Path("data"),
    api_key: str | None = None,
) -> str:
    """Run (or resume) a campaign into the open store; return its id."""
    if resume:
        campaign_id = find_resumable(con, resume if isinstance(resume, str) else None)
        skip = done_cells(con, campaign_id)
        update_row(con, "campaigns", "campaign_id", campaign_id, {"status": "running"})
        progress.message(f"resuming campaign {campaign_id}: {len(skip)} cells already stored")
    else:
        campaign_id = create_campaign(con, config, profile, command, engine)
        skip = set()
        progress.message(f"campaign {campaign_id}")
    ctx = CampaignContext(
        con=con,
        campaign_id=campaign_id,
        config=config,
        progress=progress,
        model_paths=model_paths,
        engine=engine,
        data_dir=data_dir,
        api_key=api_key,
    )
    register_models(ctx, inspect)
    plans = server_plans(config)
    progress.plan(sum(len(p.cells) for p in plans) - len(skip))
    failures: list[str] = []
    try:
        for plan in plans:
            try:
                run_plan(ctx, plan, skip)
            except ServerError as exc:
                failures.append(f"{plan.model.label}/{plan.configuration.label}: {exc}")
                progress.message(f"error: {exc}")
    except KeyboardInterrupt:
        finish_campaign(con, campaign_id, "interrupted")
        raise
    except BaseException:
        finish_campaign(con, campaign_id, "failed")
        raise
    score_campaign(con, campaign_id, progress)
    finish_campaign(con, campaign_id, "complete")
    if failures:
        progress.message(
            f"{len(failures)} server configuration(s) failed; they are recorded "
            f"in server_runs and the gates"
        )
    return campaign_id
