"""What the tests that drive `moe-evidence` as a user would share: the command in a fresh
process (the store named by flags, never by the caller's EVIDENCE_DB), and the store read
back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

from evidence.metrics import create_views
from evidence.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    """This environment without EVIDENCE_DB, unbuffered (progress lines arrive in order)."""
    env = {k: v for k, v in os.environ.items() if k != "EVIDENCE_DB"}
    return {**env, "PYTHONUNBUFFERED": "1"}


def collect_argv(*args: str) -> list[str]:
    """`moe-evidence collect ARGS` as the command line of a new process."""
    return [sys.executable, "-m", "moe_evidence", "collect", *args]


def moe_evidence(
    *args: str, cwd: Path = ROOT, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`moe-evidence ARGS` in a new process (in `env`, else `cli_env()`)."""
    return subprocess.run(
        [sys.executable, "-m", "moe_evidence", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=cli_env() if env is None else env,
    )


def collect(
    *args: str, cwd: Path = ROOT, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`moe-evidence collect ARGS` in a new process (in `env`, else `cli_env()`)."""
    return moe_evidence("collect", *args, cwd=cwd, timeout=timeout, env=env)


def start_collect(
    *args: str, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """`moe-evidence collect ARGS` started in a new process (in `env`, else `cli_env()`),
    its stderr piped (and its stdout, unless `stdout` says otherwise), for a test that
    acts while it runs."""
    return subprocess.Popen(
        collect_argv(*args),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env() if env is None else env,
    )


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of `sql` over the store at `db`, opened read-only."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def request_metrics(db: Path, columns: str, order: str = "m.request_id") -> list[tuple[Any, ...]]:
    """`columns` of request_metrics m joined with requests r, from the store at `db`."""
    with open_store(db, read_only=True) as con:
        create_views(con)
        return con.execute(
            f"SELECT {columns} FROM request_metrics m JOIN requests r USING (request_id) "
            f"ORDER BY {order}"
        ).fetchall()


# The calibrated server as a launched server's command (`{host}`/`{port}` filled in).
CALIBRATION_COMMAND = [
    sys.executable,
    "-m",
    "calibration.server",
    "--host",
    "{host}",
    "--port",
    "{port}",
]


def campaign_toml(
    tmp: Path, model: Path, server: list[str], configurations: str, **campaign: str
) -> Path:
    """A TOML config in `tmp`: `model` as label "m" served by `server`, the
    `configurations` given as TOML, a short campaign (`campaign` settings on top)."""
    settings = {
        "repeats": "2",
        "pause_s": "0",
        "warmup": "false",
        "idle_window_s": "0",
        "tests": '["simple-response", "code-generation"]',
        "max_tokens_cap": "16",
        **campaign,
    }
    text = "[campaign]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    text += f"[server]\ncommand = {json.dumps(server)}\n"
    text += f'[[models]]\nlabel = "m"\npath = {json.dumps(str(model))}\n{configurations}'
    path = tmp / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


# The end of an RPC device stand-in's script: listen on its `--port` until stopped.
RPC_DEVICE_LISTEN = """\
port = int(sys.argv[sys.argv.index("--port") + 1])
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen()
while True:
    time.sleep(1)
"""


# A campaign of one streamed simple-response, no pauses, telemetry at 5 Hz.
SMALL_CAMPAIGN: dict[str, Any] = {
    "tests": ["simple-response"],
    "repeats": 1,
    "pause_s": 0,
    "idle_window_s": 0,
    "non_streaming": False,
    "telemetry_hz": 5,
}


def toml_value(value: Any) -> str:
    """`value` as TOML: a dict as an inline table; strings, numbers, booleans and lists
    of them read the same in JSON."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def config_toml(
    folder: Path, sections: dict[str, dict[str, Any]], model_label: str, model: Path
) -> Path:
    """`folder`/c.toml: the `sections` ("campaign", "server", ...) as given, then `model`
    as `model_label`, in one configuration "plain"."""
    lines = []
    for name, fields in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    lines += [
        "[[models]]",
        f"label = {toml_value(model_label)}",
        f"path = {toml_value(str(model))}",
        "[[configurations]]",
        'label = "plain"',
    ]
    config = folder / "c.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def rpc_campaign_toml(
    folder: Path, model: Path, server: list[str], device: list[str], server_env: dict[str, str]
) -> Path:
    """`folder`/c.toml: the small campaign of `model` (label "calibration") from `server`
    started with `server_env`, sampled from the RPC device that `device` starts."""
    sections = {
        "campaign": SMALL_CAMPAIGN,
        "server": {"command": server, "startup_timeout_s": 30, "env": server_env},
        "device": {"kind": "rpc", "command": device},
    }
    return config_toml(folder, sections, "calibration", model)
