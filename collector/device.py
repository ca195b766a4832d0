"""The offload device when it is not a GPU: llama.cpp's RPC device.

`ggml-rpc-server` is a separate process that holds tensors and computes on
them; llama-server started with `--rpc HOST:PORT -ngl 99` offloads layers to it
exactly as it would to CUDA0 (same scheduler, graph splits and host<->device
copies), and `--cpu-moe` / `--n-cpu-moe K` keep the expert tensors in
llama-server's own host buffers. So on any machine the expert tensors really
leave the device, and the device's memory is a process we can watch: its
resident set is what a GPU would hold.

Each server run gets its own fresh rpc-servers (launched here, on free ports)
and stops them with the server, or names rpc-servers already running elsewhere
(those are used, never measured or stopped).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from collector import device_limit
from collector.config import DeviceSection
from collector.process_log import ProcessLog
from collector.server import (
    check_port_free,
    fill_placeholders,
    free_port,
    spawn,
    stop_spawned,
)
from common.errors import EngineError, PortInUse, ServerExited, ServerNotHealthy
from common.secrets import Secrets

DEVICE_SOURCE = "RPC device process"
_POLL_S = 0.05


def default_threads(cores: int | None = None) -> tuple[int, int]:
    """(rpc-server threads, llama-server threads) that share the cores fairly.

    llama.cpp's compute threads spin while they wait, so two processes that
    together ask for more threads than there are cores starve each other exactly
    when the graph is split between them (measured here on 2 cores: `-t 2` each
    made --cpu-moe 3x slower than `-t 1` each). Half the cores each, summing to
    at most the cores, keeps both configurations' comparison about offload, not
    about oversubscription."""
    n = cores or os.cpu_count() or 2
    device = max(1, n // 2)
    return device, max(1, n - device)


@dataclass
class RpcServer:
    """One rpc-server of a server run: launched by us (process, log) or attached."""

    endpoint: str
    threads: int | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    argv: list[str] | None = None
    # How the device is held to its memory size (collector.device_limit), when it is.
    memory_limit: dict[str, Any] | None = None
    _log_handle: ProcessLog | None = field(default=None, repr=False)

    @property
    def launched(self) -> bool:
        return self.process is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        """Whether a launched rpc-server still runs (an attached one is assumed up)."""
        return self.process is None or self.process.poll() is None

    def log_text(self) -> str:
        if self.log_path is None:
            return ""
        if self._log_handle is not None and not self.alive():
            self._log_handle.settle(1.0)  # the last lines it wrote may be in the relay still
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Stop a launched rpc-server; return its exit code (None when attached)."""
        if self.process is None:
            return None
        return stop_spawned(self.process, self._log_handle, grace_s)

    def facts(self) -> dict[str, Any]:
        """What `server_runs.device` keeps of this rpc-server."""
        return {
            "endpoint": self.endpoint,
            "launched": self.launched,
            "pid": self.pid,
            "threads": self.threads,
            "argv": self.argv,
            "exit_code": None if self.process is None else self.process.returncode,
            "memory_limit": self.memory_limit,
        }


def rpc_command(device: DeviceSection, binary: Path | None) -> list[str]:
    """The rpc-server command template: the config's, else the embedded engine's."""
    if device.command:
        return list(device.command)
    if binary is None:
        raise EngineError(
            "device kind 'rpc' needs the embedded engine's ggml-rpc-server or a "
            "[device] command in the config"
        )
    return ["{rpc_server}", "-H", "{host}", "-p", "{port}", "-t", "{threads}"]


def _line_buffered(argv: list[str]) -> list[str]:
    # rpc-server prints its banner with printf; into a file that stays in a
    # stdio buffer and is lost when we terminate it, so the kept log would be
    # empty. stdbuf (coreutils) makes stdout line-buffered where it exists.
    stdbuf = shutil.which("stdbuf") if sys.platform != "win32" else None
    return [stdbuf, "-oL", "-eL", *argv] if stdbuf else argv


def launch_rpc_servers(
    device: DeviceSection,
    binary: Path | None,
    log_dir: Path,
    run_id: str,
    secrets: Secrets | None = None,
) -> list[RpcServer]:
    """Start the config's local rpc-servers and wait until each accepts connections;
    return them and the attached endpoints, in `--rpc` order. `secrets` are replaced
    in their logs as they are written (each inherits the collector's environment)."""
    servers: list[RpcServer] = []
    threads = device.threads or default_threads()[0]
    template = rpc_command(device, binary)
    try:
        for index in range(device.launch):
            servers.append(
                _launch_one(
                    device,
                    template,
                    binary,
                    threads,
                    log_dir / f"{run_id}.rpc{index}.log",
                    secrets,
                )
            )
    except BaseException:
        for server in servers:
            server.stop()
        raise
    servers += [RpcServer(endpoint) for endpoint in device.endpoints]
    return servers


