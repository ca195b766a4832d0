"""A collector killed outright leaves no secret on disk and no server running.

The story (issue 23, hostile case 2): `moe-evidence collect` launches a server with
`--api-key`, `--hf-token` and `HF_TOKEN` in its environment, on an RPC device; both
print what they were given into their logs. While the campaign waits on the server,
the collector is killed with SIGKILL, so none of its cleanup runs. Then:

- the logs under the store's logs/ folder hold no secret, and only their user can
  read them, at once, before any other command runs;
- on Linux the server and the device die with the collector (parent-death signal);
- a server that ignores SIGTERM (or one on an OS without that signal) is found by
  the next `collect --resume` on that store, proven to be the recorded program,
  stopped, and its server run closed as `crashed`, in one printed line;
- a live process that cannot be proven to be the recorded one is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import psutil
import pytest

from calibration.scenario import Scenario
from collector import leftovers
from collector.leftovers import LEFT_ERROR, close_left_runs, same_command
from collector.process_log import ProcessLog, _Redactor
from common.secrets import REDACTED, Secrets
from evidence.store import open_store
from evidence.writer import insert_row, to_json
from tests.support.cli import (
    ROOT,
    RPC_DEVICE_LISTEN,
    cli_env,
    collect_here,
    query,
    rpc_campaign_toml,
    start_collect,
)
from tests.support.gguf import f32, write_gguf
from tests.support.processes import exited_within, reaped

API_KEY = "sk-killed-run-api-key-0123456789"
HF_FLAG = "hf_killed_run_flag_token_0123456789"
HF_ENV = "hf_killed_run_env_token_0123456789"
SECRETS = (API_KEY, HF_FLAG, HF_ENV)

# The server: prints its command line and environment, then serves the calibration
# scenario. With a file `stubborn` beside it, it ignores SIGTERM (the parent-death
# signal among them), as a server on an OS without that signal outlives its collector;
# with a file `loading`, it takes ten minutes to load (it never gets healthy).
SERVER = """
import os, signal, sys, time
from pathlib import Path
from calibration.server import main
print("argv:", " ".join(sys.argv), flush=True)
print("env: HF_TOKEN=" + os.environ.get("HF_TOKEN", ""), flush=True)
if Path(__file__).with_name("stubborn").exists():
    real = signal.signal
    signal.signal = lambda s, h: real(s, signal.SIG_IGN if s == signal.SIGTERM else h)
    real(signal.SIGTERM, signal.SIG_IGN)
if Path(__file__).with_name("loading").exists():
    time.sleep(600)
args = sys.argv[1:]
port, scenario = args[args.index("--port") + 1], args[args.index("--scenario") + 1]
raise SystemExit(main(["--port", port, "--scenario", scenario]))
"""

# An RPC device stand-in: prints the environment it inherited, then listens.
DEVICE = (
    """
