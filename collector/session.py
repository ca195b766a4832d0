"""One server's life in a campaign: start it (or attach), sample it, watch its
log for model loads, stop it, and record all of that in `server_runs`,
`telemetry` and `server_loads` (through collector.recording, their one writer)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from collector.auth import bearer_headers, url_credentials
from collector.device import (
    DEVICE_SOURCE,
    RpcServer,
    failure_hint,
    launch_rpc_servers,
    rss_bytes,
)
from collector.log_watch import LogWatcher, SeenLoad
from collector.nvml import Nvml
from collector.plan import CampaignContext, ServerPlan
from collector.recording import close_server_run, open_server_run, update_server_run
from collector.server import (
    LaunchSpec,
    RunningServer,
    check_endpoint,
    fill_placeholders,
    free_port,
    launch,
    redact_logs,
    server_version,
)
from collector.telemetry import Sample, TelemetrySampler
from common.errors import DoesNotFit, EngineError, ServerError
from common.secrets import redact_argv
from common.sizes import MIB, mib
from evidence.store import query_interrupted
from evidence.writer import secrets_of, to_json

# How long a failed request waits for the server to finish dying before the
# campaign decides whether to restart it (see RunningServer.exits_within).
DEATH_GRACE_S = 2.0


def _launch_spec(ctx: CampaignContext, plan: ServerPlan, devices: list[RpcServer]) -> LaunchSpec:
    srv = ctx.config.server
    assert srv.command is not None
    port = srv.port or free_port(srv.host)
    path = ctx.model_paths.get(plan.model.label)
    rpc = ",".join(d.endpoint for d in devices)
    values = {
        "llama_server": str(ctx.engine.server) if ctx.engine else "llama-server",
        "model_path": str(path) if path else "",
        "model_dir": str(path.parent) if path else "",
        "model_name": plan.model.request_name,
        "host": srv.host,
        "port": str(port),
        "rpc": rpc,
    }
    argv = fill_placeholders(srv.command, values)
    if devices and not any("{rpc}" in part for part in srv.command):
        argv += ["--rpc", rpc]
    argv += fill_placeholders(plan.configuration.args, values)
    env = {**os.environ, **srv.env} if srv.env else None
    return LaunchSpec(
        argv=argv,
        host=srv.host,
        port=port,
        health_path=srv.health_path,
        startup_timeout_s=srv.startup_timeout_s,
        env=env,
    )


class ServerTelemetry:
    """The sampler of the current server run, drained into each request's transaction."""

    def __init__(self, hz: float) -> None:
        self.hz = hz
        self.sampler: TelemetrySampler | None = None

    def start(self, pid: int | None, device_pids: tuple[int, ...] = ()) -> None:
        self.sampler = TelemetrySampler(pid, self.hz, device_pids)
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
class ServerRunHandle:
    server_run_id: str
    server: RunningServer | None
    base_url: str
    devices: list[RpcServer] = field(default_factory=list)
    # Tails the launched server's log for model loads; None when attached (no log).
    watcher: LogWatcher | None = None

    def died(self, request_failed: bool) -> bool:
        """Whether the launched server or one of its launched devices has died.

        After a failed request the server gets DEATH_GRACE_S to finish dying: a
        killed server closes its sockets before it can be reaped."""
        if self.server is None:
            return False
        if any(not d.alive() for d in self.devices):
            return True
        if request_failed:
            return self.server.exits_within(DEATH_GRACE_S)
        return not self.server.alive()

    def death(self) -> str:
        """What died, for the log and the server run's error."""
        dead = [d for d in self.devices if not d.alive()]
        if dead:
            assert dead[0].process is not None
            return f"RPC device {dead[0].endpoint} exited with code {dead[0].process.returncode}"
        code = self.server.process.returncode if self.server else None
        return f"server exited with code {code}"


def _device_facts(ctx: CampaignContext, devices: list[RpcServer]) -> dict[str, Any] | None:
    """`server_runs.device`: what stood in for the GPU, and its memory before the load."""
    device = ctx.config.device
    if device.kind == "none":
        return None
    return {
        "kind": device.kind,
        "source": DEVICE_SOURCE,
        "rpc_servers": [d.facts() for d in devices],
        "mem_before_bytes": rss_bytes(devices),
        # The size it is held to (each launched rpc-server; None: what the host gives).
        "memory_bytes": device.memory,
    }


