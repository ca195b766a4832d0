"""The telemetry sampler never outlives the collector, however the collector ends.

A collector killed outright (SIGKILL, the task manager, an out-of-memory kill)
runs no cleanup: its sampler child must notice on its own that its parent is
gone and exit, instead of sampling on, orphaned, for ever.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from tests.support.processes import exited_within, reaped

ROOT = Path(__file__).resolve().parents[1]

# A throwaway collector: starts a sampler, says the sampler's PID, then waits to be killed.
PARENT = textwrap.dedent(
    """
    import sys, time
    from collector.telemetry import TelemetrySampler

    sampler = TelemetrySampler(None, hz=20)
    sampler.start()
    while not sampler.drain():
        time.sleep(0.05)
    print(sampler._proc.pid, flush=True)
    time.sleep(120)
    """
)


def test_the_sampler_exits_when_its_parent_is_killed() -> None:
    argv = [sys.executable, "-c", PARENT]
    child: psutil.Process | None = None
    try:
        with reaped(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)) as parent:
            assert parent.stdout is not None
            child = psutil.Process(int(parent.stdout.readline()))
            assert child.is_running()
            parent.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no cleanup runs
            parent.wait(10)
            assert exited_within(child, 10), f"sampler {child.pid} outlived its killed parent"
    finally:
        if child is not None and child.is_running():
            child.kill()
