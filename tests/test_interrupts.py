"""Ctrl-C is latched: an interrupt that DuckDB turned into an error of its own, or that
something swallowed, still ends the campaign `interrupted`.

Seen in a loaded test run: Ctrl-C after the first answer, and the campaign ran to its
end and exited 0. DuckDB, reached by the KeyboardInterrupt mid-call, raises
RuntimeError("Query interrupted"), InvalidInputException("... failed:
KeyboardInterrupt") from `register`, or TransactionException for the next statement."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from common import interrupts
from evidence.store import open_store, query_interrupted
from tests.support.cli import query

# Timing or CPU-share asserts: run alone (the serial pass), never beside other tests.
pytestmark = pytest.mark.serial


@pytest.fixture
def latched() -> Iterator[None]:
    """The command line's handlers for this test, pytest's own afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    interrupts.install()
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        interrupts._REQUESTED.clear()


def _errors_of_an_interrupted_write(trials: int = 400) -> dict[str, BaseException]:
    """Fire SIGINT at random moments into the collector's bulk write (register, INSERT
    ... SELECT, a row, COMMIT); the kinds of exception the interrupt came back as."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i BIGINT, s VARCHAR)")
    batch = pa.table({"i": pa.array(range(2000)), "s": pa.array(["x" * 50] * 2000)})
    seen: dict[str, BaseException] = {}
    for _ in range(trials):
        interrupts._REQUESTED.clear()
        fire = threading.Timer(random.uniform(0, 0.01), os.kill, (os.getpid(), signal.SIGINT))
        fire.start()
        try:
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                con.execute("BEGIN TRANSACTION")
                con.register("_batch", batch)
                try:
                    con.execute("INSERT INTO t BY NAME SELECT * FROM _batch")
                finally:
                    con.unregister("_batch")
                con.execute("INSERT INTO t VALUES (?, ?)", [1, "y"])
                con.execute("COMMIT")
            fire.join()
            time.sleep(0.01)  # the signal, if it came after the loop
        except BaseException as exc:
            fire.join()
            seen.setdefault(type(exc).__name__, exc)
            assert query_interrupted(exc), f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(duckdb.Error):  # no transaction open
                con.execute("ROLLBACK")
        if len(seen) >= 3:
            break
    con.close()
    return seen


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to oneself is POSIX")
def test_every_error_duckdb_makes_of_ctrl_c_is_the_interruption(latched: None) -> None:
    seen = _errors_of_an_interrupted_write()
    # Not only the KeyboardInterrupt itself: DuckDB's own errors came back too, and
    # each was read as the interruption (the assert inside the loop; failed before
    # for InvalidInputException and TransactionException).
    assert set(seen) - {"KeyboardInterrupt"}, seen


def test_a_swallowed_interrupt_stops_the_campaign_at_the_next_request(
    latched: None, tmp_path: Path
) -> None:
    from collector.campaign import CampaignInterrupted
    from collector.config import Config, Configuration, ModelEntry, ServerSection
    from collector.progress import CampaignProgress
    from tests.support.engine import run_in_process
    from tests.test_faults import MODEL, SERVER, SERVER_ENV, _campaign

    class SwallowsCtrlC(CampaignProgress):
        """Ctrl-C during the first answer, caught and dropped (as a library might)."""

        def on_content(self, tokens: int, t_ns: int) -> None:
            super().on_content(tokens, t_ns)
            if tokens == 2 and not interrupts.requested():
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.5)  # the handler runs here
                except KeyboardInterrupt:
                    pass

    config = Config(
        campaign=_campaign(tests=["simple-response", "code-generation"], repeats=2),
        server=ServerSection(command=SERVER, env=SERVER_ENV, startup_timeout_s=10),
        models=[ModelEntry(label=MODEL)],
        configurations=[Configuration(label="one")],
    )
    db = tmp_path / "evidence.duckdb"
    with open_store(db) as con, SwallowsCtrlC() as progress, pytest.raises(CampaignInterrupted):
        run_in_process(con, config, progress, tmp_path)
    assert query(db, "SELECT status FROM campaigns") == [("interrupted",)]
    # The request it arrived in is stored; none after it ran (4 before: ran to the end).
    assert query(db, "SELECT count(*) FROM requests") == [(1,)]
    assert query(db, "SELECT status, error FROM server_runs") == [
        ("stopped", "campaign interrupted (Ctrl-C)")
    ]