def _start_devices(ctx: CampaignContext, run_id: str) -> list[RpcServer]:
    device = ctx.config.device
    if device.kind == "none":
        return []
    binary = ctx.engine.rpc_server if ctx.engine else None
    return launch_rpc_servers(device, binary, ctx.data_dir / "logs", run_id, secrets_of(ctx.con))


def _start_server(
    ctx: CampaignContext, plan: ServerPlan, telemetry: ServerTelemetry, restart_of: str | None
) -> ServerRunHandle:
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
            check_endpoint(srv.endpoint, headers=bearer_headers(ctx.api_key))
        except ServerError as exc:
            row = {**base_row, "endpoint": srv.endpoint, "status": "failed_start"}
            open_server_run(ctx.con, {**row, "error": str(exc)})
            raise
        telemetry.start(None)
        open_server_run(ctx.con, {**base_row, "endpoint": srv.endpoint, "status": "running"})
        return ServerRunHandle(run_id, None, srv.endpoint)
    log_path = ctx.data_dir / "logs" / f"{run_id}.log"
    open_server_run(ctx.con, {**base_row, "endpoint": "", "status": "starting"})
    devices: list[RpcServer] = []
    watcher = LogWatcher(log_path, clock=ctx.clock)

    def started(s: RunningServer) -> None:
        # The PID at once, not once healthy: a collector killed during the load leaves
        # a `starting` row that the next start must be able to stop (collector.leftovers).
        update_server_run(ctx.con, run_id, {"pid": s.pid})
        telemetry.start(s.pid, device_pids)
        watcher.start()  # from the first line: a start-up load is a load too

    try:
        devices = _start_devices(ctx, run_id)
        spec = _launch_spec(ctx, plan, devices)
        update_server_run(
            ctx.con,
            run_id,
            {
                "endpoint": f"http://{spec.host}:{spec.port}",
                "argv": to_json(redact_argv(spec.argv)),
                "version": server_version(spec.argv[0]),
                "gpu_before": to_json(_gpu_before()),
                "device": to_json(_device_facts(ctx, devices)),
            },
        )
        device_pids = tuple(d.pid for d in devices if d.pid is not None)
        server = launch(
            spec,
            log_path,
            clock=ctx.clock,
            on_started=started,
            secrets=secrets_of(ctx.con),
        )
    except (ServerError, EngineError) as exc:
        samples = telemetry.stop()
        text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
        summary, _ = _log_summary(text) if text else (None, None)
        unfit = _does_not_fit(ctx, summary)
        hint = failure_hint(devices)
        error = unfit or (f"{hint}; {exc}" if hint else str(exc))
        status = "does_not_fit" if unfit else "failed_start"
        _finish_failed_start(
            ctx, run_id, log_path, status, error, (text, summary), samples, devices, watcher.stop()
        )
        if unfit:
            raise DoesNotFit(error) from exc
        if hint:
            raise type(exc)(error) from exc
        raise
    except BaseException:
        telemetry.stop()
        watcher.stop()
        _stop_devices(devices)
        raise
    assert server.ready_ns is not None
    update_server_run(
        ctx.con,
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
        f"(pid {server.pid}, {server.base_url})",
    )
    return ServerRunHandle(run_id, server, server.base_url, devices, watcher)


def _log_summary(text: str) -> tuple[dict[str, Any] | None, str | None]:
    from collector.loader_log import parse_loader_log
    from common.errors import LogParseError

    try:
        return parse_loader_log(text).to_json(), None
    except LogParseError as exc:
        return None, str(exc)


def _stop_devices(devices: list[RpcServer]) -> dict[str, Any]:
    """Stop the launched devices; their exit codes and logs for `server_runs`."""
    codes = [d.stop() for d in devices]
    launched = [(d, c) for d, c in zip(devices, codes, strict=True) if d.launched]
    if not launched:
        return {}
    return {
        "device_log_text": "\n".join(
            f"=== {d.endpoint} (exit {c}) ===\n{d.log_text()}" for d, c in launched
        )
    }


