"""Running a campaign: the plan's cells against each server configuration.

Per configuration: a clean server start, an idle window for memory after
load, one unrecorded warm-up request, then the plan's cells (pause between
tests). Everything is written as it happens, one transaction per request, so
`--resume` can pick up exactly where an interrupted campaign stopped, and a
server that dies mid-stream is restarted and the campaign goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from collector import client as http_client
from collector.apis import GenerationParams
from collector.config import Config
from collector.engine import EngineBuild
from collector.plan import CampaignContext, Cell, ServerPlan, server_plans, test_max_tokens
from collector.progress import CampaignProgress
from collector.protocol import PROTOCOL, ProtocolTest
from collector.recording import create_campaign, finish_campaign, register_models, store_request
from collector.session import server_session, tokenize
from common.errors import CampaignFailed, ServerError, StoreError
from evidence.writer import update_row

__all__ = ["Cell", "ServerPlan", "done_cells", "run_campaign", "server_plans"]


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
                f"no campaign {campaign_id} in this store; list them with `moe-evidence campaigns`"
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


def auth_headers(ctx: CampaignContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.api_key}"} if ctx.api_key else {}


def _params(
    ctx: CampaignContext, plan: ServerPlan, test: ProtocolTest, stream: bool
) -> GenerationParams:
    camp = ctx.config.campaign
    return GenerationParams(
        prompt=test.prompt,
        max_tokens=test_max_tokens(ctx.config, test),
        temperature=camp.temperature,
        seed=camp.seed,
        stream=stream,
        model=plan.model.request_name,
        cache_prompt=camp.cache_prompt,
    )


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
        with server_session(ctx, plan, restart_of) as (run, telemetry):
            time.sleep(camp.idle_window_s)
            if camp.warmup:
                http_client.generate(
                    run.base_url,
                    ctx.config.server.api,
                    _params(ctx, plan, PROTOCOL.tests[0], True),
                    timeouts=timeouts,
                    headers=auth_headers(ctx),
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
                    headers=auth_headers(ctx),
                    on_content=ctx.progress.on_content,
                )
                server_died = run.died(request_failed=result.status != "ok")
                tokenized = None
                if camp.tokenize and not server_died and ctx.config.server.api != "shimmy":
                    tokenized = tokenize(run.base_url, result.output_text, auth_headers(ctx))
                store_request(ctx, run, cell, result, tokenized, telemetry.drain())
                ctx.progress.finished(result.status, _summary(result, tokenized))
                todo.pop(0)
                if server_died:
                    restarts += 1
                    restart_of = run.server_run_id
                    ctx.progress.message(
                        f"{run.death()} during {cell.test_id}; request stored as "
                        f"{result.status}; restarting the server"
                        + (" and its device" if run.devices else "")
                    )
                    if restarts > camp.max_restarts:
                        raise ServerError(
                            f"server crashed {restarts} times for {plan.configuration.label}; "
                            f"see its log in data/logs/{run.server_run_id}.log"
                        )
                    break


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
    if failures:
        # Not "complete": cells are missing, so the build never shows this campaign
        # by default, and `--resume` runs what is missing once the cause is fixed.
        finish_campaign(con, campaign_id, "failed")
        raise CampaignFailed(
            f"{len(failures)} server configuration(s) failed ({'; '.join(failures)}); "
            f"what ran is stored in campaign {campaign_id}: fix the cause, then continue "
            f"with --resume",
            campaign_id,
        )
    finish_campaign(con, campaign_id, "complete")
    return campaign_id
