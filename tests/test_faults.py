"""Faults and bad input at campaign level: whatever breaks, nothing stored is lost.

The server under test is the calibrated stream server, run as a real process
that the collector launches and stops (or, in attach mode, finds running). Each
protocol test gets its own scripted fault: the campaign must store every
request with the status that names the fault, keep the chunks that arrived
before it, and go on to the next request and configuration until it completes.
The tool's own errors (missing binary, missing model, port in use) end in one
`error: ...` line and leave the rows already in the store alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest

from calibration.scenario import BAD_JSON, NOT_JSON, Injection, Scenario
from calibration.server import CalibratedServer
from collector import session
from collector.config import CampaignSection, Config, Configuration, ModelEntry, ServerSection
from collector.progress import CampaignProgress
from collector.protocol import TEST_IDS
from collector.server import LaunchSpec, RunningServer, free_port
from common.errors import CampaignFailed
from evidence.store import open_store
from tests.support.cli import SMALL_CAMPAIGN, collect, collect_here, config_toml, start_collect
from tests.support.engine import ScenarioPerTest, run_in_process
from tests.support.gguf import f32, write_gguf
from tests.support.stores import StoreFactory

ROOT = Path(__file__).resolve().parents[1]
MODEL = "calibration"
SERVER = [sys.executable, "-m", "calibration.server", "--port", "{port}"]
# The calibrated server is importable from the project root, wherever pytest runs.
SERVER_ENV = {"PYTHONPATH": str(ROOT)}

# One fault per protocol test, in protocol order: the scenario the server plays,
# the status the request must be stored with, and a piece of its stored error.
FAULTS: dict[str, tuple[Scenario, str, str | None]] = {
    "simple-response": (Scenario(tokens=12, gap_s=0.001), "ok", None),
    "code-generation": (
        Scenario(http_status=500, error_message="KV cache exploded"),
        "http_error",
        "HTTP 500: ",
    ),
    "technical-explanation": (
        Scenario(http_status=429, error_message="slow down"),
        "http_error",
        "HTTP 429: ",
    ),
    "multi-step-problem": (
        Scenario(tokens=10, injections=(Injection(4, NOT_JSON),)),
        "error",
        "not valid JSON",
    ),
    "system-design": (
        Scenario(tokens=10, injections=(Injection(4, BAD_JSON),)),
        "error",
        "not valid JSON",
    ),
    "algorithm-analysis": (
        Scenario(tokens=6, send_done=False, finish_reason=None),
        "disconnected",
        "without [DONE]",
    ),
    "creative-writing": (
        Scenario(tokens=30, gap_s=0.001, disconnect_after_tokens=6, disconnect_reset=True),
        "disconnected",
        "Error",
    ),
    "technical-documentation": (
        # Every byte well within the stall timeout; the whole request far past its deadline.
        Scenario(tokens=10, drip_after_tokens=3, drip_interval_s=0.02),
        "timeout",
        "request exceeded",
    ),
    "research-analysis": (
        # A 10 MB line: stopped by the most a 600-token answer can take on the wire
        # (collector.client.response_cap) before the SSE parser's 4 MiB line limit.
        Scenario(tokens=8, long_line_after_tokens=3),
        "error",
        "more than an answer of 600 tokens can take",
    ),
}
# Content events each faulty request must keep (at least; a reset may lose a few).
KEPT = {
    "simple-response": 12,
    "multi-step-problem": 4,
    "system-design": 4,
    "algorithm-analysis": 6,
    "technical-documentation": 3,
    "research-analysis": 3,
}


def _campaign(**changes: Any) -> CampaignSection:
    settings: dict[str, Any] = {
        "name": "fault test",
        "repeats": 1,
        "pause_s": 0,
        "non_streaming": False,
        "idle_window_s": 0,
        "request_timeout_s": 1.5,
        "stall_timeout_s": 1.0,
        "telemetry_hz": 5,
    }
    settings.update(changes)
    return CampaignSection(**settings)


def _query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _scenario_file(directory: Path, scenario: Scenario) -> Path:
    path = directory / "scenario.json"
    path.write_text(json.dumps(scenario.to_dict()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fault_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One launch-mode campaign: a server that exits while loading, one that never
    becomes healthy, then one that plays a different fault for every test."""
    tmp = tmp_path_factory.mktemp("faults")
    db = tmp / "faults.duckdb"
    port = free_port()
    config = Config(
        campaign=_campaign(),
        server=ServerSection(
            command=[*SERVER, "--scenario", str(_scenario_file(tmp, Scenario(tokens=4)))],
            port=port,
            startup_timeout_s=5,
            env=SERVER_ENV,
        ),
        models=[ModelEntry(label=MODEL)],
        configurations=[
            # argparse refuses the flag: the process prints usage and exits 2 while loading.
            Configuration(label="exits-during-load", args=["--no-such-flag"]),
            # The last --port wins: it serves elsewhere, and the configured port never answers.
            Configuration(label="never-healthy", args=["--port", "0"]),
            Configuration(label="faults"),
        ],
    )
    # The calibrated server is scripted with each test's fault just before its request.
    progress = ScenarioPerTest(f"http://127.0.0.1:{port}", {t: f[0] for t, f in FAULTS.items()})
    with (
        pytest.MonkeyPatch.context() as patch,
        open_store(db) as con,
        progress,
        pytest.raises(CampaignFailed) as failed,
    ):
        # After each failed request the campaign waits DEATH_GRACE_S (2 s) for a server
        # that may be dying; this one never dies, so the full wait told it nothing 8 times.
        patch.setattr(session, "DEATH_GRACE_S", 0.2)
        run_in_process(con, config, progress, tmp)
    # Two configurations never started: the campaign goes on past them, then says so.
    assert "2 server configuration(s) failed" in str(failed.value)
    return db


