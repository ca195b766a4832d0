"""Watch a launched server's log while it runs: when each model load began and ended.

A server that loads the model for every request (Shimmy 1.7.0) hides a load in
each request's time to first token. The server writes its log itself (stdout and
stderr straight into `data/logs/<server_run_id>.log`, see `collector.server`), so
the collector learns when a load happens only by reading that file as it grows.
A thread polls it (every 20 ms: one `read` that returns nothing when the server
wrote nothing, which is all a quiet server costs) and stamps, with the clock of
`requests.sent_ns` (`time.perf_counter_ns`), each load's first and last line as it
sees them; `collector.loader_log.LoadSplitter` says which lines those are. A stamp
is when the line was seen: at most one poll interval after it was written.

Plain reads of a regular file: the same on Linux, macOS and Windows (no inotify).
The thread holds the GIL only to split the new lines, microseconds per poll, so it
does not blur the streaming client's token timestamps (the reason telemetry runs in
a process of its own: psutil's /proc walks take milliseconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from collector.loader_log import LoadSplitter, loader_line

__all__ = ["POLL_S", "LogWatcher", "SeenLoad"]

POLL_S = 0.02
# The most read per poll: a `-lv 5` load is ~0.5 MiB; a larger burst is read on
# the next polls instead of in one long hold of the GIL.
_READ_MAX = 1 << 20


@dataclass
class SeenLoad:
    """One model load as the collector saw it appear (a `server_loads` row)."""

    seq: int  # 0 for the first load in the log, then 1, 2, ...
    first_line_ns: int
    log_offset: int  # byte offset of its first line in the file
    last_line_ns: int | None = None  # None until its last line is seen


class LogWatcher:
    """Tail `path` in a thread; the loads seen so far, handed out once each by `take`."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], int] = time.perf_counter_ns,
        poll_s: float = POLL_S,
    ) -> None:
        self.path = path
        self._clock = clock
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: BinaryIO | None = None
        self._consumed = 0  # bytes of complete lines read so far
        self._partial = b""
        self._splitter = LoadSplitter()
        self._loads: list[SeenLoad] = []
        self._taken = 0
        self.polls = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._poll_s):
            self.poll()

    def poll(self) -> None:
        """Read what the server wrote since the last poll (also called to catch up
        right before a request's loads are taken)."""
        with self._lock:
            self.polls += 1
            self._read(final=False)

    def _read(self, *, final: bool) -> None:
        if self._handle is None:
            try:
                self._handle = self.path.open("rb")
            except OSError:
                return  # not created yet: the server has not started
        data = self._handle.read(_READ_MAX)
        if not data and not (final and self._partial):
            return
        now = self._clock()
        lines = (self._partial + data).split(b"\n")
        # The last piece has no line end yet (the server is mid-line), unless this
        # is the final read of a stopped server.
        self._partial = b"" if final else lines.pop()
        offset = self._consumed
        for raw in lines:
            event = self._splitter.feed(loader_line(raw.decode("utf-8", errors="replace")))
            if event == "start":
                self._loads.append(SeenLoad(len(self._loads), now, offset))
            elif event == "end" and self._loads:
                self._loads[-1].last_line_ns = now
            offset += len(raw) + 1
        self._consumed = offset

    def take(self) -> list[SeenLoad]:
        """The loads not handed out yet, after catching up with the file (so a load
        whose lines the server wrote since the last poll is among them); each load
        is handed out once."""
        self.poll()
        with self._lock:
            new = self._loads[self._taken :]
            self._taken = len(self._loads)
            return new

    def stop(self) -> list[SeenLoad]:
        """Stop the thread, read the file to its end, and hand out every load left."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            while self._read_more():
                pass
            if self._handle is not None:
                self._read(final=True)
                self._handle.close()
                self._handle = None
            rest = self._loads[self._taken :]
            self._taken = len(self._loads)
            return rest

    def _read_more(self) -> bool:
        before = self._consumed + len(self._partial)
        self._read(final=False)
        return self._consumed + len(self._partial) > before
