"""Server runs a killed collector left behind, closed at the next `collect` on that store.

A collector killed outright (SIGKILL, an out-of-memory kill) leaves its server run
`starting` or `running` in `server_runs`, and, where the server outlived it (no
parent-death signal on macOS or Windows, a server that ignores SIGTERM), a server and
RPC devices still running: holding a port, memory (a GPU's, on a real box) and the
API key in their command lines. The next `collect` on the store stops them before it
measures anything, redacts their logs, and closes each row as `crashed`, saying so in
one line.

Why at the start of `collect` and nowhere else: it is the command that goes on after a
kill (`--resume`), it opens the store to write, and it is the capture side, which owns
processes; `build` and `campaigns` only read the store, and the build never imports
the capture side. While a collector runs it holds the store's lock, so a writer that
opened the store knows that every row still `starting` or `running` was left by one
that is gone.

A PID is only a number the OS hands out again, so a process is stopped only where it
is proven to be the one the row recorded: created after the run started, not a
child of this process, and running the stored command line (each argument the same,
a redacted value standing for any). Anything else is left alone, whatever it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import psutil

from collector.recording import update_server_run
from collector.server import redact_logs
from common.secrets import REDACTED, Secrets

__all__ = ["LEFT_ERROR", "close_left_runs", "same_command"]

LEFT_ERROR = "left running by a collector that was killed"
STOP_GRACE_S = 5.0
# psutil's create time on Linux is the boot time (whole seconds) plus the process's
# start in clock ticks, so it may read up to a second before the true start.
_CLOCK_SLACK_S = 2.0
_POLL_S = 0.05


@dataclass(frozen=True)
class _Recorded:
    """A process a server run recorded: what it was, its PID, its stored command line."""

    what: str  # "server", "RPC device 127.0.0.1:PORT"
    pid: int
    argv: list[str]


def same_command(stored: Sequence[str], live: Sequence[str]) -> bool:
    """Whether `live` is the command line `stored` recorded: argument for argument
    the same, where a stored `(redacted)` stands for any non-empty text."""
    if len(stored) != len(live) or not stored:
        return False
    for kept, seen in zip(stored, live, strict=True):
        if kept == seen:
            continue
        if REDACTED not in kept:
            return False
        pattern = ".+?".join(re.escape(part) for part in kept.split(REDACTED))
        if re.fullmatch(pattern, seen, re.DOTALL) is None:
            return False
    return True


def _recorded(pid: int | None, argv: Any, device: Any) -> list[_Recorded]:
    found = []
    if pid is not None and argv:
        found.append(_Recorded("server", int(pid), list(json.loads(argv))))
    facts = json.loads(device) if device else None
    for rpc in (facts or {}).get("rpc_servers") or []:
        if rpc.get("launched") and rpc.get("pid") is not None and rpc.get("argv"):
            found.append(_Recorded(f"RPC device {rpc['endpoint']}", int(rpc["pid"]), rpc["argv"]))
    return found


def _look_up(recorded: _Recorded, started: datetime) -> psutil.Process | bool:
    """The live process `recorded` names where it is proven to be it; else whether
    something else runs at its PID now."""
    try:
        process = psutil.Process(recorded.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # dead, not yet reaped
        if process.ppid() == os.getpid():
            return True  # a server this process runs itself
        if process.create_time() < started.timestamp() - _CLOCK_SLACK_S:
            return True  # older than the run: the PID was handed out again
        if not same_command(recorded.argv, process.cmdline()):
            return True
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # another user's process: not ours to stop
        return True
    return process


def _secrets_in(process: psutil.Process) -> Secrets:
    """What its own command line and environment hold: the secrets its log may show
    (the store keeps only redacted values)."""
    with contextlib.suppress(psutil.Error):
        return Secrets.find(process.cmdline(), process.environ())
    return Secrets()


def _gone(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)  # dead, not yet reaped
    except psutil.Error:
        return True


def _wait_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    alive = [p for p in processes if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _stop(processes: list[psutil.Process]) -> None:
    """Terminate, then kill what is still there after STOP_GRACE_S (with the children
    each has: a server's children are the server's). psutil checks before each signal
    that the PID still names the process it proved."""
    tree = list(processes)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            tree += process.children(recursive=True)
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    for process in _wait_gone(tree, STOP_GRACE_S):
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(tree, STOP_GRACE_S)


def _outcome(mode: str, stopped: list[_Recorded], others: list[_Recorded]) -> str:
    """What the next start did about a left run, for its row and its line."""
    if mode == "attach":
        return "the server it attached to is not the tool's to stop"
    parts = []
    if stopped:
        parts.append(f"stopped at the next start ({_named(stopped)})")
    if others:
        parts.append(f"left alone at the next start, not provably its own: {_named(others)}")
    return "; ".join(parts) or "none of its processes still ran at the next start"


def _named(processes: list[_Recorded]) -> str:
    return ", ".join(f"{r.what} pid {r.pid}" for r in processes)


def close_left_runs(
    con: duckdb.DuckDBPyConnection,
    logs_dir: Path,
    secrets: Secrets,
    say: Callable[[str], None],
) -> int:
    """Close the server runs left `starting` or `running` in the store `con` holds open
    to write: stop their processes that are provably still theirs, redact their logs
    in `logs_dir` (with `secrets` and those the processes show), mark them `crashed`,
    and `say` one line for each. Return how many were closed."""
    rows = con.execute(
        "SELECT server_run_id, config_label, status, mode, pid, argv, device, started_utc "
        "FROM server_runs WHERE status IN ('starting', 'running') ORDER BY started_utc"
    ).fetchall()
    for run_id, label, status, mode, pid, argv, device, started in rows:
        proven: list[tuple[_Recorded, psutil.Process]] = []
        others: list[_Recorded] = []  # at its PID now: something not proven to be it
        for recorded in _recorded(pid, argv, device):
            found_at_pid = _look_up(recorded, started)
            if isinstance(found_at_pid, psutil.Process):
                proven.append((recorded, found_at_pid))
            elif found_at_pid:
                others.append(recorded)
        found = secrets
        for _, process in proven:
            found |= _secrets_in(process)
        _stop([process for _, process in proven])
        logs = sorted(p for p in logs_dir.glob(f"{run_id}.*") if p.suffix == ".log")
        redact_logs(found, logs, say)
        after = _outcome(mode, [r for r, _ in proven], others)
        update_server_run(con, run_id, {"status": "crashed", "error": f"{LEFT_ERROR}; {after}"})
        say(f"server run {run_id} ({label}) was left {status} by a killed collector; {after}")
    return len(rows)
