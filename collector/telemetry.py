"""Background telemetry over a server's whole life, off the token path.

The sampler runs in its own process (spawned, so it behaves the same on
Windows and Linux): a sampling thread in the collector would compete for the
GIL with the streaming client and blur the token timestamps we are measuring.
It timestamps samples with `time.perf_counter_ns`, which on Linux
(CLOCK_MONOTONIC), Windows (QueryPerformanceCounter) and macOS is one
system-wide clock, so sample times compare directly with request times; the
sampler's first message reports its clock so the parent can check that.

The sampler never outlives the collector. The collector holds the only write
end of a pipe whose read end the sampler watches: `stop()` sends on it, and a
collector that dies in any way (SIGKILL, TerminateProcess, a crash) closes it,
which the sampler reads as end of file and exits. The same on Linux, macOS and
Windows; a check of the parent's PID once a second backs it up.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import Any

import psutil

from collector.nvml import Nvml

# How often to re-walk the process tree (a full /proc scan, ~2 ms), in samples:
# servers create their processes at start, so every 5 s at 10 Hz is plenty.
_TREE_REFRESH_EVERY = 50
# Samples are sent to the parent in batches: one queue write (and one wake-up
# of the queue's feeder thread) per batch instead of per sample.
_BATCH_EVERY = 10
# How often the sampler checks that its parent still runs (the pipe's end of
# file is the main signal; this covers a pipe end that leaked into another process).
_PARENT_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    t_ns: int
    proc_count: int | None
    rss_bytes: int | None
    cpu_percent: float | None
    sys_mem_used_bytes: int
    sys_cpu_percent: float
    gpu_mem_used_bytes: int | None
    gpu_proc_mem_bytes: int | None
    gpu_util_percent: float | None
    # The launched RPC device processes (collector.device): their memory is the
    # device's memory, as NVML's is a GPU's.
    device_rss_bytes: int | None
    device_cpu_percent: float | None
    # The collector process and this sampler (100 = one core): with the server's
    # and the device's, what is left of the machine's busy CPU is other processes'
    # (evidence.metrics: other_cpu_cores). None when neither could be read.
    collector_cpu_percent: float | None = None


def _yield_to_the_server() -> None:
    """Run the sampler at the lowest priority the OS gives a normal process.

    On a machine whose cores the server keeps busy, a sampler waking at normal
    priority preempts a compute thread, and every other thread of the graph
    waits for it at the next barrier: measured here, 10 samples a second cost
    the server 6.5 % of its decode rate. At the lowest priority the sample waits
    for a moment the scheduler can spare; its timestamp is taken when it runs, so
    the series stays exact, only less evenly spaced."""
    with contextlib.suppress(psutil.Error, OSError, AttributeError):
        me = psutil.Process()
        if hasattr(psutil, "IDLE_PRIORITY_CLASS"):  # Windows
            me.nice(psutil.IDLE_PRIORITY_CLASS)
        else:
            me.nice(19)
    # Linux's SCHED_IDLE is lower still than nice 19 (a fifth of its CPU weight): the
    # sampler then takes a spinning compute thread's core only when the scheduler has
    # little else to give it. It is not starved: CFS still runs it, later.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _tree(root: psutil.Process, known: dict[int, psutil.Process]) -> dict[int, psutil.Process]:
    # Reuse Process objects: cpu_percent() measures from the previous call on the same object.
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        members = [root]
    return {p.pid: known.get(p.pid, p) for p in members}


class _Parent:
    """The sampler's view of the collector that started it: the pipe it stops us
    through, and its PID (with its start time, so a reused PID is not mistaken
    for it)."""

    def __init__(self, control: Connection, pid: int) -> None:
        self.control = control
        self.pid = pid
        self.started: float | None = None
        with contextlib.suppress(psutil.Error):
            self.started = psutil.Process(pid).create_time()
        self.next_check = time.monotonic() + _PARENT_CHECK_S

    def wait(self, timeout: float) -> str | None:
        """Sleep up to `timeout`; "stop" when told to, "gone" when the parent died."""
        try:
            if wait([self.control], timeout):
                self.control.recv()  # the one message there is: stop
                return "stop"
        except (EOFError, OSError):  # the write end closed: the parent is gone
            return "gone"
        if time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + _PARENT_CHECK_S
            if not self.alive():
                return "gone"
        return None

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return self.started is None or process.create_time() == self.started
        except psutil.Error:
            return False


def _sampler_main(
    pid: int | None,
    device_pids: tuple[int, ...],
    interval_s: float,
    out: Any,
    control: Connection,
    parent_pid: int,
) -> None:
    """Entry point of the sampler process: sample until told to stop, or until the
    process that started it is gone."""
    parent = _Parent(control, parent_pid)
    _yield_to_the_server()
    out.put(("clock", time.perf_counter_ns()))
    nvml = Nvml()
    root: psutil.Process | None = None
    if pid is not None:
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            root = None
    procs: dict[int, psutil.Process] = {}
    devices = _primed(device_pids)
    collector = _CollectorCpu(parent_pid)
    psutil.cpu_percent(None)
    batch: list[Sample] = []
    tick = 0
    next_t = time.perf_counter()
    ended: str | None = None
    while ended is None:
        if root is not None and tick % _TREE_REFRESH_EVERY == 0:
            procs = _tree(root, procs)
            if tick == 0:
                for p in procs.values():
                    with contextlib.suppress(psutil.Error):
                        p.cpu_percent(None)
        batch.append(_sample(procs, devices, nvml, root is not None, collector))
        tick += 1
        if len(batch) >= _BATCH_EVERY:
            out.put(batch)
            batch = []
        next_t, delay = _next_sample(next_t, interval_s, time.perf_counter())
        ended = parent.wait(delay)
    nvml.close()
    if ended == "gone":
        # Nobody reads the queue any more: exit at once instead of waiting, at
        # exit, for its feeder thread to write into a pipe no one empties.
        out.cancel_join_thread()
        return
    if batch:
        out.put(batch)
    out.put(("end", time.perf_counter_ns()))


def _next_sample(previous_t: float, interval_s: float, now: float) -> tuple[float, float]:
    """(when the next sample is due, how long to wait for it), on perf_counter's clock.

    A sampler that fell behind (suspended laptop, or a busy box starving it at its low
    priority) skips the ticks it missed and waits a full interval: sampling again at
    once would give a span of a millisecond, over which CPU figures (counted in 10 ms
    ticks) read 0 % or well over 100 %."""
    next_t = previous_t + interval_s
    if next_t < now:
        next_t = now + interval_s
    return next_t, next_t - now


def _primed(pids: tuple[int, ...]) -> list[psutil.Process]:
    """The processes of `pids` that exist, their CPU counters started (psutil's
    cpu_percent measures from the previous call on the same object)."""
    found: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            process.cpu_percent(None)
            found.append(process)
    return found


def _measure(procs: list[psutil.Process]) -> tuple[int, int | None, float | None]:
    """(live processes, their summed RSS, their summed CPU %); None without a live one."""
    rss, cpu, alive = 0, 0.0, 0
    for p in procs:
        try:
            with p.oneshot():
                if p.status() == psutil.STATUS_ZOMBIE:
                    # Exited, not yet reaped: it has no memory left and would
                    # report an RSS of 0 as if measured.
                    continue
                resident = p.memory_info().rss
                if resident == 0:
                    # Exiting, its memory already released but not yet a zombie (seen
                    # on an RPC device sampled while it stops): gone, not 0 bytes.
                    continue
                rss += resident
                cpu += p.cpu_percent(None)
            alive += 1
        except psutil.Error:
            continue
    return (alive, rss, cpu) if alive else (0, None, None)


class _CollectorCpu:
    """The CPU % (100 = one core) of the collector process and this sampler since the
    previous reading. The sampler's own time comes from its process clock (about 1 us);
    the collector's from psutil's cpu_times, one read of /proc/PID/stat on Linux (about
    40 us). Two Process.cpu_percent calls cost 125 us a sample, measured here, a sixth
    of the sampler's whole cost at 10 Hz."""

    def __init__(self, parent_pid: int) -> None:
        self.parent: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self.parent = psutil.Process(parent_pid)
        self.last = self._read()

    def _read(self) -> tuple[float, float] | None:
        """(wall seconds, CPU seconds of both), None once the collector cannot be read."""
        if self.parent is None:
            return None
        try:
            times = self.parent.cpu_times()
        except psutil.Error:
            self.parent = None
            return None
        return time.perf_counter(), time.process_time() + times.user + times.system

    def percent(self) -> float | None:
        now = self._read()
        last, self.last = self.last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return 100.0 * (now[1] - last[1]) / (now[0] - last[0])


