"""Running a campaign: the plan's cells against each server configuration.

Per configuration: a clean server start, an idle window for memory after
load, one unrecorded warm-up request, then the plan's cells (pause between
tests). Everything is written as it happens, one transaction per request, so
`--resume` can pick up exactly where an interrupted campaign stopped
(collector.resume), and a server that dies mid-stream is restarted and the
campaign goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from collector import advisor
from collector import client as http_client
from collector.apis import GenerationParams
from collector.config import Config
from collector.engine import EngineBuild
from collector.plan import CampaignContext, Cell, ServerPlan, server_plans, test_max_tokens
from collector.progress import CampaignProgress
from collector.protocol import PROTOCOL, ProtocolTest
from collector.recording import (
    campaign_secrets,
    create_campaign,
    finish_campaign,
    register_models,
    store_request,
)
from collector.resume import Resumed, continue_campaign
from collector.session import ServerRunHandle, server_session, tokenize
from collector.tokenizer import OutputCounter, TokenCount
from common import interrupts
from common.errors import CampaignFailed, ConfigError, DoesNotFit, ServerError
from common.server_apis import server_api
from evidence.metrics import PROBE_CATEGORY
from evidence.store import query_interrupted
from evidence.writer import redact_secrets

__all__ = [
    "CampaignInterrupted",
    "Cell",
    "ServerPlan",
    "run_campaign",
    "server_plans",
]


class CampaignInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a campaign, now stored as interrupted; it names
    the campaign, so the command line can say exactly how to continue it."""

    def __init__(self, campaign_id: str) -> None:
        super().__init__(campaign_id)
        self.campaign_id = campaign_id


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


def _timeouts(
    ctx: CampaignContext, params: GenerationParams, load_s: float
) -> http_client.Timeouts:
    """The limits one request is held to: its deadline from its token budget."""
    camp = ctx.config.campaign
    deadline = http_client.request_deadline(
        params.max_tokens,
        min_tokens_per_s=camp.min_tokens_per_s,
        first_byte_s=camp.stall_timeout_s,
        load_s=load_s,
        cap_s=camp.request_timeout_s,
    )
    return http_client.Timeouts(
        stall_s=camp.stall_timeout_s,
        request_s=deadline.seconds,
        request_why=deadline.why,
        load_s=load_s,
    )


def _load_allowance_s(ctx: CampaignContext, plan: ServerPlan, run: ServerRunHandle) -> float:
    """The model load a request of this model may wait for inside it, in seconds.

    A server that loads the model for every request (Shimmy 1.7.0) shows each load
    in its log during the request (`server_loads` with a request id): the longest
    such load of this model in this campaign. Before any request of the model is
    stored it is not known whether the server loads per request, so the server
    run's start-up load (launch to healthy; for a server that loads once, that very
    load) stands in; a server that loads per request but not at start-up is then
    covered by the stall timeout's allowance alone, until its first load is seen.
    Once requests are stored without a load in them, the server keeps its model: 0.
    Attached servers have no log and no start-up to time: 0."""
    model_id = ctx.model_ids[plan.model.label]
    row = ctx.con.execute(
        """
        SELECT (SELECT max(l.last_line_ns - l.first_line_ns)
                FROM server_loads l JOIN server_runs s USING (server_run_id)
                WHERE s.campaign_id = $campaign AND s.model_id = $model
                  AND l.request_id IS NOT NULL),
               (SELECT count(*) FROM requests r JOIN server_runs s USING (server_run_id)
                WHERE s.campaign_id = $campaign AND s.model_id = $model)
        """,
        {"campaign": ctx.campaign_id, "model": model_id},
    ).fetchone()
    assert row is not None
    longest_ns, stored = row
    if longest_ns is not None:
        return max(int(longest_ns), 0) / 1e9
    server = run.server
    if stored or server is None or server.ready_ns is None:
        return 0.0
    return (server.ready_ns - server.launch_ns) / 1e9