def test_the_campaign_goes_on_past_every_fault_and_is_marked_failed(fault_store: Path) -> None:
    # Not "complete": cells are missing, so no build picks it by default.
    assert _query(fault_store, "SELECT status FROM campaigns") == [("failed",)]
    runs = _query(
        fault_store,
        "SELECT config_label, status, error, log_text, pid, exit_code "
        "FROM server_runs ORDER BY started_utc",
    )
    assert [(r[0], r[1]) for r in runs] == [
        ("exits-during-load", "failed_start"),
        ("never-healthy", "failed_start"),
        ("faults", "stopped"),
    ]
    exited, never, served = runs
    assert "exited with code 2 while loading" in exited[2]
    assert "unrecognized arguments: --no-such-flag" in exited[3]  # its log is kept
    assert "did not answer /health with 200 within 5 s" in never[2]
    assert "listening on http://127.0.0.1:" in never[3]
    assert served[4] is not None
    # Not a llama.cpp server: the only note on a clean stop is that its log has no loader lines.
    assert served[2].startswith("loader log not parsed")


def test_each_fault_is_stored_with_its_status_and_partial_chunks(fault_store: Path) -> None:
    rows = _query(
        fault_store,
        """
        SELECT r.test_id, r.status, r.error, r.http_status, r.output_text, r.event_count,
               (SELECT count(*) FROM chunks c WHERE c.request_id = r.request_id),
               (SELECT count(*) FROM chunks c WHERE c.request_id = r.request_id
                 AND c.kind = 'content')
        FROM requests r ORDER BY r.started_utc""",
    )
    assert [r[0] for r in rows] == list(TEST_IDS)  # every cell once, in protocol order
    for test_id, status, error, http_status, output, events, chunks, content in rows:
        scenario, want_status, want_error = FAULTS[test_id]
        assert status == want_status, (test_id, error)
        if want_error is None:
            assert error is None
        else:
            assert want_error in error, (test_id, error)
        assert chunks == events  # every event the client saw is stored
        assert content >= KEPT.get(test_id, 0), test_id
        assert scenario.text().startswith(output), test_id
        if status == "http_error":
            assert (http_status, chunks) == (scenario.http_status, 0)
            assert scenario.error_message in error
    # The reset keeps whatever arrived before the RST, and that is a prefix of the text.
    reset = next(r for r in rows if r[0] == "creative-writing")
    assert reset[4] == FAULTS["creative-writing"][0].text()[: len(reset[4])]


def test_telemetry_is_kept_for_failed_starts_too(fault_store: Path) -> None:
    samples = dict(
        _query(
            fault_store,
            """
        SELECT s.config_label, count(t.t_ns) FROM server_runs s
        LEFT JOIN telemetry t USING (server_run_id) GROUP BY 1""",
        )
    )
    assert samples["never-healthy"] > 0 and samples["faults"] > 0


# -- attach mode -------------------------------------------------------------------


def _attach_config(endpoint: str, tests: list[str]) -> Config:
    return Config(
        campaign=_campaign(tests=tests, warmup=False),
        server=ServerSection(mode="attach", endpoint=endpoint),
        models=[ModelEntry(label=MODEL)],
        configurations=[Configuration(label="attached")],
    )


