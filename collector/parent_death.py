"""A launched server dies with the collector that launched it, where the OS can say so.

A collector killed outright (SIGKILL, an out-of-memory kill) stops nothing: the server
it launched would run on, orphaned, holding its port, its memory (a GPU's, on a real
box) and its API key in its command line. On Linux the child asks the kernel, between
fork and exec, to send it SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`); the
request survives exec, so llama-server or Shimmy themselves get the signal and stop as
on a Ctrl-C.

Elsewhere (macOS, Windows) nothing is asked and nothing fails: a server left behind
there is found and stopped at the next `collect` on that store (`collector.leftovers`),
and its log holds no secret meanwhile (`collector.process_log`).

Limits, as the kernel defines them: the signal follows the *thread* that spawned the
child, so servers are spawned from the thread that stops them (the campaign's); it
does not pass to the server's own children (a wrapper script should `exec` the
server); a server that ignores SIGTERM outlives the collector (`collector.leftovers`
stops it then).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    # Looked up once, here, not in the child: between fork and exec the child should
    # do as little as it can (another thread of ours may have held a lock at the fork).
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The symbols this process already has: libc's among them, glibc or musl.
        prctl: Callable[..., int] = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when this process dies, or None
    where the OS offers no such thing (then the child simply outlives us)."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            # It died between the fork and the prctl, so no signal will come: do not
            # start (the exception ends the child before exec).
            raise ChildProcessError("the collector died while starting this process")

    return preexec
