"""Processes a test starts or meets: its own, ended whatever happens, and those it did not
start (a collector's server, device or sampler), waited on."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


@contextmanager
def reaped(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """`process` for the block; after it, however it ends, killed if still running,
    waited for, and its pipes closed."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def exited_within(process: psutil.Process, seconds: float) -> bool:
    """Whether `process` exits within `seconds`. Exited means gone or a zombie: its new
    parent (init, a container's PID 1) reaps it when it gets round to it, which is not the
    process's doing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