def _does_not_fit(ctx: CampaignContext, summary: dict[str, Any] | None) -> str | None:
    """The one line for a load the device could not hold, from the device's own
    out-of-memory words in the log; None when the load failed for another reason."""
    failure = (summary or {}).get("device_alloc_failure")
    if not failure:
        return None
    size = failure.get("bytes")
    kind = f"{failure['kind']} buffer" if failure.get("kind") else "a buffer"
    tried = f"{mib(size)} ({kind})" if size else kind
    # What the load already held on that device (a KV or compute buffer fails after
    # the model buffer was made): the size it needed in all, at least.
    held = (summary or {}).get("buffers", {}).get(failure["buffer"], {})
    held_bytes = sum(v for k, v in held.items() if k != "output") * MIB
    if held_bytes and size:
        tried += f" after {mib(held_bytes)} of other buffers ({mib(held_bytes + size)} in all)"
    memory = ctx.config.device.memory
    on = f"on a {mib(memory)} device" if memory else f"on {failure['device']}"
    return f"does not fit: the server could not allocate {tried} {on}"


def _finish_failed_start(
    ctx: CampaignContext,
    run_id: str,
    log_path: Path,
    status: str,
    error: str,
    log: tuple[str, dict[str, Any] | None],
    samples: list[Sample],
    devices: list[RpcServer],
    loads: list[SeenLoad],
) -> None:
    text, summary = log
    device_row = _stop_devices(devices)
    logs = [log_path, *(d.log_path for d in devices)]
    redact_logs(secrets_of(ctx.con), logs, ctx.progress.message)
    close_server_run(
        ctx.con,
        run_id,
        samples,
        loads,
        {
            "status": status,
            "error": error,
            "log_text": text,
            "log_summary": to_json(summary),
            "stopped_ns": ctx.clock(),
            **device_row,
        },
    )


def _stop_server(
    ctx: CampaignContext,
    run: ServerRunHandle,
    telemetry: ServerTelemetry,
    status: str,
    error: str | None = None,
) -> None:
    exit_code = None
    text = None
    summary = None
    loads: list[SeenLoad] = []
    if run.server is not None:
        # After our own stop this is the terminate signal's code (-15 on POSIX):
        # stored as the fact it is; `status` says whether the server crashed.
        exit_code = run.server.stop(clock=ctx.clock)
        # Loads after the last recorded request (or in none): no request's.
        loads = run.watcher.stop() if run.watcher else []
        text = run.server.log_text()
        summary, parse_error = _log_summary(text)
        if parse_error and error is None and status == "stopped":
            error = f"loader log not parsed: {parse_error}"
    # The server first: it holds the device's connection, and a device stopped
    # under a live server would make the server abort.
    device_row = _stop_devices(run.devices)
    samples = telemetry.stop()
    logs = [run.server.log_path if run.server else None, *(d.log_path for d in run.devices)]
    redact_logs(secrets_of(ctx.con), logs, ctx.progress.message)
    close_server_run(
        ctx.con,
        run.server_run_id,
        samples,
        loads,
        {
            "status": status,
            "exit_code": exit_code,
            "stopped_ns": ctx.clock(),
            "log_text": text,
            "log_summary": to_json(summary),
            "error": error,
            **device_row,
        },
    )


def tokenize(base_url: str, text: str, headers: dict[str, str]) -> int | None:
    """llama-server's /tokenize count of the output: the tokenizer-accurate figure."""
    if not text:
        return 0
    # Cleaned of its credentials first: httpx would let them replace an API key.
    url, headers = url_credentials(base_url.rstrip("/") + "/tokenize", headers)
    try:
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            response = http.post(url, json={"content": text, "add_special": False}, headers=headers)
        if response.status_code != 200:
            return None
        tokens = response.json().get("tokens")
        return len(tokens) if isinstance(tokens, list) else None
    except (httpx.HTTPError, ValueError):
        return None


@contextlib.contextmanager
def server_session(
    ctx: CampaignContext, plan: ServerPlan, restart_of: str | None = None
) -> Iterator[tuple[ServerRunHandle, ServerTelemetry]]:
    telemetry = ServerTelemetry(ctx.config.campaign.telemetry_hz)
    run = _start_server(ctx, plan, telemetry, restart_of)
    status, error = "stopped", None
    try:
        yield run, telemetry
    except BaseException as exc:
        if query_interrupted(exc):
            status, error = "stopped", "campaign interrupted (Ctrl-C)"
        raise
    finally:
        if status == "stopped" and run.died(request_failed=False):
            status = "crashed"
            error = error or run.death()
        _stop_server(ctx, run, telemetry, status, error)
