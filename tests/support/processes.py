"""Waiting on processes a test did not start itself (a collector's server, device or
sampler)."""

from __future__ import annotations

import time

import psutil


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