def _warn_of_cap(ctx: CampaignContext, plan: ServerPlan) -> None:
    """Say before the first request when `request_timeout_s` is shorter than a test's
    budget allows: such a request may be cut though the server keeps the minimum rate."""
    camp = ctx.config.campaign
    cap = camp.request_timeout_s
    if cap is None or not plan.tests:
        return
    test = max(plan.tests, key=lambda t: test_max_tokens(ctx.config, t))
    allowed = http_client.request_deadline(
        test_max_tokens(ctx.config, test),
        min_tokens_per_s=camp.min_tokens_per_s,
        first_byte_s=camp.stall_timeout_s,
    )
    if allowed.seconds <= cap:
        return
    ctx.progress.message(
        f"campaign.request_timeout_s = {cap:g} s is shorter than {test.test_id}'s budget "
        f"allows ({round(allowed.seconds, 2):g} s: {allowed.why}): a request that needs it "
        f"is cut at the cap; raise or remove request_timeout_s"
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
    _warn_of_cap(ctx, plan)
    model_file = ctx.model_paths.get(plan.model.label) or plan.model.path
    counter = OutputCounter.for_model(ctx.engine, model_file)
    server_tokenizes = server_api(ctx.config.server.api).tokenize  # has POST /tokenize
    while todo:
        ctx.progress.server(
            plan.model.label,
            plan.configuration.label,
            "starting server" + (" again after a crash" if restart_of else ""),
        )
        with server_session(ctx, plan, restart_of) as (run, telemetry):
            time.sleep(camp.idle_window_s)
            if camp.warmup:
                warmup = _params(ctx, plan, PROTOCOL.tests[0], True)
                http_client.generate(
                    run.base_url,
                    ctx.config.server.api,
                    warmup,
                    timeouts=_timeouts(ctx, warmup, _load_allowance_s(ctx, plan, run)),
                    headers=auth_headers(ctx),
                )
            previous_test: str | None = None
            while todo:
                # An interrupt some library swallowed still stops here, before the next
                # request (see common.interrupts).
                interrupts.check()
                cell = todo[0]
                # The protocol's pause between tests; speed probes are not protocol
                # tests (collector.probes) and run back to back.
                probe = tests[cell.test_id].category == PROBE_CATEGORY
                if previous_test not in (None, cell.test_id) and camp.pause_s and not probe:
                    time.sleep(camp.pause_s)
                previous_test = cell.test_id
                ctx.progress.request(cell.test_id, cell.repeat, camp.repeats, cell.stream)
                params = _params(ctx, plan, tests[cell.test_id], cell.stream)
                result = http_client.generate(
                    run.base_url,
                    ctx.config.server.api,
                    params,
                    timeouts=_timeouts(ctx, params, _load_allowance_s(ctx, plan, run)),
                    clock=ctx.clock,
                    headers=auth_headers(ctx),
                    on_content=ctx.progress.on_content,
                )
                server_died = run.died(request_failed=result.status != "ok")
                tokenized = TokenCount()
                if camp.tokenize:
                    # The server's /tokenize while it is up (if its API has one), else offline.
                    asks_server = not server_died and server_tokenizes
                    server = functools.partial(tokenize, run.base_url, headers=auth_headers(ctx))
                    tokenized = counter.count(result.output_text, server if asks_server else None)
                store_request(ctx, run, cell, result, tokenized, telemetry.drain())
                ctx.progress.finished(result.status, _summary(result, tokenized.tokens))
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


def _resolve_auto(ctx: CampaignContext, plan: ServerPlan) -> ServerPlan:
    """`plan` with an `n_cpu_moe = "auto"` configuration made concrete: the K the advisor
    recommends for this model and the device memory in force, in its args."""
    configuration = plan.configuration
    if configuration.n_cpu_moe != "auto":
        return plan
    row = ctx.con.execute(
        "SELECT spec FROM models WHERE model_id = ?", [ctx.model_ids[plan.model.label]]
    ).fetchone()
    spec = json.loads(row[0]) if row and row[0] else None
    if not spec:
        raise ConfigError(
            f'configurations: {configuration.label!r} has n_cpu_moe = "auto", which needs the '
            f"model file to predict from; {plan.model.label!r} has none (attached server)"
        )
    k = advisor.auto_k(spec, ctx.config.device, list(ctx.config.server.command or []))
    args = [a.replace("{k}", str(k)) for a in configuration.args] or ["--n-cpu-moe", str(k)]
    ctx.progress.message(
        f"[{plan.model.label} / {configuration.label}] n_cpu_moe auto: K = {k} (the advice "
        f"for this device's memory)"
    )
    resolved = configuration.model_copy(update={"args": args if k else [], "n_cpu_moe": k})
    return dataclasses.replace(plan, configuration=resolved)


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
    redact_secrets(con, campaign_secrets(config, command, api_key))  # before the first row
    if resume:
        resumed = continue_campaign(con, resume, progress)
    else:
        resumed = Resumed(create_campaign(con, config, profile, command, engine), set(), set())
        progress.message(f"campaign {resumed.campaign_id}")
    campaign_id, skip = resumed.campaign_id, resumed.done
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
    failures: list[str] = []
    try:
        # Inside the try: a model that cannot be inspected, or a K that cannot be
        # chosen, closes the campaign as failed instead of leaving it `running`.
        register_models(ctx, inspect)
        plans = [_resolve_auto(ctx, plan) for plan in server_plans(config)]
        progress.plan(sum(len(p.cells) for p in plans) - len(skip))
        for plan in plans:
            if (plan.model.label, plan.configuration.label) in resumed.unfit:
                continue  # resumed: it did not fit this device before, and would not now
            try:
                run_plan(ctx, plan, skip)
            except DoesNotFit as exc:
                # The finding on a device too small for it, stored with its server run;
                # the other configurations still run.
                progress.message(
                    f"[{plan.model.label} / {plan.configuration.label}] {exc}; stored as "
                    f"evidence, the campaign goes on (which K fits: moe-evidence advise)"
                )
            except ServerError as exc:
                failures.append(f"{plan.model.label}/{plan.configuration.label}: {exc}")
                # Said as it happens; the one `error:` line at exit sums them up.
                progress.message(f"[{plan.model.label} / {plan.configuration.label}] failed: {exc}")
        interrupts.check()  # one that arrived during the last request, and was lost
    except BaseException as exc:
        # Ctrl-C, as itself or as the error a DuckDB call made of it (common.interrupts).
        if query_interrupted(exc):
            finish_campaign(con, campaign_id, "interrupted")
            raise CampaignInterrupted(campaign_id) from exc
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
    nothing = _no_success(con, campaign_id)
    if nothing:
        # Every request failed (a server that is healthy but refuses to generate, an
        # API mismatch): stored, since the failures are evidence too, but never
        # "complete", which would let it stand in for evidence.
        finish_campaign(con, campaign_id, "failed")
        raise CampaignFailed(nothing, campaign_id)
    finish_campaign(con, campaign_id, "complete")
    return campaign_id


def _no_success(con: duckdb.DuckDBPyConnection, campaign_id: str) -> str | None:
    """Why the campaign is not evidence although every server ran: no configuration fit
    the device, or a configuration that served requests had not one succeed (a server
    answering 500 to every request, a key it wants and is not sent). None when every
    configuration that ran has a successful request.

    One configuration without an answer is enough: its figures would read as
    "not measured" beside a healthy baseline, and the gates and the summary would
    pass over it as if it had been measured and found fine."""
    found = con.execute(
        """
        SELECT m.label, s.config_label, count(*) AS total,
               arg_min(r.status || ': ' || coalesce(r.error, ''), r.started_utc) AS first,
               bool_or(r.http_status = 401) AS unauthorized
        FROM requests r JOIN server_runs s USING (server_run_id)
        JOIN models m ON m.model_id = s.model_id
        WHERE r.campaign_id = ?
        GROUP BY m.label, s.config_label
        HAVING count(*) FILTER (WHERE r.status = 'ok') = 0
        ORDER BY min(r.started_utc)
        """,
        [campaign_id],
    ).fetchall()
    answered = con.execute(
        "SELECT count(*) FROM requests WHERE campaign_id = ?", [campaign_id]
    ).fetchone()
    unfit = con.execute(
        "SELECT config_label, error FROM server_runs WHERE campaign_id = ? "
        "AND status = 'does_not_fit' ORDER BY started_utc LIMIT 1",
        [campaign_id],
    ).fetchone()
    if answered == (0,) and unfit:
        return (
            f"campaign {campaign_id}: no configuration fit the device ({unfit[0]}: "
            f"{unfit[1]}); it is stored as failed: give the device more memory, or keep "
            f"more experts on the CPU (moe-evidence advise --model FILE --device-memory SIZE)"
        )
    if not found:
        return None
    model, config, total, first, unauthorized = found[0]
    what = " ".join(str(first).split())[:300] if first else "no request was made"
    # The whole campaign, or which configuration: the first failed one names it.
    whole = len(found) == 1 and answered == (total,)
    which = "" if whole else f"configuration {model} / {config}: "
    others = f" ({len(found) - 1} more configuration(s) likewise)" if len(found) > 1 else ""
    fix = (
        "the server wants an API key it was not sent: set server.api_key_env to the "
        "variable that holds it"
        if unauthorized
        else "fix the server or the settings"
    )
    return (
        f"campaign {campaign_id}: {which}none of its {total} requests succeeded (first: "
        f"{what}){others}; it is stored as failed: {fix}, then run it again"
    )
