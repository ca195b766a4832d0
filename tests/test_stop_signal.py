"""A signal that stops a process started by the tests (the calibration server run as
`python -m calibration.server`, a collector's stand-in server) stops it wherever it lands.

Python runs a signal handler in the main thread between two bytecodes, whatever that
thread was doing. The server's main thread waited on a threading.Event set by its
SIGTERM handler; an Event's wait holds the Event's lock for a few bytecodes, so a
handler that ran there blocked on that lock for ever. Seen as a flake in a loaded test
run: a server outlived its killed collector (tests/test_killed_run.py), its
parent-death SIGTERM having landed in that window.

The harness below runs the handler at every line the waiting thread executes (a trace
function, as the interpreter would between bytecodes), one position per run, and
counts a run that does not end as stuck."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from calibration.server import StopSignal

POSITIONS = 80  # line events to try; a wait's loop runs through fewer than this
STUCK_S = 0.5


def _stuck_at(wait: Callable[[], None], handler: Callable[[], None], position: int) -> bool:
    """Run `wait` in a thread with `handler` called at its `position`-th line event
    (a signal landing there); whether it failed to end within STUCK_S."""
    seen = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "line":
            seen += 1
            if seen == position:
                handler()
        return trace

    def run() -> None:
        sys.settrace(trace)
        try:
            wait()
        finally:
            sys.settrace(None)

    # A daemon: a stuck one (the control below) must not keep the test run alive.
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(STUCK_S)
    return thread.is_alive()


def test_the_servers_stop_signal_ends_its_wait_wherever_it_lands() -> None:
    stuck = []
    for position in range(1, POSITIONS + 1):
        stop = StopSignal(poll_s=0.001)
        if _stuck_at(stop.wait, lambda s=stop: s.handler(signal.SIGTERM, None), position):
            stuck.append(position)
    assert stuck == []


def test_the_harness_finds_the_event_that_hung_the_server() -> None:
    # The control: the wait the server had, `while not stop.wait(0.5)` with the handler
    # calling stop.set(), hangs at some position (what the test above would find).
    for position in range(1, POSITIONS + 1):
        stop = threading.Event()

        def wait(stop: threading.Event = stop) -> None:
            while not stop.wait(0.01):
                pass

        if _stuck_at(wait, stop.set, position):
            return
    raise AssertionError("no position hung a threading.Event: the harness tests nothing")