class _StopServerAfterFirst(CampaignProgress):
    def __init__(self, server: CalibratedServer) -> None:
        super().__init__()
        self.calibrated = server

    def finished(self, status: str, summary: str) -> None:
        super().finished(status, summary)
        if self.state.done == 1:
            self.calibrated.close()


def test_attached_server_that_goes_away_mid_campaign(tmp_path: Path) -> None:
    db = tmp_path / "attach.duckdb"
    server = CalibratedServer(Scenario(tokens=5)).start()
    progress = _StopServerAfterFirst(server)
    tests = ["simple-response", "code-generation", "technical-explanation"]
    try:
        with open_store(db) as con, progress:
            run_in_process(con, _attach_config(server.base_url, tests), progress, tmp_path)
    finally:
        server.close()
    rows = _query(
        db, "SELECT test_id, status, error, event_count FROM requests ORDER BY started_utc"
    )
    assert [(r[0], r[1]) for r in rows] == [
        ("simple-response", "ok"),
        ("code-generation", "error"),
        ("technical-explanation", "error"),
    ]
    assert rows[0][3] > 5 and all("connect failed" in r[2] for r in rows[1:])
    assert _query(db, "SELECT mode, status, pid FROM server_runs") == [("attach", "stopped", None)]
    assert _query(db, "SELECT status FROM campaigns") == [("complete",)]


def test_attaching_to_nothing_is_recorded(tmp_path: Path) -> None:
    db = tmp_path / "nothing.duckdb"
    endpoint = f"http://127.0.0.1:{free_port()}"
    config = _attach_config(endpoint, ["simple-response"])
    with (
        open_store(db) as con,
        CampaignProgress() as progress,
        pytest.raises(CampaignFailed, match="nothing healthy answers at"),
    ):
        run_in_process(con, config, progress, tmp_path)
    ((status, error),) = _query(db, "SELECT status, error FROM server_runs")
    assert status == "failed_start" and f"nothing healthy answers at {endpoint}" in error
    assert _query(db, "SELECT count(*) FROM requests") == [(0,)]
    # A campaign with no successful request is failed, never "complete".
    assert _query(db, "SELECT status FROM campaigns") == [("failed",)]


# -- the tool's own errors, through the command line ----------------------------------


def _tiny_gguf(path: Path) -> Path:
    return write_gguf(path, "llama", {"block_count": 1}, [("token_embd.weight", f32(4, 4), None)])


def _write_config(directory: Path, server: dict[str, Any], model: Path) -> Path:
    """`directory`/c.toml: the small campaign, `server`, `model`, one configuration."""
    return config_toml(directory, {"campaign": SMALL_CAMPAIGN, "server": server}, MODEL, model)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# How a case runs the command: in a process of its own (collect) or in this one.
Run = Callable[..., subprocess.CompletedProcess[str]]


def _failed(args: list[str], env: dict[str, str], run: Run = collect_here) -> list[str]:
    """The error lines of `moe-evidence collect ARGS` (`run` in this process, unless
    given), which must exit 1."""
    done = run(*args, env=env)
    assert done.returncode == 1, done.stderr
    return _error_lines(done.stderr)


# The campaign the command made (StoreFactory's has protocol_version 'test').
NEW = "campaign_id IN (SELECT campaign_id FROM campaigns WHERE protocol_version <> 'test')"


def _new_server_run(db: Path) -> tuple[Any, ...]:
    """(status, error) of the one server run of the campaign the command made."""
    (run,) = _query(db, f"SELECT status, error FROM server_runs WHERE {NEW}")
    return run