def _sample(
    procs: dict[int, psutil.Process],
    devices: list[psutil.Process],
    nvml: Nvml,
    watching: bool,
    collector: _CollectorCpu | None = None,
) -> Sample:
    t_ns = time.perf_counter_ns()
    alive, rss, cpu = _measure(list(procs.values())) if watching else (0, None, None)
    _, device_rss, device_cpu = _measure(devices) if devices else (0, None, None)
    collector_cpu = collector.percent() if collector else None
    vm = psutil.virtual_memory()
    gpu = nvml.sample(set(procs)) if nvml.available else None
    return Sample(
        t_ns=t_ns,
        proc_count=alive if watching else None,
        rss_bytes=rss,
        cpu_percent=cpu,
        sys_mem_used_bytes=int(vm.total - vm.available),
        sys_cpu_percent=psutil.cpu_percent(None),
        gpu_mem_used_bytes=gpu.mem_used_bytes if gpu else None,
        gpu_proc_mem_bytes=gpu.proc_mem_bytes if gpu else None,
        gpu_util_percent=gpu.util_percent if gpu else None,
        device_rss_bytes=device_rss,
        device_cpu_percent=device_cpu,
        collector_cpu_percent=collector_cpu,
    )


class TelemetrySampler:
    """Start with `start()`, collect with `drain()`, end with `stop()`."""

    def __init__(
        self, pid: int | None, hz: float = 10.0, device_pids: tuple[int, ...] = ()
    ) -> None:
        self.pid = pid
        self.interval_s = 1.0 / hz
        ctx = mp.get_context("spawn")
        self._queue: Any = ctx.Queue()
        # One way, parent to child. Only this process holds the write end (the
        # child gets the read end alone), so it closes when this process dies.
        self._control_read, self._control = ctx.Pipe(duplex=False)
        self._proc: SpawnProcess | None = ctx.Process(
            target=_sampler_main,
            args=(
                pid,
                device_pids,
                self.interval_s,
                self._queue,
                self._control_read,
                os.getpid(),
            ),
            name="telemetry-sampler",
            daemon=True,
        )
        self.child_clock_ns: int | None = None

    def start(self) -> None:
        assert self._proc is not None
        self._proc.start()
        # The child has its copy of the read end now; ours would only keep the pipe
        # open on our side.
        self._control_read.close()

    def drain(self) -> list[Sample]:
        """Every sample taken since the last drain, in order."""
        samples: list[Sample] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return samples
            if isinstance(item, list):
                samples += item
            elif isinstance(item, tuple) and item[0] == "clock":
                self.child_clock_ns = int(item[1])

    def stop(self) -> list[Sample]:
        """Stop sampling and return the samples not yet drained."""
        proc, self._proc = self._proc, None
        if proc is None:
            return []
        with contextlib.suppress(OSError):  # a sampler that already died
            self._control.send("stop")
        samples: list[Sample] = []
        deadline = time.monotonic() + 5.0
        # Drain while waiting: a child blocked on a full pipe would never exit.
        while proc.is_alive() and time.monotonic() < deadline:
            samples += self.drain()
            proc.join(0.05)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
        samples += self.drain()
        self._queue.close()
        self._control.close()
        self._control_read.close()  # closed at start(); here too for one never started
        return samples
