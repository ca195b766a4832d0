"""collector.log_watch: model loads stamped as a server writes its log.

A thread stands in for the server: it writes a real-format loader log into a
file, one load at a time, as Shimmy 1.7.0 does once per request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from collector.log_watch import LogWatcher

# Timing or CPU-share asserts: run alone (the serial pass), never beside other tests.
pytestmark = pytest.mark.serial

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
OLD_LOAD = (FIXTURES / "shimmy-b6686-cuda-cpu-moe.log").read_bytes()
LV5_LOAD = (FIXTURES / "llama-server-b11434-lv5-cpu-moe.log").read_bytes()
END_LINE = b"llama_context: graph splits = "
# A load's first loader line: the device it loads to, before its metadata.
OPENER = OLD_LOAD.index(b"llama_model_load_from_file_impl")


def _write_loads(path: Path, load: bytes, times: int, gap_s: float, log: list[int]) -> None:
    """Append `load` `times` times, `gap_s` apart, split at its last line so the
    load visibly takes time; `log` gets the clock when each last line is flushed."""
    cut = load.index(END_LINE) if END_LINE in load else len(load) // 2
    with path.open("ab") as out:
        for _ in range(times):
            out.write(b"request served\n")
            out.write(load[:cut])
            out.flush()
            time.sleep(gap_s)
            out.write(load[cut:])
            out.flush()
            log.append(time.perf_counter_ns())
            time.sleep(gap_s)


def test_each_load_of_a_growing_log_is_stamped_at_its_first_and_last_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.log"
    path.write_bytes(b"")
    watcher = LogWatcher(path)
    watcher.start()
    flushed: list[int] = []
    writer = threading.Thread(target=_write_loads, args=(path, OLD_LOAD, 3, 0.15, flushed))
    writer.start()
    writer.join()
    loads = watcher.stop()

    assert [x.seq for x in loads] == [0, 1, 2]
    data = path.read_bytes()
    # Each load's offset is where its first loader line begins in the file.
    starts = [x.log_offset for x in loads]
    assert all(data[o:].startswith(b"llama_model_load_from_file_impl") for o in starts)
    assert starts == sorted(starts) and len(set(starts)) == 3
    for load, done in zip(loads, flushed, strict=True):
        assert load.last_line_ns is not None
        # The load took the writer's pause (0.15 s) between its first and last line.
        assert 0.10e9 < load.last_line_ns - load.first_line_ns < 0.5e9
        # Seen within a few polls of the flush (a busy 2-core machine adds some).
        assert -1e6 < load.last_line_ns - done < 0.2e9


def test_take_catches_up_and_hands_out_each_load_once(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    path.write_bytes(OLD_LOAD)
    watcher = LogWatcher(path, poll_s=10.0)  # no thread: take() catches up itself
    first = watcher.take()
    assert len(first) == 1 and first[0].last_line_ns is not None
    assert first[0].log_offset == OPENER
    with path.open("ab") as out:
        out.write(OLD_LOAD)
    second = watcher.take()
    assert [x.seq for x in second] == [1]
    assert second[0].log_offset == len(OLD_LOAD) + OPENER
    assert watcher.take() == []
    assert watcher.stop() == []


def test_a_sizing_pass_and_its_real_load_are_one_load(tmp_path: Path) -> None:
    # b11434 with --fit on: two metadata lines, two graph lines, one load.
    path = tmp_path / "server.log"
    path.write_bytes(LV5_LOAD)
    loads = LogWatcher(path).stop()
    assert len(loads) == 1
    assert loads[0].last_line_ns is not None


def test_a_line_written_in_pieces_is_read_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    cut = OLD_LOAD.index(END_LINE) + 5  # mid-way through the last line
    path.write_bytes(OLD_LOAD[:cut])
    watcher = LogWatcher(path, poll_s=10.0)
    (load,) = watcher.take()
    assert load.last_line_ns is None
    with path.open("ab") as out:
        out.write(OLD_LOAD[cut:])
    watcher.poll()
    assert load.last_line_ns is not None
    watcher.stop()


def test_a_log_created_after_the_watcher_started_and_crlf_lines(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    watcher = LogWatcher(path, poll_s=0.01)
    watcher.start()
    time.sleep(0.05)
    path.write_bytes(OLD_LOAD.replace(b"\n", b"\r\n") * 2)
    loads = watcher.stop()
    assert [x.seq for x in loads] == [0, 1]
    crlf = OLD_LOAD.replace(b"\n", b"\r\n")
    assert loads[1].log_offset == len(crlf) + crlf.index(b"llama_model_load_from_file_impl")
    assert all(x.last_line_ns is not None for x in loads)


def test_a_load_that_never_finished_is_followed_by_the_next(tmp_path: Path) -> None:
    # A crash mid-load, then the next load: two loads, the first without an end.
    path = tmp_path / "server.log"
    path.write_bytes(OLD_LOAD[: OLD_LOAD.index(b"load_tensors:")] + OLD_LOAD)
    loads = LogWatcher(path).stop()
    assert len(loads) == 2
    assert loads[0].last_line_ns is None and loads[1].last_line_ns is not None


def test_watching_a_quiet_log_costs_little_cpu(tmp_path: Path) -> None:
    # The collector must stay light: measured here (2 shared cores) 0.9 % of one
    # core at the 20 ms poll, of which 0.5 % is the thread's own wake-ups.
    path = tmp_path / "quiet.log"
    path.write_bytes(OLD_LOAD)
    watcher = LogWatcher(path)
    watcher.start()
    time.sleep(0.1)
    cpu0, wall0, polls0 = time.process_time(), time.perf_counter(), watcher.polls
    time.sleep(2.0)
    share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    polls = watcher.polls - polls0
    watcher.stop()
    assert 50 <= polls <= 110  # it does poll, about every 20 ms
    assert share < 0.05  # far below a core: a busy loop would be ~1.0
