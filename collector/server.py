"""The inference-server seam: launch a server process (or attach to one),
wait until it is healthy, and stop it.

Load time is measured from just before the process is created to the first
`/health` answer with HTTP 200 (llama-server and Shimmy answer 503 while the
model loads). Health is polled every 50 ms, which bounds the resolution.

The server's stdout and stderr go to a log file only its user can read, with the
campaign's secrets replaced as they are written (`collector.process_log`), so the log
survives a crash of the server or of the collector and never holds a secret; the
server dies with the collector where the OS allows (`collector.parent_death`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from collector.auth import url_credentials
from collector.parent_death import die_with_parent
from collector.process_log import ProcessLog, write_private
from common.errors import EngineError, PortInUse, ServerExited, ServerNotHealthy
from common.secrets import Secrets

HEALTH_POLL_S = 0.05


@dataclass
class LaunchSpec:
    argv: list[str]
    host: str
    port: int
    health_path: str = "/health"
    startup_timeout_s: float = 600.0
    env: dict[str, str] | None = None
    cwd: Path | None = None


@dataclass
class RunningServer:
    """A server we launched, with the facts the `server_runs` table needs."""

    spec: LaunchSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    launch_ns: int
    ready_ns: int | None = None
    exit_code: int | None = None
    stopped_ns: int | None = None
    _log_handle: ProcessLog | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.spec.host)}:{self.spec.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def exits_within(self, seconds: float) -> bool:
        """True if the server has exited or exits within `seconds`.

        A killed server closes its sockets before the OS lets us reap it, so a
        client can see the connection drop while `alive()` still says True."""
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def log_text(self) -> str:
        if self._log_handle is not None and self.process.poll() is not None:
            self._log_handle.settle(1.0)  # the last lines it wrote may be in the relay still
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0, clock: Callable[[], int] = time.perf_counter_ns) -> int:
        """Terminate the server and its children; return the exit code."""
        code = stop_spawned(self.process, self._log_handle, grace_s)
        self.exit_code = code
        self.stopped_ns = clock()
        return code


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def fill_placeholders(template: Sequence[str], values: dict[str, str]) -> list[str]:
    """`template` with every `{name}` of `values` replaced (a command line)."""
    out = []
    for part in template:
        for key, value in values.items():
            part = part.replace("{" + key + "}", value)
        out.append(part)
    return out


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse (naming the holder when we can see it) if `port` is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if sys.platform != "win32":
            # Bind the way servers do: llama-server and Shimmy set SO_REUSEADDR, so
            # TIME_WAIT sockets left by the previous server's closed connections do
            # not keep them from the port, and must not make us call it taken.
            # (On Windows the option means something else: it lets a bind steal.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return
        except OSError:
            pass
    holder = ""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.pid:
                holder = f" by PID {conn.pid} ({psutil.Process(conn.pid).name()})"
                break
    raise PortInUse(
        f"port {port} on {host} is already in use{holder}; stop that process or "
        f"set another port in the config"
    )


def server_version(binary: str, timeout_s: float = 30.0) -> str | None:
    """What `BINARY --version` prints (llama-server prints it on stderr)."""
    try:
        out = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            errors="replace",
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + "\n" + out.stderr).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-4:]) if lines else None


def spawn(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    secrets: Secrets | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessLog]:
    """Start a process we own, its stdout and stderr into `log_path` (so the log
    survives a crash of it or of us) with `secrets` replaced, the process dying with
    us where the OS allows; return it and its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = ProcessLog(log_path, secrets)
    kwargs: dict[str, object] = {"preexec_fn": die_with_parent()}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        # Own session: a Ctrl-C in the terminal reaches the collector, which then
        # stops the process itself after recording the interruption.
        kwargs["start_new_session"] = True
    try:
        process = subprocess.Popen(  # type: ignore[call-overload]
            argv,
            stdout=log.target,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            **kwargs,
        )
    except BaseException:
        log.close()
        raise
    log.started()
    return process, log


def stop_spawned(process: subprocess.Popen[bytes], log: ProcessLog | None, grace_s: float) -> int:
    """Stop what `spawn` started: terminate it and its children, kill it if it is
    still there after `grace_s`, close its log; return its exit code."""
    if process.poll() is None:
        terminate_tree(process.pid, grace_s)
    try:
        code = process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    if log is not None:
        with contextlib.suppress(OSError):
            log.close(grace_s)
    return code


