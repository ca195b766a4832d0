"""Ctrl-C as a latched request, not only an exception.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be,
and a library may turn that exception into one of its own or drop it: DuckDB stops a
query and raises RuntimeError("Query interrupted"), fails `register` with
InvalidInputException("... failed: KeyboardInterrupt"), and fails the next statement
of the aborted transaction with TransactionException. A campaign that met one of those
was stored `failed`, and one whose interrupt was lost ran to its end (exit 0 after
Ctrl-C, seen in a loaded test run). So the handler also records the request: whatever
error follows it is read as the interruption, and the campaign checks the latch before
each request.

SIGTERM (and SIGHUP where it exists) count as Ctrl-C, so a campaign killed by a job
runner still stops its server and marks itself interrupted (servers run in their own
process group and would not get the signal).
"""

from __future__ import annotations

import signal
import threading

_REQUESTED = threading.Event()


def _handler(signum: int, frame: object) -> None:
    _REQUESTED.set()
    raise KeyboardInterrupt


def install() -> None:
    """Latch Ctrl-C, SIGTERM and SIGHUP from now on (the command line's main thread)."""
    _REQUESTED.clear()
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, _handler)


def requested() -> bool:
    """Whether an interrupt arrived since `install`."""
    return _REQUESTED.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt arrived, even one a library swallowed."""
    if _REQUESTED.is_set():
        raise KeyboardInterrupt
