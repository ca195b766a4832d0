"""The telemetry sampler: a real child process sampling a real process tree."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from collector.nvml import Nvml
from collector.telemetry import TelemetrySampler, _sample

# Timing or CPU-share asserts: run alone (the serial pass), never beside other tests.
pytestmark = pytest.mark.serial


def test_sampler_watches_a_process_tree_on_our_clock() -> None:
    # A parent with a child that holds ~50 MB: the tree's RSS must include it.
    script = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', "
        "'import time; x = bytearray(50_000_000); time.sleep(30)']); time.sleep(30)"
    )
    tree = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for_tree_rss(tree.pid, 50_000_000)  # the child has allocated
        before = time.perf_counter_ns()
        sampler = TelemetrySampler(tree.pid, hz=20)
        sampler.start()
        time.sleep(1.5)
        first = sampler.drain()
        time.sleep(0.5)
        rest = sampler.stop()
        after = time.perf_counter_ns()
    finally:
        tree.kill()
        tree.wait()
    samples = first + rest
    assert len(samples) >= 10
    assert sampler.child_clock_ns is not None and before < sampler.child_clock_ns < after
    times = [s.t_ns for s in samples]
    assert times == sorted(times) and before < times[0] and times[-1] < after
    assert max(s.proc_count or 0 for s in samples) >= 2
    assert max(s.rss_bytes or 0 for s in samples) > 50_000_000
    assert all(s.sys_mem_used_bytes > 0 for s in samples)
    if sys.platform.startswith("linux"):
        assert all(s.gpu_mem_used_bytes is None for s in samples) or os.path.exists("/dev/nvidia0")


def _wait_for_tree_rss(pid: int, size: int, timeout_s: float = 30.0) -> None:
    """Until the process `pid` and its children hold more than `size` bytes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
            if sum(p.memory_info().rss for p in tree) > size:
                return
        time.sleep(0.05)
    pytest.fail(f"process {pid} and its children never held {size} bytes")


def test_sampler_of_a_dead_process_records_absence() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    sampler = TelemetrySampler(proc.pid, hz=20)
    sampler.start()
    time.sleep(0.5)
    samples = sampler.stop()
    assert samples and all(s.rss_bytes is None for s in samples)


def test_an_exited_unreaped_server_is_absent_not_zero() -> None:
    # Between a server's exit and its reaping it is a zombie, whose RSS reads 0:
    # that must be recorded as "no process", never as 0 bytes measured.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        target = psutil.Process(proc.pid)
        time.sleep(0.8)  # exited; not waited for, so still a zombie
        assert target.status() == psutil.STATUS_ZOMBIE
        sample = _sample({proc.pid: target}, [], Nvml(), watching=True)
        assert sample.proc_count == 0 and sample.rss_bytes is None
    finally:
        proc.wait()


class _Exiting:
    """A process caught mid-exit: running, its memory already released (RSS 0). Real
    ones show up for a sample or two while a device stops; a stub, because no test can
    time a real exit to land between two /proc reads."""

    pid = 4242

    def oneshot(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def status(self) -> str:
        return psutil.STATUS_RUNNING

    def memory_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=0)

    def cpu_percent(self, interval: float | None) -> float:
        return 20.8


def test_a_process_mid_exit_is_absent_not_zero_bytes() -> None:
    # Seen in a quick campaign: the last sample of a run, taken while its RPC device
    # stopped, stored device_rss_bytes = 0.
    sample = _sample({}, [_Exiting()], Nvml(), watching=False)  # type: ignore[list-item]
    assert sample.device_rss_bytes is None and sample.device_cpu_percent is None


def test_the_sampler_runs_below_every_compute_thread() -> None:
    # At nice 19 the sampler still cost the server about 1.5 % of its decode rate on 2
    # busy cores (sampler on / off 0.985 over 4 runs); at Linux's SCHED_IDLE, 1.00.
    known = {p.pid for p in psutil.Process().children()}
    sampler = TelemetrySampler(os.getpid(), hz=10)
    sampler.start()
    try:
        deadline = time.monotonic() + 30
        while not sampler.drain() and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = [p for p in psutil.Process().children() if p.pid not in known]
        assert child.nice() == 19
        if sys.platform.startswith("linux"):
            assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
    finally:
        sampler.stop()