import os, signal, socket, sys, time
from pathlib import Path
if Path(__file__).with_name("stubborn").exists():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("env: HF_TOKEN=" + os.environ.get("HF_TOKEN", ""), flush=True)
"""
    + RPC_DEVICE_LISTEN
)


@dataclass
class Killed:
    """A campaign whose collector was killed while its server answered slowly."""

    db: Path
    folder: Path
    server: psutil.Process
    device: psutil.Process


def _campaign(folder: Path) -> Path:
    """The config: the server above with the three secrets, the device above."""
    (folder / "server.py").write_text(SERVER, encoding="utf-8")
    (folder / "device.py").write_text(DEVICE, encoding="utf-8")
    # The first server waits a minute before its first token: the collector is
    # killed in that wait. A resumed one answers at once (the file is rewritten).
    (folder / "scenario.json").write_text(
        json.dumps(Scenario(first_token_delay_s=60).to_dict()), encoding="utf-8"
    )
    model = write_gguf(folder / "m.gguf", "llama", {"block_count": 1}, [("w", f32(4, 4), None)])
    server = [sys.executable, str(folder / "server.py"), "--api-key", API_KEY]
    server += ["--hf-token", HF_FLAG, "--port", "{port}"]
    server += ["--scenario", str(folder / "scenario.json")]
    device = [sys.executable, "-u", str(folder / "device.py"), "--port", "{port}"]
    server_env = {"PYTHONPATH": str(ROOT), "HF_TOKEN": HF_ENV}
    return rpc_campaign_toml(folder, model, server, device, server_env)


def _env() -> dict[str, str]:
    # The collector's own environment holds a token too: its devices inherit it.
    return {**cli_env(), "HF_TOKEN": HF_ENV}


def _kill_collector(folder: Path, *, stubborn: bool, loading: bool = False) -> Killed:
    """Start the campaign, wait for its server to be ready (`loading`: to be started),
    SIGKILL the collector; the next server started behaves."""
    markers = [folder / name for name, on in (("stubborn", stubborn), ("loading", loading)) if on]
    for marker in markers:
        marker.touch()
    config = _campaign(folder)
    db = folder / "data" / "evidence.duckdb"
    args = ("--config", str(config), "--db", str(db))
    with reaped(start_collect(*args, env=_env(), stdout=subprocess.DEVNULL)) as collector:
        if loading:
            server = _child_running(collector.pid, folder / "server.py")
            time.sleep(1.0)  # into its load
        else:
            _wait_for_line(collector, "ready in")
            server = _child_running(collector.pid, folder / "server.py")
            time.sleep(0.5)  # into the warm-up request, which waits a minute for its token
        device = _child_running(collector.pid, folder / "device.py")
        collector.kill()  # SIGKILL: no cleanup of any kind runs
        collector.wait(10)
    (folder / "scenario.json").write_text(json.dumps(Scenario().to_dict()), encoding="utf-8")
    for marker in markers:
        marker.unlink()
    return Killed(db, folder, server, device)


def _wait_for_line(collector: subprocess.Popen[str], text: str) -> None:
    assert collector.stderr is not None
    seen = []
    for line in collector.stderr:
        seen.append(line)
        if text in line:
            return
    pytest.fail(f"the collector never said {text!r}:\n" + "".join(seen))


def _child_running(parent: int, script: Path, timeout_s: float = 30) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(parent).children():
            with contextlib.suppress(psutil.Error):
                if str(script) in child.cmdline():
                    return child
        time.sleep(0.05)
    pytest.fail(f"the collector never started {script.name}")


def _cleanup(killed: Killed) -> None:
    for process in (killed.server, killed.device):
        with contextlib.suppress(psutil.Error):
            process.kill()  # psutil refuses if the PID now names another process


def _logs(db: Path) -> dict[Path, bytes]:
    logs = {p: p.read_bytes() for p in sorted((db.parent / "logs").iterdir())}
    assert logs, "no log was kept"
    return logs


def _assert_private_and_redacted(db: Path) -> None:
    logs = _logs(db)
    leaks = {p.name: [s for s in SECRETS if s.encode() in text] for p, text in logs.items()}
    leaks = {name: found for name, found in leaks.items() if found}
    assert not leaks, leaks
    server_log = next(text for p, text in logs.items() if p.name.count(".") == 1)
    assert f"--api-key {REDACTED}".encode() in server_log  # redacted, not emptied
    assert f"env: HF_TOKEN={REDACTED}".encode() in server_log
    if os.name == "posix":
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in logs}
        assert set(modes.values()) == {"0o600"}, modes


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    run = _kill_collector(tmp_path_factory.mktemp("killed"), stubborn=False)
    yield run
    _cleanup(run)


@pytest.fixture
def stubborn(tmp_path: Path) -> Iterator[Killed]:
    run = _kill_collector(tmp_path, stubborn=True)
    yield run
    _cleanup(run)


@pytest.fixture
def stubborn_loading(tmp_path: Path) -> Iterator[Killed]:
    run = _kill_collector(tmp_path, stubborn=True, loading=True)
    yield run
    _cleanup(run)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal")
def test_the_server_and_its_device_die_with_a_killed_collector(killed: Killed) -> None:
    assert exited_within(killed.server, 5), f"server {killed.server.pid} outlived the collector"
    assert exited_within(killed.device, 5), f"device {killed.device.pid} outlived the collector"


def test_the_logs_of_a_killed_run_are_redacted_and_private_at_once(killed: Killed) -> None:
    """Before any other command runs: the logs were written redacted."""
    _assert_private_and_redacted(killed.db)


def _resume(killed: Killed) -> subprocess.CompletedProcess[str]:
    # Its flags again: the store does not keep the key, so cannot rerun it alone. Run in
    # this process (what it does is under test, not the process it runs in), and with 1 s,
    # not 5 s, between the SIGTERM a stubborn orphan ignores and the SIGKILL that follows.
    config = str(killed.folder / "c.toml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leftovers, "STOP_GRACE_S", 1.0)
        return collect_here("--config", config, "--resume", "--db", str(killed.db), env=_env())


def _assert_stopped_and_closed(
    killed: Killed, resumed: subprocess.CompletedProcess[str], status: str
) -> None:
    assert "Traceback" not in resumed.stderr, resumed.stderr
    assert exited_within(killed.server, 1) and exited_within(killed.device, 1)
    said = [ln for ln in resumed.stderr.splitlines() if "killed collector" in ln]
    assert len(said) == 1, resumed.stderr
    assert f"was left {status} by a killed collector" in said[0]
    assert f"server pid {killed.server.pid}" in said[0]
    assert f"pid {killed.device.pid}" in said[0]
    rows = query(killed.db, "SELECT status, error FROM server_runs ORDER BY started_utc")
    assert rows[0][0] == "crashed" and rows[0][1].startswith(LEFT_ERROR), rows
    assert f"stopped at the next start (server pid {killed.server.pid}" in rows[0][1]
    assert [r[0] for r in rows[1:]] == ["stopped"], rows  # the resumed run, stopped as usual
    assert resumed.returncode == 0, resumed.stderr
    _assert_private_and_redacted(killed.db)


def test_the_next_collect_stops_a_server_that_outlived_its_collector(stubborn: Killed) -> None:
    time.sleep(1.0)
    assert stubborn.server.is_running() and stubborn.device.is_running()
    _assert_private_and_redacted(stubborn.db)  # while the orphan still runs
    _assert_stopped_and_closed(stubborn, _resume(stubborn), "running")


def test_a_server_left_loading_is_stopped_too(stubborn_loading: Killed) -> None:
    """Killed before the server was healthy: the row is `starting`, and its PID was
    stored all the same."""
    assert stubborn_loading.server.is_running()
    _assert_stopped_and_closed(stubborn_loading, _resume(stubborn_loading), "starting")


# --- the parts, one at a time ----------------------------------------------------------


def _detached_sleep() -> psutil.Process:
    """A process of ours that is not our child (as an orphan server is not), with a
    token in its environment."""
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_TOKEN": HF_ENV},
    )
    return psutil.Process(int(out.stdout))


def _left_row(con: duckdb.DuckDBPyConnection, pid: int, argv: list[str], started: datetime) -> str:
    run_id = str(uuid.uuid4())
    insert_row(
        con,
        "server_runs",
        {
            "server_run_id": run_id,
            "campaign_id": "c",
            "model_id": "m",
            "config_label": "plain",
            "mode": "launch",
            "api": "openai-chat",
            "endpoint": "http://127.0.0.1:1",
            "argv": to_json(argv),
            "pid": pid,
            "started_utc": started,
            "status": "running",
        },
    )
    return run_id


def _close(con: duckdb.DuckDBPyConnection, logs: Path) -> list[str]:
    said: list[str] = []
    close_left_runs(con, logs, Secrets(), said.append)
    return said


@pytest.mark.skipif(os.name != "posix", reason="a detached process made with sh")
def test_a_process_not_proven_to_be_the_server_is_never_stopped(tmp_path: Path) -> None:
    """A recorded PID handed out again, to another program or before the run began,
    is left alone; the row is closed all the same. The proven one is stopped, and its
    log redacted with the secrets its own environment shows (a log an older version
    wrote unredacted)."""
    sleeper = _detached_sleep()
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with open_store(tmp_path / "e.duckdb") as con:
            before = datetime.now(UTC) - timedelta(minutes=1)
            other = _left_row(con, sleeper.pid, ["llama-server", "--port", "1"], before)
            after = datetime.now(UTC) + timedelta(hours=1)
            later = _left_row(con, sleeper.pid, sleeper.cmdline(), after)
            said = _close(con, logs)
            assert sleeper.is_running()
            left = f"left alone at the next start, not provably its own: server pid {sleeper.pid}"
            assert len(said) == 2 and all(s.endswith(left) for s in said), said
            errors = dict(con.execute("SELECT server_run_id, error FROM server_runs").fetchall())
            assert errors[other].startswith(LEFT_ERROR) and errors[later].startswith(LEFT_ERROR)
            statuses = con.execute("SELECT DISTINCT status FROM server_runs").fetchall()
            assert statuses == [("crashed",)]
            # The same process, recorded as it is and started after the run: stopped.
            proven = _left_row(con, sleeper.pid, sleeper.cmdline(), before)
            log = logs / f"{proven}.log"
            log.write_text(f"env: HF_TOKEN={HF_ENV}\n", encoding="utf-8")
            (line,) = _close(con, logs)
            assert f"stopped at the next start (server pid {sleeper.pid})" in line
            assert exited_within(sleeper, 5)
            assert proven in line
            assert log.read_text(encoding="utf-8") == f"env: HF_TOKEN={REDACTED}\n"
            assert stat.S_IMODE(log.stat().st_mode) == 0o600  # the copy swapped in is private
            # Nothing at its PID any more: the row is closed, nothing else happens.
            exited = subprocess.Popen(["true"])
            exited.wait()
            _left_row(con, exited.pid, ["true"], before)
            (line,) = _close(con, logs)
            assert line.endswith("; none of its processes still ran at the next start"), line
    finally:
        if sleeper.is_running():
            sleeper.kill()


def test_a_redacted_argument_stands_for_any_value_and_nothing_else() -> None:
    stored = ["srv", "--api-key", REDACTED, f"--hf-token={REDACTED}", "--port", "8"]
    assert same_command(stored, ["srv", "--api-key", "k1", "--hf-token=k2", "--port", "8"])
    assert not same_command(stored, ["srv", "--api-key", "k1", "--hf-token=k2", "--port", "9"])
    assert not same_command(stored, ["srv", "--api-key", "k1", "--hf-token=", "--port", "8"])
    assert not same_command(stored, stored[:-1])
    assert not same_command([], [])


def test_a_log_is_written_redacted_line_by_line_while_the_process_runs(tmp_path: Path) -> None:
    """The secret arrives split over two writes; the first line is in the file before
    the process goes on (collector.log_watch reads it as it grows)."""
    log = ProcessLog(tmp_path / "run.log", Secrets([API_KEY]))
    half = len(API_KEY) // 2
    code = (
        "import sys, time\n"
        f"sys.stdout.write('first line\\nkey {API_KEY[:half]}'); sys.stdout.flush()\n"
        "time.sleep(0.5)\n"
        f"sys.stdout.write('{API_KEY[half:]} end\\nno newline at the end'); sys.stdout.flush()\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log.target, stderr=subprocess.STDOUT
    )
    log.started()
    try:
        deadline = time.monotonic() + 10
        while b"end\n" not in log.path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.path.read_bytes() == f"first line\nkey {REDACTED} end\n".encode()
    finally:
        process.kill()
        process.wait()
        log.close()
    assert log.path.read_bytes().endswith(b"end\nno newline at the end")
    if os.name == "posix":
        assert stat.S_IMODE(log.path.stat().st_mode) == 0o600


def test_a_line_without_end_is_held_back_only_where_a_secret_may_start() -> None:
    redactor = _Redactor(Secrets([API_KEY, "line one\nline two"]))
    key = API_KEY.encode()
    body = b"." * (1 << 17)  # a line longer than is held back whole
    # What could still be the start of the key is held back (one byte short of it)...
    written, held = redactor.split(body + key[:-3], final=False)
    assert written == body[:-2] and held == b".." + key[:-3]
    written, held = redactor.split(held + key[-3:] + b"!\n", final=False)
    assert (written, held) == (b".." + REDACTED.encode() + b"!\n", b"")
    # ... and a key across that point is written whole, redacted.
    written, held = redactor.split(body + key + b"xxxxx", final=False)
    assert (written, held) == (body + REDACTED.encode(), b"xxxxx")
    # A secret of two lines is replaced line by line.
    assert redactor.split(b"a line one\nline two b\n", final=False) == (
        f"a {REDACTED}\n{REDACTED} b\n".encode(),
        b"",
    )
