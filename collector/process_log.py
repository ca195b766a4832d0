"""Where a launched process's output goes: a log file only its user can read, with the
campaign's secrets replaced before a byte of it reaches the disk.

A server's log can hold a secret: llama-server prints its arguments at some verbosity,
a wrapper script prints its environment, a 401 echoes a key. Redacting the file once
the process has stopped (`collector.server.redact_logs`) is not enough: a collector
killed outright (SIGKILL, an out-of-memory kill) never gets there, and the store keeps
only redacted values, so nothing on the next start knows what to look for (the
server's own argv and environment would, but with `collector.parent_death` the server
dies with its collector and takes them along). So the secrets are replaced on the way
in: with anything to hide, the process writes into a pipe, and a thread of the
collector copies it into the file line by line, secrets replaced.

What that costs, and why it is still the better side to err on:
- The file still grows line by line, as `collector.log_watch` needs: a complete line
  is written as soon as it is read. Only a line without its end yet is held back (a
  loader's progress dots), and a long one only up to what could still be the start
  of a secret.
- A crash of the process loses nothing: the relay reads the pipe to its end. A kill
  of the collector loses at most what sat in the pipe unread, and then nothing more
  can reach the file unredacted; the process, which outlives it only where the OS
  has no parent-death signal, writes into a pipe no one reads.
- The relay is one more thread in the collector; it waits in `read` without the GIL
  and holds it only to search a few lines. A campaign with no secret at all keeps
  the plain path: the process's output straight into the file, no thread.

A secret that spans lines (a PEM key in a variable) is replaced line by line, each
line of it at least `MIN_TEXT_SECRET` long, so that no secret is ever cut by a line's
end, and a line's end is where a write may happen.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import BinaryIO

from common.secrets import MIN_TEXT_SECRET, REDACTED, Secrets

__all__ = ["ProcessLog", "open_private", "write_private"]

# The most the relay reads at once (a `-lv 5` model load prints ~0.5 MiB in a burst).
_CHUNK = 1 << 16
# A line without its end is held back up to this many bytes, then written but for a
# tail that could still be the start of a secret.
_HOLD_MAX = 1 << 16
_PRIVATE = 0o600


def open_private(path: Path) -> BinaryIO:
    """`path` opened for writing (created, or emptied), readable by its user alone
    (mode 0600 on POSIX; on Windows the user's default ACL, as any file they make)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, _PRIVATE)
    try:
        if os.name == "posix":
            os.fchmod(fd, _PRIVATE)  # a file that was there keeps its mode through O_TRUNC
        return os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write `data` as the whole of `path`, a file its user alone can read."""
    with open_private(path) as file:
        _write_all(file, data)


def _write_all(file: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:  # an unbuffered write may take part of it
        view = view[file.write(view) or 0 :]


class _Redactor:
    """Secrets replaced in a byte stream that arrives in pieces cut anywhere."""

    def __init__(self, secrets: Secrets) -> None:
        pieces = {
            piece.encode("utf-8", "surrogateescape")
            for value in secrets.values
            for piece in value.splitlines()
            if len(piece) >= MIN_TEXT_SECRET
        }
        ordered = sorted(pieces, key=lambda p: (-len(p), p))  # the longest wins, as in Secrets
        self._pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None
        self._longest = len(ordered[0]) if ordered else 0
        self._marker = REDACTED.encode()

    def __bool__(self) -> bool:
        return self._pattern is not None

    def redact(self, data: bytes) -> bytes:
        return self._pattern.sub(self._marker, data) if self._pattern is not None else data

    def split(self, data: bytes, final: bool) -> tuple[bytes, bytes]:
        """(what may be written now, redacted; what to hold back for the next piece)."""
        if final:
            return self.redact(data), b""
        cut = data.rfind(b"\n") + 1  # no secret piece holds a line end (see __init__)
        if len(data) - cut > _HOLD_MAX:
            cut = self._safe_cut(data)
        return self.redact(data[:cut]), data[cut:]

    def _safe_cut(self, data: bytes) -> int:
        # Past `cut`, a secret may have begun whose end has not arrived; before it every
        # match is whole already (none is longer than the longest). One that spans the
        # cut moves it to its end.
        cut = len(data) - (self._longest - 1)
        if self._pattern is not None:
            for match in self._pattern.finditer(data):
                if match.start() >= cut:
                    break
                if match.end() > cut:
                    return match.end()
        return cut


class ProcessLog:
    """A spawned process's log: pass `target` as its stdout and stderr, call `started`
    once it exists, `close` once it has exited.

    With secrets, `target` is a pipe's write end and a thread writes what comes out of
    it, redacted, into the file; without, `target` is the file itself."""

    def __init__(self, path: Path, secrets: Secrets | None = None) -> None:
        self.path = path
        self.error: OSError | None = None  # why the relay stopped writing (a full disk)
        self._file = open_private(path)
        self._redactor = _Redactor(secrets or Secrets())
        self._read_end: int | None = None
        self._write_end: int | None = None
        self._thread: threading.Thread | None = None
        if self._redactor:
            self._read_end, self._write_end = os.pipe()

    @property
    def target(self) -> int:
        """The file descriptor the process writes to."""
        return self._write_end if self._write_end is not None else self._file.fileno()

    def started(self) -> None:
        """The process holds its own copy of the pipe now: close ours (the relay sees
        the end of the output only once every writer has closed it) and relay."""
        if self._write_end is None:
            return
        os.close(self._write_end)
        self._write_end = None
        self._thread = threading.Thread(target=self._relay, name="log-relay", daemon=True)
        self._thread.start()

    def settle(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until what an exited process wrote is in the file."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write out the rest of the output and close the file."""
        if self._write_end is not None:  # the process never started
            os.close(self._write_end)
            self._write_end = None
        if self._thread is None and self._read_end is not None:
            os.close(self._read_end)
            self._read_end = None
        self.settle(timeout_s)
        if self._thread is None or not self._thread.is_alive():
            self._file.close()
        # Else a child of the process still holds the pipe; the relay closes the file
        # when that one exits too.

    def _relay(self) -> None:
        assert self._read_end is not None
        held = b""
        try:
            while True:
                try:
                    data = os.read(self._read_end, _CHUNK)
                except OSError:
                    data = b""  # the pipe failed: what is held is all there will be
                ready, held = self._redactor.split(held + data, final=not data)
                self._write(ready)
                if not data:
                    break
        finally:
            os.close(self._read_end)
            with contextlib.suppress(OSError):
                self._file.close()

    def _write(self, data: bytes) -> None:
        # After a failed write (a full disk) the pipe is still read to its end and
        # dropped: a process whose pipe fills up would block, mid-request.
        if not data or self.error is not None:
            return
        try:
            _write_all(self._file, data)
        except OSError as exc:
            self.error = exc
