"""A request's deadline comes from its token budget, and says so when it cuts one.

`request_deadline` is the one definition: the budget at the campaign's minimum rate,
plus the stall timeout for the prompt and first byte, plus the model load of a
server that loads per request; `request_timeout_s`, when a config sets it, caps it.
A campaign stored before this rule resumes under it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import ValidationError

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from collector.apis import GenerationParams
from collector.campaign import _load_allowance_s
from collector.client import Timeouts, generate, request_deadline
from collector.config import CampaignSection, Config, Configuration, ModelEntry, ServerSection
from collector.plan import CampaignContext, ServerPlan
from collector.progress import CampaignProgress
from collector.server import LaunchSpec, RunningServer
from collector.session import ServerRunHandle
from evidence.store import open_store
from evidence.writer import insert_row
from tests.support.cli import collect, collect_here, query
from tests.support.stores import StoreFactory

NS = 1_000_000_000


def test_the_deadline_is_the_budget_at_the_minimum_rate_plus_the_first_byte() -> None:
    deadline = request_deadline(1000, min_tokens_per_s=1.0, first_byte_s=120.0)
    assert deadline.seconds == 1120.0
    assert deadline.why == "1000 tokens at 1 tok/s + 120 s to first byte"
    assert request_deadline(1000, min_tokens_per_s=2.0, first_byte_s=120.0).seconds == 620.0


def test_a_per_request_model_load_is_added() -> None:
    deadline = request_deadline(50, min_tokens_per_s=1.0, first_byte_s=120.0, load_s=35.25)
    assert deadline.seconds == pytest.approx(205.25)
    assert deadline.why == "50 tokens at 1 tok/s + 120 s to first byte + 35.25 s model load"


def test_a_cap_shorter_than_the_budget_cuts_it_and_says_so() -> None:
    capped = request_deadline(1000, min_tokens_per_s=1.0, first_byte_s=120.0, cap_s=900.0)
    assert capped.seconds == 900.0
    assert capped.why == (
        "campaign.request_timeout_s; the budget allowed 1120 s: "
        "1000 tokens at 1 tok/s + 120 s to first byte"
    )
    # A cap above what the budget allows changes nothing.
    roomy = request_deadline(50, min_tokens_per_s=1.0, first_byte_s=120.0, cap_s=900.0)
    assert (roomy.seconds, roomy.why) == (170.0, "50 tokens at 1 tok/s + 120 s to first byte")


def test_the_minimum_rate_is_positive_and_the_cap_optional() -> None:
    camp = CampaignSection()
    assert (camp.min_tokens_per_s, camp.request_timeout_s, camp.stall_timeout_s) == (
        1.0,
        None,
        120.0,
    )
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValidationError, match="min_tokens_per_s"):
            CampaignSection(min_tokens_per_s=bad)


@pytest.mark.serial  # a deadline measured on the wall clock
def test_a_request_cut_by_its_deadline_names_it() -> None:
    # 100 tokens at 50 tokens/s against a minimum of 100: 2 s against a 1.5 s deadline.
    deadline = request_deadline(100, min_tokens_per_s=100.0, first_byte_s=0.5)
    params = GenerationParams(
        prompt="p", max_tokens=100, temperature=0.3, seed=1, stream=False, model="calibration"
    )
    timeouts = Timeouts(stall_s=0.5, request_s=deadline.seconds, request_why=deadline.why)
    with CalibratedServer(Scenario(tokens=100, gap_s=0.02), spin_s=0) as server:
        result = generate(server.base_url, "openai-chat", params, timeouts=timeouts)
    assert result.status == "timeout"
    assert result.error == (
        "request exceeded its deadline of 1.5 s (100 tokens at 100 tok/s + 0.5 s to first "
        "byte) waiting for the response headers"
    )


@pytest.mark.serial  # a deadline measured on the wall clock
def test_a_cap_is_announced_and_names_itself_in_the_cut_request(tmp_path: Path) -> None:
    # 1000 tokens at 400 tokens/s (2.5 s) may take 5.6 s at a minimum of 200; a 1 s cap
    # cuts both requests, and the campaign says so before the first.
    config = tmp_path / "capped.toml"
    config.write_text(
        "[campaign]\nrepeats = 1\npause_s = 0.0\nidle_window_s = 0.0\nwarmup = false\n"
        'tests = ["technical-documentation"]\nstall_timeout_s = 0.6\n'
        "min_tokens_per_s = 200.0\nrequest_timeout_s = 1.0\n"
        '[server]\nmode = "attach"\nendpoint = "{url}"\n'
        '[[models]]\nlabel = "calibration"\n[[configurations]]\nlabel = "attached"\n',
        encoding="utf-8",
    )
    db = tmp_path / "e.duckdb"
    with CalibratedServer(Scenario(tokens=1000, gap_s=0.0025), spin_s=0) as server:
        config.write_text(config.read_text().replace("{url}", server.base_url))
        done = collect_here("--config", str(config), "--db", str(db))
    assert done.returncode == 1, done.stderr  # no request succeeded: a failed campaign
    assert (
        "campaign.request_timeout_s = 1 s is shorter than technical-documentation's budget "
        "allows (5.6 s: 1000 tokens at 200 tok/s + 0.6 s to first byte)"
    ) in done.stderr
    cut = "request exceeded its deadline of 1 s (campaign.request_timeout_s; the budget allowed"
    rows = query(db, "SELECT stream, status, error FROM requests ORDER BY stream")
    assert [(s, st) for s, st, _ in rows] == [(False, "timeout"), (True, "timeout")]
    assert all(error.startswith(cut) for _, _, error in rows), rows


def _old_store(db: Path, server: CalibratedServer) -> str:
    """A campaign as a collector before budget deadlines stored it: no min_tokens_per_s,
    and the fixed 900 s limit it held every request to; interrupted."""
    flags = ["--endpoint", server.base_url, "--model", "calibration", "--quick"]
    done = collect_here(*flags, "--tests", "simple-response", "--db", str(db))
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(db)) as con:
        ((campaign_id, stored),) = con.execute(
            "SELECT campaign_id, config FROM campaigns"
        ).fetchall()
        config: dict[str, Any] = json.loads(stored)
        del config["campaign"]["min_tokens_per_s"]
        config["campaign"]["request_timeout_s"] = 900.0
        con.execute("UPDATE campaigns SET config = ?, status = 'interrupted'", [json.dumps(config)])
        con.execute("DELETE FROM requests WHERE NOT stream")  # a cell left to run
    return str(campaign_id)


@pytest.fixture(scope="module")
def old_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CalibratedServer, Path, str]]:
    """The server, and a store of an old campaign of it; each test resumes a copy."""
    db = tmp_path_factory.mktemp("old") / "e.duckdb"
    with CalibratedServer(Scenario(tokens=4, gap_s=0.001)) as server:
        yield server, db, _old_store(db, server)


@pytest.mark.parametrize("with_flags", [True, False], ids=["same-flags", "resume-alone"])
def test_a_campaign_stored_before_budget_deadlines_resumes(
    tmp_path: Path, old_store: tuple[CalibratedServer, Path, str], with_flags: bool
) -> None:
    server, stored, campaign_id = old_store
    db = tmp_path / "e.duckdb"
    shutil.copyfile(stored, db)
    flags = ["--endpoint", server.base_url, "--model", "calibration", "--quick"]
    given = [*flags, "--tests", "simple-response"] if with_flags else []
    done = collect(*given, "--db", str(db), "--resume", campaign_id)
    assert done.returncode == 0, done.stderr
    assert f"resuming campaign {campaign_id}: 1 cells already stored" in done.stderr
    assert query(db, "SELECT status FROM campaigns") == [("complete",)]
    assert query(db, "SELECT stream, status FROM requests ORDER BY stream") == [
        (False, "ok"),
        (True, "ok"),
    ]


# -- the model-load allowance ------------------------------------------------------


def _context(factory: StoreFactory) -> tuple[CampaignContext, ServerPlan]:
    config = Config(
        server=ServerSection(mode="attach", endpoint="http://127.0.0.1:9"),
        models=[ModelEntry(label="m")],
        configurations=[Configuration(label="baseline")],
    )
    ctx = CampaignContext(
        con=factory.con,
        campaign_id=factory.campaign_id,
        config=config,
        progress=CampaignProgress(),
        model_ids={"m": factory.model_id},
    )
    return ctx, ServerPlan(config.models[0], config.configurations[0], (), ())


def _launched(run_id: str, start_up_s: float) -> ServerRunHandle:
    spec = LaunchSpec(["server"], "127.0.0.1", 9, "/health", 10.0)
    server = RunningServer(spec, None, Path("log"), launch_ns=0)  # type: ignore[arg-type]
    server.ready_ns = round(start_up_s * NS)
    return ServerRunHandle(run_id, server, "http://127.0.0.1:9")


def _load(
    factory: StoreFactory, run_id: str, seq: int, seconds: float, request: str | None
) -> None:
    insert_row(
        factory.con,
        "server_loads",
        {
            "server_run_id": run_id,
            "seq": seq,
            "request_id": request,
            "first_line_ns": 10 * NS,
            "last_line_ns": 10 * NS + round(seconds * NS),
            "log_offset": 0,
        },
    )


def test_the_load_allowance_follows_what_the_log_showed(tmp_path: Path) -> None:
    with open_store(tmp_path / "e.duckdb") as con:
        factory = StoreFactory(con).campaign()
        ctx, plan = _context(factory)
        run_id = factory.server_run("baseline")
        run = _launched(run_id, start_up_s=4.0)
        # Nothing stored yet: whether it loads per request is unknown; its start-up load stands in.
        assert _load_allowance_s(ctx, plan, run) == 4.0
        # A start-up load, then a request with no load in it: it keeps its model.
        _load(factory, run_id, 0, 4.0, None)
        factory.request("baseline", [(NS, "hi")])
        assert _load_allowance_s(ctx, plan, run) == 0.0
        # A load inside a request (Shimmy 1.7.0): the longest such load, on any run.
        request = factory.request("baseline", [(2 * NS, "hi")], repeat=2)
        _load(factory, run_id, 1, 7.5, request)
        _load(factory, run_id, 2, 6.0, request)
        assert _load_allowance_s(ctx, plan, run) == 7.5
        # Attached: no start-up to time.
        attached = ServerRunHandle(factory.server_run("other"), None, "http://x")
        ctx.con.execute("DELETE FROM server_loads")
        ctx.con.execute("DELETE FROM requests")
        assert _load_allowance_s(ctx, plan, attached) == 0.0
