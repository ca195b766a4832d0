"""The calibrated stream server as a separate process, so it never shares the
collector's GIL: its send stamps and the collector's arrival stamps are taken
by two processes on one system-wide monotonic clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.request import creative_writing
from calibration.scenario import Scenario, StreamRecord

ROOT = Path(__file__).resolve().parents[1]

PARAMS = creative_writing("calibration")


@dataclass(frozen=True)
class ServerProcess:
    base_url: str
    pid: int

    def last(self) -> StreamRecord:
        """The server's record of the last generation request (its send stamps)."""
        response = httpx.get(f"{self.base_url}/_calibration/last", timeout=10.0, trust_env=False)
        response.raise_for_status()
        return StreamRecord.from_dict(response.json())


@contextmanager
def calibrated_server(scenario: Scenario, spin_us: float = 500.0) -> Iterator[ServerProcess]:
    """`python -m calibration.server` on a free loopback port (the server
    binds port 0 and prints the one it got, so no other process can take it first)."""
    with tempfile.TemporaryDirectory(prefix="moe-perf-") as tmp:
        path = Path(tmp) / "scenario.json"
        path.write_text(json.dumps(scenario.to_dict()), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [
            sys.executable,
            "-m",
            "calibration.server",
            "--port",
            "0",
            "--scenario",
            str(path),
            "--spin-us",
            str(spin_us),
        ]
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("listening on "):
                proc.kill()
                _, err = proc.communicate(timeout=10)
                raise RuntimeError(f"calibrated server did not start: {line or err.strip()}")
            yield ServerProcess(line.split()[-1], proc.pid)
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=10)