@pytest.fixture
def existing_store(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    """A store that already holds a campaign: after any failure its rows must remain."""
    db = tmp_path / "existing.duckdb"
    with open_store(db) as con:
        factory = StoreFactory(con).campaign()
        factory.server_run("baseline")
        for i in range(3):
            factory.request("baseline", [(10 + i, "a"), (20 + i, "b")], repeat=i + 1)
    yield db, _counts(db)


def _counts(db: Path) -> dict[str, int]:
    tables = ("campaigns", "server_runs", "requests", "chunks")
    return {t: _query(db, f"SELECT count(*) FROM {t} WHERE {_old(t)}")[0][0] for t in tables}


def _old(table: str) -> str:
    # Rows of the campaign StoreFactory wrote (its protocol_version is 'test').
    campaigns = "SELECT campaign_id FROM campaigns WHERE protocol_version = 'test'"
    if table == "chunks":
        return f"request_id IN (SELECT request_id FROM requests WHERE campaign_id IN ({campaigns}))"
    return f"campaign_id IN ({campaigns})"


def test_missing_server_binary(
    tmp_path: Path, cli_env: dict[str, str], existing_store: tuple[Path, dict[str, int]]
) -> None:
    db, before = existing_store
    binary = tmp_path / "no" / "llama-server"
    server = {"command": [str(binary), "--port", "{port}"], "env": SERVER_ENV}
    config = _write_config(tmp_path, server, _tiny_gguf(tmp_path / "m.gguf"))
    assert _failed(["--config", str(config), "--db", str(db)], cli_env) == [
        f"error: server binary not found: {binary}; install it or fix the command in the config"
    ]
    assert _counts(db) == before
    assert _query(db, f"SELECT status FROM campaigns WHERE {NEW}") == [("failed",)]
    status, error = _new_server_run(db)
    assert status == "failed_start" and "server binary not found" in error


def test_missing_model_file(
    tmp_path: Path, cli_env: dict[str, str], existing_store: tuple[Path, dict[str, int]]
) -> None:
    db, before = existing_store
    missing = tmp_path / "models" / "absent.gguf"
    config = _write_config(tmp_path, {"command": SERVER, "env": SERVER_ENV}, missing)
    (line,) = _failed(["--config", str(config), "--db", str(db)], cli_env)
    assert line.startswith(f"error: model file {missing} for '{MODEL}' does not exist")
    assert _counts(db) == before
    assert _query(db, "SELECT count(*) FROM campaigns") == [(1,)]


def test_port_in_use_names_the_port_and_its_holder(
    tmp_path: Path, cli_env: dict[str, str], existing_store: tuple[Path, dict[str, int]]
) -> None:
    db, before = existing_store
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = {"command": SERVER, "port": port, "env": SERVER_ENV}
        config = _write_config(tmp_path, server, _tiny_gguf(tmp_path / "m.gguf"))
        # A configuration that cannot start is recorded and skipped; the campaign is failed
        # and the exit code says so (it used to exit 0 as if all were well). In a process
        # of its own: the holder it names is this one.
        lines = _failed(["--config", str(config), "--db", str(db)], cli_env, run=collect)
    # The progress display names the failure as it happens; the exit line sums it up.
    line = lines[-1]
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert f"by PID {os.getpid()}" in line  # the holder is visible here: it is this test
    assert "--resume" in line
    assert _counts(db) == before
    status, error = _new_server_run(db)
    assert status == "failed_start" and error in line


def test_an_unreachable_endpoint_fails_the_campaign(
    cli_env: dict[str, str], existing_store: tuple[Path, dict[str, int]]
) -> None:
    db, before = existing_store
    endpoint = f"http://127.0.0.1:{free_port()}"
    (line,) = _failed(
        ["--endpoint", endpoint, "--model", MODEL, "--quick", "--db", str(db)], cli_env
    )
    assert f"nothing healthy answers at {endpoint}" in line
    assert _counts(db) == before
    assert _query(db, f"SELECT status FROM campaigns WHERE {NEW}") == [("failed",)]


def test_a_campaign_without_one_successful_request_is_failed(
    cli_env: dict[str, str], existing_store: tuple[Path, dict[str, int]]
) -> None:
    """A server that is healthy but refuses every generation: every request is
    stored with its error, and the campaign is failed (exit 1), never "complete",
    so it can never stand in for evidence."""
    db, before = existing_store
    refusing = Scenario(http_status=500, error_message="no model loaded")
    with CalibratedServer(refusing) as server:
        flags = ["--endpoint", server.base_url, "--model", MODEL, "--quick", "--db", str(db)]
        (line,) = _failed([*flags, "--tests", "simple-response,code-generation"], cli_env)
    assert "none of its 4 requests succeeded" in line and "no model loaded" in line, line
    assert _counts(db) == before
    assert _query(db, f"SELECT status FROM campaigns WHERE {NEW}") == [("failed",)]
    assert _query(db, f"SELECT DISTINCT status FROM requests WHERE {NEW}") == [("http_error",)]


# -- secrets -----------------------------------------------------------------------

SECRET = "sk-moe-evidence-test-7c1d9e2fa4b8"

# The calibrated server behind an --api-key flag, as llama-server takes one (and ignored).
WITH_KEY_FLAG = (
    "import sys; from calibration.server import main; args = sys.argv[1:]; "
    "i = args.index('--api-key'); del args[i : i + 2]; raise SystemExit(main(args))"
)


def _holding(db: Path, text: str) -> list[str]:
    """Every table.column of the store whose value, as text, contains `text`."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        columns = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'main'"
        ).fetchall()
        found = []
        for table, column in columns:
            hit = con.execute(
                f'SELECT count(*) FROM "{table}" WHERE strpos(CAST("{column}" AS VARCHAR), ?) > 0',
                [text],
            ).fetchone()
            if hit and hit[0]:
                found.append(f"{table}.{column}")
        return found
    finally:
        con.close()


def _files_holding(root: Path, text: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text in p.read_bytes()]


def test_an_api_key_never_reaches_the_store_or_the_site(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    db = tmp_path / "secrets.duckdb"
    scenario = _scenario_file(tmp_path, Scenario(tokens=6))
    server = {
        "command": [
            sys.executable,
            "-c",
            WITH_KEY_FLAG,
            "--api-key",
            SECRET,
            "--port",
            "{port}",
            "--scenario",
            str(scenario),
        ],
        "api_key_env": "MOE_TEST_API_KEY",
        # llama-server also reads its key from LLAMA_API_KEY.
        "env": {**SERVER_ENV, "LLAMA_API_KEY": SECRET, "OMP_NUM_THREADS": "1"},
    }
    config = _write_config(tmp_path, server, _tiny_gguf(tmp_path / "m.gguf"))
    env = {**cli_env, "MOE_TEST_API_KEY": SECRET, "SOME_OTHER_TOKEN": SECRET}
    done = collect_here("--config", str(config), "--db", str(db), env=env)
    assert done.returncode == 0, done.stderr
    assert _query(db, "SELECT status FROM requests") == [("ok",)], done.stderr
    assert _holding(db, SECRET) == []
    # Where the key would have been: the config's command and server env, the server's argv.
    assert _holding(db, "(redacted)") == ["campaigns.config", "server_runs.argv"]
    assert SECRET not in done.stdout + done.stderr
    site = _build_site(db, tmp_path / "project")
    if site is not None:
        assert (site / "site" / "index.html").is_file()
        assert _files_holding(site, SECRET.encode()) == []


def _build_site(db: Path, root: Path) -> Path | None:
    """The whitepaper built from `db` in a staged copy of the project (its docs/
    and site/), or None while the report side has no buildable project yet."""
    try:
        from report.build import BuildOptions, build_site, stage_project
    except ImportError:
        return None
    if not (ROOT / "mkdocs.yml").is_file():
        return None
    build_site(BuildOptions(db=db, root=stage_project(ROOT, root)))
    return root


def test_sigterm_stops_the_server_and_marks_the_campaign_interrupted(tmp_path: Path) -> None:
    """A job runner's SIGTERM must not orphan the server (it runs in its own
    process group, so the signal never reaches it): the collector stops it,
    and the campaign is left resumable."""
    db = tmp_path / "term.duckdb"
    slow = _scenario_file(tmp_path, Scenario(tokens=400, gap_s=0.05))
    server = {"command": [*SERVER, "--scenario", str(slow)], "env": SERVER_ENV}
    config = _write_config(tmp_path, server, _tiny_gguf(tmp_path / "m.gguf"))
    proc = start_collect("--config", str(config), "--db", str(db), stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "ready in" in line:  # the server is up and the stream is about to start
            break
    time.sleep(1.0)
    servers = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "calibration.server" in " ".join(p.cmdline())
    ]
    assert servers
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 130, rest
    assert "--resume" in rest
    _, alive = psutil.wait_procs(servers, timeout=10)
    assert not alive
    assert _query(db, "SELECT status FROM campaigns") == [("interrupted",)]
    assert _query(db, "SELECT status, error FROM server_runs") == [
        ("stopped", "campaign interrupted (Ctrl-C)")
    ]


def test_a_server_that_is_still_dying_is_waited_for(tmp_path: Path) -> None:
    # A killed llama-server drops its connections a moment before it can be reaped;
    # the campaign waits for the exit instead of trusting one poll (else no restart).
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    server = RunningServer(
        LaunchSpec([sys.executable], "127.0.0.1", 0), process, tmp_path / "log", 0
    )
    assert server.alive()
    assert not server.exits_within(0.05)
    assert server.exits_within(30)
    assert not server.alive()
