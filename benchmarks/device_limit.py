"""How exact the RPC device's memory limit is: what it admits against what it is set to.

`--device-memory SIZE` holds each rpc-server to SIZE by an address-space limit
(collector.device_limit). For three configurations of the embedded model (every
expert on the CPU, K = 20, none) this finds by bisection the smallest SIZE at which
the server loads and answers one request, and sets it against the device buffers
the loader log reports for that configuration: the gap is the rpc-server's own
working memory, which comes out of the size as a GPU driver's does. The advisor's
margin on the RPC device (collector.advisor) must cover it.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.results import Measurement, judged, not_measured
from collector.advisor import RPC_MARGIN_MIN
from collector.device_limit import hold_to_size, supported
from collector.embedded import ensure_embedded_model
from collector.engine import EngineBuild, cached_engine
from collector.server import free_port
from common.sizes import MIB

CONFIGURATIONS = {"cpu-moe": ["--cpu-moe"], "n-cpu-moe-20": ["--n-cpu-moe", "20"], "baseline": []}
_DEVICE_BUFFER = re.compile(r"RPC0\S* (?:model|KV|compute) buffer size =\s+([0-9.]+) MiB")
_STEP = 0.25 * MIB  # bisection ends when the interval is this narrow


def _serves(engine: EngineBuild, model: Path, args: list[str], size: int, log: Path) -> bool:
    """Whether the server loads `model` on an RPC device held to `size` and answers."""
    port = free_port("127.0.0.1")
    device = subprocess.Popen(
        [str(engine.rpc_server), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        watched = psutil.Process(device.pid)
        deadline = time.monotonic() + 30
        while not any(c.status == psutil.CONN_LISTEN for c in watched.net_connections("tcp")):
            if time.monotonic() > deadline or device.poll() is not None:
                return False
            time.sleep(0.05)
        hold_to_size(device.pid, size, threads=1)
        http_port = free_port("127.0.0.1")
        with log.open("wb") as out:
            server = subprocess.Popen(
                [
                    str(engine.server), "-m", str(model), "--host", "127.0.0.1",
                    "--port", str(http_port), "-np", "1", "-c", "2048", "-fit", "off",
                    "-ngl", "99", "-t", "1", "-lv", "4", "--rpc", f"127.0.0.1:{port}", *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=60, trust_env=False) as http:
            while server.poll() is None and time.monotonic() < deadline:
                try:
                    if http.get(f"{base}/health").status_code == 200:
                        answer = http.post(
                            f"{base}/v1/chat/completions",
                            json={
                                "messages": [{"role": "user", "content": "Hello"}],
                                "max_tokens": 8,
                            },
                        )
                        return answer.status_code == 200 and device.poll() is None
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        return False
    finally:
        for process in (server, device):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)


def _device_buffers(log: Path) -> float:
    return sum(float(m) for m in _DEVICE_BUFFER.findall(log.read_text(errors="replace")))


def measure_device_limit(quick: bool) -> list[Measurement]:
    """Per configuration: the smallest size it runs at, less its device buffers (MiB)."""
    names = [f"device limit gap, {c}" for c in CONFIGURATIONS]
    target = f"<= {RPC_MARGIN_MIN / MIB:g} MiB (the advisor's smallest RPC margin)"
    engine = cached_engine()
    why = supported() or (None if engine else "the engine is not built yet; run it first")
    if why or engine is None:
        return [not_measured(n, "MiB", why or "no engine", target) for n in names]
    model = ensure_embedded_model()
    out = []
    chosen = dict(list(CONFIGURATIONS.items())[:1]) if quick else CONFIGURATIONS
    with tempfile.TemporaryDirectory(prefix="moe-limit-") as tmp:
        for label, args in chosen.items():
            log = Path(tmp) / f"{label}.log"
            if not _serves(engine, model, args, 1 << 30, log):
                out.append(not_measured(f"device limit gap, {label}", "MiB", "no load at 1 GiB"))
                continue
            buffers = _device_buffers(log) * MIB
            low, high = int(buffers) - 4 * MIB, int(buffers) + 16 * MIB
            while high - low > _STEP:
                middle = (low + high) // 2
                if _serves(engine, model, args, middle, log):
                    high = middle
                else:
                    low = middle
            out.append(
                judged(
                    f"device limit gap, {label}",
                    (high - buffers) / MIB,
                    "MiB",
                    target,
                    device_buffers_mib=round(buffers / MIB, 2),
                    smallest_size_mib=round(high / MIB, 2),
                )
            )
    return out