def _launch_one(
    device: DeviceSection,
    template: list[str],
    binary: Path | None,
    threads: int,
    log_path: Path,
    secrets: Secrets | None,
) -> RpcServer:
    port = free_port(device.host)
    values = {
        "rpc_server": str(binary) if binary else "ggml-rpc-server",
        "host": device.host,
        "port": str(port),
        "threads": str(threads),
    }
    argv = fill_placeholders(template, values)
    if shutil.which(argv[0]) is None:
        # Checked here: behind stdbuf a missing program would look like a crash.
        raise EngineError(
            f"cannot start the RPC device {argv[0]}: no such program; build the engine "
            f"(`moe-evidence engine`) or fix [device] command"
        )
    # Taken already (another program, or a race since the pick): say so, do not
    # mistake whoever listens there for the device.
    check_port_free(device.host, port)
    env = {**os.environ, **device_limit.HELD_ENV} if device.memory is not None else None
    try:
        process, log = spawn(_line_buffered(argv), log_path, env=env, secrets=secrets)
    except OSError as exc:
        raise EngineError(
            f"cannot start the RPC device {argv[0]}: {exc}; build the engine "
            f"(`moe-evidence engine`) or fix [device] command"
        ) from exc
    server = RpcServer(f"{device.host}:{port}", threads, process, log_path, argv, _log_handle=log)
    try:
        _wait_listening(server, device.host, port, device.startup_timeout_s)
        if device.memory is not None:
            # Once it listens: its idle address space is then known, and it allocates
            # nothing before a client asks.
            assert process.pid is not None
            server.memory_limit = device_limit.hold_to_size(process.pid, device.memory, threads)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_listening(server: RpcServer, host: str, port: int, timeout_s: float) -> None:
    """Wait until the device process itself listens on `port` (asked of the OS,
    not by connecting: another program on that port would answer a probe)."""
    deadline = time.monotonic() + timeout_s
    assert server.process is not None
    watched = psutil.Process(server.process.pid)
    while True:
        code = server.process.poll()
        if code is not None:
            if "Failed to create server socket" in server.log_text():
                raise PortInUse(
                    f"port {port} on {host} is already in use: the RPC device could not "
                    f"bind it; stop what holds it, or run again (each run picks a free port)"
                )
            tail = [ln for ln in server.log_text().splitlines() if ln.strip()]
            raise ServerExited(
                f"the RPC device (ggml-rpc-server) exited with code {code} while starting: "
                f"{tail[-1][:300] if tail else '(empty log)'} (log: {server.log_path})"
            )
        if _listens(watched, port):
            return
        if time.monotonic() > deadline:
            raise ServerNotHealthy(
                f"the RPC device did not listen on {host}:{port} within {timeout_s:g} s; "
                f"see {server.log_path}"
            )
        time.sleep(_POLL_S)


def _listens(process: psutil.Process, port: int) -> bool:
    with contextlib.suppress(psutil.Error):
        for conn in process.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return True
    return False


_ALLOC_FAILED = re.compile(
    r"insufficient memory \(attempted to allocate\s*(?P<mb>[0-9.]+) MB\)|"
    r"failed to allocate buffer of size (?P<bytes>[0-9]+)"
)


def failure_hint(servers: list[RpcServer]) -> str | None:
    """Why the launched devices made a server load fail, when their logs say: a
    device out of memory, or one that died."""
    for server in servers:
        text = server.log_text()
        match = _ALLOC_FAILED.search(text)
        if match:
            size = (
                f"{float(match['mb']):.1f} MB"
                if match["mb"]
                else f"{int(match['bytes']) / 2**20:.1f} MiB"
            )
            return (
                f"the RPC device {server.endpoint} ran out of memory (could not allocate "
                f"{size}); free memory on its host or keep more expert layers on the CPU "
                f"(--n-cpu-moe K)"
            )
        if not server.alive():
            assert server.process is not None
            return f"the RPC device {server.endpoint} exited with code {server.process.returncode}"
    return None


def rss_bytes(servers: list[RpcServer]) -> int | None:
    """Resident memory of the launched rpc-servers now (None when none runs)."""
    total, seen = 0, 0
    for server in servers:
        if server.pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(server.pid).memory_info().rss
            seen += 1
    return total if seen else None
