"""What the tests that drive `moe-evidence` as a user would share: the command in a fresh
process (the store named by flags, never by the caller's EVIDENCE_DB) or run by its entry
point in this one, and the store read back."""

from __future__ import annotations

import io
import json
import locale
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

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


def moe_evidence_here(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`moe-evidence ARGS` run by its entry point (moe_evidence.cli.main) in this process,
    as `moe_evidence` runs it in a new one: in `env` (else `cli_env()`) and `cwd`, its
    exit code, and everything written to stdout and stderr, by Python or below it.

    For a test about what a command does (what it stores, what a server receives, what
    it prints), not about the process around it: no interpreter starts, so a command
    costs its work alone (a new process spends half a second importing; a campaign in
    it, a second more measuring memory bandwidth on 512 MiB of fresh pages, which
    tests/conftest.py makes 8 MiB in this one). As the interpreter would: warnings are
    shown under Python's default filters (pytest's "error" is not in force), an exception
    that escapes is a traceback on stderr and exit 1, SystemExit is its code; threads
    that are not daemons are waited for, and one still running after 10 s, which would
    keep a process from exiting, fails the test.
    The signal handlers it installs, the environment, the working folder and sys.argv
    are put back afterwards."""
    from moe_evidence.cli import main

    threads = set(threading.enumerate())
    with (
        _as_a_process(cwd, cli_env() if env is None else env, args) as output,
        warnings.catch_warnings(),
    ):
        warnings.resetwarnings()
        for action, category, module in _DEFAULT_WARNING_FILTERS:
            warnings.filterwarnings(action, category=category, module=module)
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = _exit_code(exc)
        except Exception:
            traceback.print_exc()
            code = 1
    # As the interpreter does before a process exits: wait for the threads that are not
    # daemons (started meanwhile: the command's, or a test server's serving it).
    for thread in set(threading.enumerate()) - threads:
        if not thread.daemon:
            thread.join(timeout=_THREAD_EXIT_S)
            assert not thread.is_alive(), (
                f"moe-evidence {' '.join(args)} would not exit: thread {thread.name} still runs"
            )
    return subprocess.CompletedProcess(["moe-evidence", *args], code, *output)


def collect_here(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`moe-evidence collect ARGS` in this process (see `moe_evidence_here`)."""
    return moe_evidence_here("collect", *args, cwd=cwd, env=env)


# Python's own filters when no -W option or PYTHONWARNINGS is given (a release build).
_DEFAULT_WARNING_FILTERS: tuple[tuple[Any, type[Warning], str], ...] = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)
_THREAD_EXIT_S = 10.0
_HANDLED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _exit_code(exc: SystemExit) -> int:
    """The exit status SystemExit(code) gives a process (a message is printed, status 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


@contextmanager
def _as_a_process(cwd: Path, env: dict[str, str], args: tuple[str, ...]) -> Iterator[list[str]]:
    """This process dressed as `python -m moe_evidence ARGS` run in `cwd` with `env`; the
    list yielded holds, after the block, what went to its stdout and stderr (file
    descriptors 1 and 2, and sys.stdout/sys.stderr on them) as a pipe would give it."""
    output: list[str] = []
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_handlers = {s: signal.getsignal(s) for s in _HANDLED_SIGNALS}
    saved_streams = sys.stdout, sys.stderr
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
        for stream in saved_streams:
            stream.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = _text_stream(1, "strict"), _text_stream(2, "backslashreplace")
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = [str(ROOT / "moe_evidence" / "__main__.py"), *args]
        try:
            yield output
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in saved_fds.items():
                os.dup2(saved, fd)
                os.close(saved)
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            sys.argv = saved_argv
            for sig, handler in saved_handlers.items():
                signal.signal(sig, handler)
            output += [_text(out), _text(err)]


def _text_stream(fd: int, errors: str) -> io.TextIOWrapper:
    """A text stream on `fd` as Python gives a process with a pipe there: the locale's
    encoding, `errors` ("backslashreplace" on stderr), unbuffered as PYTHONUNBUFFERED
    makes it."""
    raw = io.FileIO(fd, "w", closefd=False)
    encoding = locale.getpreferredencoding(False)
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors, write_through=True)


def _text(stream: BinaryIO) -> str:
    """What `subprocess.run(..., text=True)` would read from a pipe of these bytes."""
    stream.seek(0)
    return io.TextIOWrapper(io.BytesIO(stream.read()), locale.getpreferredencoding(False)).read()


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
