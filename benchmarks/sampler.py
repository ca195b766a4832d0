"""The telemetry sampler's own CPU use at 10 Hz.

The sampler runs in its own spawned process (collector.telemetry); its CPU
time is read from the OS for that process alone, from its first sample on, so
the interpreter's start-up is not counted: what is measured is the steady
cost of watching a server. The watched process is a stand-in that sleeps, so
the cost is the sampler's and not the server's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.results import Measurement, judged, reference
from collector.telemetry import Sample, TelemetrySampler

HZ = 10.0


def _sampler_process(known: set[int]) -> psutil.Process:
    """The sampler child among this process's new children (not the resource tracker
    that multiprocessing may start alongside it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process().children():
            if child.pid in known:
                continue
            try:
                if any("spawn_main" in part for part in child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise RuntimeError("the telemetry sampler process did not appear")


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds of every thread of `process` (the sampler's queue has a feeder
    thread). Linux's schedstat counts ns; psutil's times count 10 ms ticks, too
    coarse for a process that runs ~1 ms in a second."""
    try:
        total = 0
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        times = process.cpu_times()
        return float(times.user + times.system)


def measure_sampler(quick: bool) -> list[Measurement]:
    seconds = 3.0 if quick else 10.0
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        known = {p.pid for p in psutil.Process().children()}
        sampler = TelemetrySampler(watched.pid, HZ)
        sampler.start()
        try:
            child = _sampler_process(known)
            samples: list[Sample] = []
            deadline = time.monotonic() + 60
            while not samples and time.monotonic() < deadline:
                samples = sampler.drain()
                time.sleep(0.01)
            cpu0, wall0 = _cpu_s(child), time.perf_counter()
            first_t = samples[-1].t_ns if samples else time.perf_counter_ns()
            window: list[Sample] = []
            while time.perf_counter() - wall0 < seconds:
                time.sleep(0.25)
                window += sampler.drain()
            cpu, wall = _cpu_s(child) - cpu0, time.perf_counter() - wall0
        finally:
            window_rest = sampler.stop()
    finally:
        watched.kill()
        watched.wait()
    taken = [s for s in window + window_rest if s.t_ns > first_t]
    rate = len(taken) / wall
    pct = 100 * cpu / wall
    return [
        judged(
            "telemetry sampler CPU at 10 Hz",
            pct,
            "% of one core",
            "< 1 % of one core",
            cpu_s=cpu,
            wall_s=wall,
            samples=len(taken),
            note=f"{rate:.1f} samples/s over {wall:.0f} s, watching one process",
        ),
        reference("telemetry sample rate", rate, "samples/s", samples=len(taken), wall_s=wall),
    ]