def launch(
    spec: LaunchSpec,
    log_path: Path,
    clock: Callable[[], int] = time.perf_counter_ns,
    on_wait: Callable[[float], None] | None = None,
    on_started: Callable[[RunningServer], None] | None = None,
    secrets: Secrets | None = None,
) -> RunningServer:
    """Start the server and wait until /health says it is ready.

    `on_started` runs right after the process exists (to start telemetry, which
    needs the PID) and before the wait for health. `secrets` are replaced in its log
    as it is written."""
    check_port_free(spec.host, spec.port)
    launch_ns = clock()
    try:
        process, log = spawn(spec.argv, log_path, env=spec.env, cwd=spec.cwd, secrets=secrets)
    except FileNotFoundError as exc:
        raise EngineError(
            f"server binary not found: {spec.argv[0]}; install it or fix the command in the config"
        ) from exc
    except OSError as exc:
        raise EngineError(f"cannot start {spec.argv[0]}: {exc}") from exc
    server = RunningServer(spec, process, log_path, launch_ns, _log_handle=log)
    try:
        if on_started is not None:
            on_started(server)
        server.ready_ns = wait_healthy(server, clock, on_wait)
    except BaseException:
        server.stop(grace_s=5.0, clock=clock)
        raise
    return server


def wait_healthy(
    server: RunningServer,
    clock: Callable[[], int] = time.perf_counter_ns,
    on_wait: Callable[[float], None] | None = None,
) -> int:
    spec = server.spec
    url = server.base_url + spec.health_path
    deadline = time.monotonic() + spec.startup_timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while True:
            code = server.process.poll()
            if code is not None:
                tail = _tail(server.log_text())
                raise ServerExited(
                    f"server exited with code {code} while loading; last log line: {tail}"
                    f" (full log: {server.log_path})"
                )
            try:
                if http.get(url).status_code == 200:
                    return clock()
            except httpx.HTTPError:
                pass
            waited = spec.startup_timeout_s - (deadline - time.monotonic())
            if on_wait is not None:
                on_wait(waited)
            if time.monotonic() > deadline:
                raise ServerNotHealthy(
                    f"server did not answer {spec.health_path} with 200 within "
                    f"{spec.startup_timeout_s:g} s; raise startup_timeout_s or check the log "
                    f"{server.log_path}"
                )
            time.sleep(HEALTH_POLL_S)


def check_endpoint(
    base_url: str,
    health_paths: Sequence[str] = ("/health", "/v1/models"),
    headers: Mapping[str, str] | None = None,
) -> None:
    """For attach mode: fail early, clearly, when nothing answers at `base_url`.
    `headers`: the campaign's own (its API key), sent as with every other request."""
    # The URL's credentials go as Basic auth (collector.auth), and the message below
    # names the server without them.
    base_url, sent = url_credentials(base_url.rstrip("/"), headers)
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        last = ""
        for path in health_paths:
            try:
                if http.get(base_url + path, headers=sent).status_code < 500:
                    return
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
        raise ServerNotHealthy(
            f"nothing healthy answers at {base_url} ({last or 'HTTP 5xx'}); start the server "
            f"or fix --endpoint"
        )


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(empty log)"


def redact_logs(
    secrets: Secrets, paths: Iterable[Path | None], warn: Callable[[str], None]
) -> None:
    """Replace `secrets` in the logs kept on disk (a server's, its devices'), once the
    processes that wrote them have stopped: a server that prints its arguments or its
    environment must not leave a key in data/logs/ when the store's copy is redacted.
    Logs are written redacted already (`collector.process_log`); this catches the logs
    of a server left running by a killed collector (`collector.leftovers`), with the
    secrets its own command line and environment showed, and those of older versions.

    Bytes that are not UTF-8 are kept as they are. The redacted copy replaces the log
    in one step; where it cannot be written (a full disk), the log stays as it was and
    `warn` says so."""
    if not secrets:
        return
    for path in paths:
        if path is None:
            continue
        try:
            text = path.read_bytes().decode("utf-8", errors="surrogateescape")
        except OSError:
            continue  # never written, or gone
        if not secrets.found_in(text):
            continue
        redacted = secrets.text(text).encode("utf-8", errors="surrogateescape")
        partial = path.with_name(path.name + ".redacting")
        try:
            write_private(partial, redacted)  # the log's own mode: its user's alone
            os.replace(partial, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            warn(
                f"could not redact the secrets in {path} ({exc.strerror or exc}); "
                f"delete it or redact it by hand"
            )


def terminate_tree(pid: int, grace_s: float) -> None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
