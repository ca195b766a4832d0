"""Runs disturbed by the host: other processes' CPU per request, the starved flag,
and starved requests kept out of the headline figures (and brought back on demand).

The rule over hand-made telemetry first (known numbers in, known flags out), then
the sampler's own measurement, then a real campaign with a CPU hog started beside it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from collector.telemetry import Sample, TelemetrySampler, _next_sample
from evidence.metrics import create_views
from evidence.store import open_store
from evidence.writer import insert_arrow, telemetry_table
from report.context import host_load
from report.context.summary import _verdict
from report.queries import prepare, select_campaigns
from scoring.gates import evaluate_gates
from tests.support.stores import MS, StoreFactory

# Timing or CPU-share asserts: run alone (the serial pass), never beside other tests.
pytestmark = pytest.mark.serial

THREADS = 4  # the hand-made host's logical CPUs


def _samples(
    run_id: str,
    con: duckdb.DuckDBPyConnection,
    times_ms: list[int],
    sys_pct: float,
    server: float = 100.0,
    device: float | None = 20.0,
    collector: float | None = 10.0,
) -> None:
    """Telemetry of one server run: every sample with the same CPU figures."""
    samples = [
        Sample(
            t_ns=t * MS,
            proc_count=1,
            rss_bytes=1,
            cpu_percent=server,
            sys_mem_used_bytes=1,
            sys_cpu_percent=sys_pct,
            gpu_mem_used_bytes=None,
            gpu_proc_mem_bytes=None,
            gpu_util_percent=None,
            device_rss_bytes=1 if device is not None else None,
            device_cpu_percent=device,
            collector_cpu_percent=collector,
        )
        for t in times_ms
    ]
    insert_arrow(con, "telemetry", telemetry_table(run_id, samples))


def _events(start_ms: int, n: int = 5, gap_ms: int = 50) -> list[tuple[int, str]]:
    return [((start_ms + i * gap_ms) * MS, "w ") for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreFactory]:
    with open_store(tmp_path / "load.duckdb") as con:
        factory = StoreFactory(con).campaign()
        con.execute("UPDATE hosts SET cpu_threads = ?", [THREADS])
        yield factory


def _row(con: duckdb.DuckDBPyConnection, request_id: str) -> tuple[object, ...]:
    row = con.execute(
        "SELECT other_cpu_cores, starved, in_headline FROM request_metrics WHERE request_id = ?",
        [request_id],
    ).fetchone()
    assert row is not None
    return row


def test_others_are_the_hosts_busy_cores_less_the_server_device_and_collector(
    store: StoreFactory,
) -> None:
    con = store.con
    run = store.server_run("baseline")
    # 50 % of 4 CPUs = 2 cores busy; server 1, device 0.2, collector 0.1: others 0.7.
    _samples(run, con, [300, 400, 500, 600], sys_pct=50.0)
    # Samples whose span (from the sample before) ends before the send or starts at or
    # after the end saw none of the request: 3.5 others, which must not count.
    _samples(run, con, [100, 200, 700, 800], sys_pct=100.0, server=50.0)
    rid = store.request("baseline", _events(250), sent_ns=200 * MS, done_ns=600 * MS)
    create_views(con)
    other, starved, headline = _row(con, rid)
    assert other == pytest.approx(0.7)
    assert starved is True and headline is False


def test_a_quiet_host_is_not_starved_and_no_measure_is_not_measured(store: StoreFactory) -> None:
    con = store.con
    quiet = store.server_run("baseline")
    _samples(quiet, con, list(range(100, 1100, 100)), sys_pct=35.0)  # others 0.1
    ok = store.request("baseline", _events(250), sent_ns=200 * MS, done_ns=600 * MS)
    no_collector = store.server_run("cpu-moe", n_cpu_moe=-1)
    _samples(no_collector, con, list(range(100, 1100, 100)), sys_pct=90.0, collector=None)
    old = store.request("cpu-moe", _events(250), sent_ns=200 * MS, done_ns=600 * MS)
    store.server_run("attached")  # no telemetry at all
    bare = store.request("attached", _events(250), sent_ns=200 * MS, done_ns=600 * MS)
    # Sampling jitter can leave our processes above the machine's busy share: the
    # remainder, -0.3 cores here, is floored at 0.
    jitter = store.server_run("jitter")
    _samples(jitter, con, list(range(100, 1100, 100)), sys_pct=25.0)
    floored = store.request("jitter", _events(250), sent_ns=200 * MS, done_ns=600 * MS)
    create_views(con)
    other, starved, headline = _row(con, ok)
    assert other == pytest.approx(0.1) and starved is False and headline is True
    assert _row(con, floored) == (0.0, False, True)
    assert _row(con, old) == (None, None, True)  # not measured: counted, never "false"
    assert _row(con, bare) == (None, None, True)


def test_the_threshold_is_the_campaigns_gate_setting(tmp_path: Path) -> None:
    with open_store(tmp_path / "t.duckdb") as con:
        factory = StoreFactory(con).campaign({"gates": {"max_other_cpu_cores": 1.0}})
        con.execute("UPDATE hosts SET cpu_threads = ?", [THREADS])
        run = factory.server_run("baseline")
        _samples(run, con, [300, 400, 500, 600], sys_pct=50.0)  # others 0.7
        rid = factory.request("baseline", _events(250), sent_ns=200 * MS, done_ns=600 * MS)
        create_views(con)
        assert _row(con, rid) == (pytest.approx(0.7), False, True)


def _paired_store(store: StoreFactory) -> tuple[str, str]:
    """A baseline and an offload run of one test and two repeats; the offload's second
    repeat ran beside a hog (others 1.2 cores) and stalled 6 s."""
    con = store.con
    base = store.server_run("baseline")
    off = store.server_run("cpu-moe", n_cpu_moe=-1)
    _samples(base, con, list(range(0, 20_000, 100)), sys_pct=35.0)
    _samples(off, con, list(range(0, 10_000, 100)), sys_pct=35.0)
    _samples(off, con, list(range(10_000, 20_000, 100)), sys_pct=50.0, server=50.0)
    for repeat, start in ((1, 1000), (2, 11_000)):
        store.request("baseline", _events(start + 100), sent_ns=start * MS, repeat=repeat)
    store.request("cpu-moe", _events(1100), sent_ns=1000 * MS, repeat=1)
    stalled = [(11_100 * MS, "w "), (17_100 * MS, "w "), (17_150 * MS, "w ")]
    starved = store.request("cpu-moe", stalled, sent_ns=11_000 * MS, repeat=2)
    return base, starved


def test_starved_requests_leave_the_pairs_and_the_gates_unless_included(
    store: StoreFactory,
) -> None:
    con = store.con
    _, starved = _paired_store(store)
    create_views(con)
    assert _row(con, starved)[1:] == (True, False)
    pairs = "SELECT count(*) FROM offload_pair_ratios WHERE metric = 'decode_tps'"
    assert con.execute(pairs).fetchone() == (1,)
    gate = {g.gate_id: g for g in evaluate_gates(con, store.campaign_id)}
    responsive = gate["streaming-responsiveness"]
    assert responsive.status == "PASS"  # the 6 s stall was the host's, not the server's
    assert "1 starved request left out (other processes used more than 0.5 core" in (
        responsive.measured
    )

    create_views(con, include_starved=True)
    assert _row(con, starved)[1:] == (True, True)
    assert con.execute(pairs).fetchone() == (2,)
    gate = {g.gate_id: g for g in evaluate_gates(con, store.campaign_id)}
    assert gate["streaming-responsiveness"].status == "FAIL"
    assert "starved" not in gate["streaming-responsiveness"].measured


def test_the_report_counts_them_and_a_busy_campaign_says_so(store: StoreFactory) -> None:
    con = store.con
    _paired_store(store)
    prepare(con, select_campaigns(con, []))
    load = host_load.build(con)
    assert (load.starved, load.excluded, load.unmeasured, load.requests) == (1, 1, 0, 4)
    assert [(r.config, r.repeat, r.excluded) for r in load.flagged] == [("cpu-moe", 2, True)]
    # 1 of 4 streamed requests starved: 25 % > the 10 % a verdict tolerates.
    assert [(c.starved, c.streamed) for c in load.busy] == [(1, 4)]
    assert "The host was busy during campaign test" in _verdict((), load).sentence

    prepare(con, select_campaigns(con, []), include_starved=True)
    load = host_load.build(con)
    assert (load.starved, load.excluded, load.included) == (1, 0, True)


def test_the_sampler_measures_the_collector_apart_from_the_server(tmp_path: Path) -> None:
    # The server: a process that sleeps. The collector (this process) busy for a while.
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(range(10_000))

    try:
        sampler = TelemetrySampler(server.pid, hz=10)
        sampler.start()
        deadline = time.monotonic() + 30
        idle: list[Sample] = []
        while len(idle) < 5 and time.monotonic() < deadline:  # steady state, idle
            time.sleep(0.2)
            idle += sampler.drain()
        burner = threading.Thread(target=burn)
        burner.start()
        time.sleep(0.3)
        sampler.drain()
        time.sleep(1.5)
        busy = sampler.drain()
        stop.set()
        burner.join()
        sampler.stop()
    finally:
        stop.set()
        server.kill()
        server.wait()
    assert busy and all(s.collector_cpu_percent is not None for s in busy)
    mean = sum(s.collector_cpu_percent or 0.0 for s in busy) / len(busy)
    # One Python thread is at most one core; on a shared 2-core box it gets less.
    assert 30.0 < mean < 130.0, mean
    assert max(s.cpu_percent or 0.0 for s in busy) < 20.0  # the server slept throughout


# --- a real campaign with a CPU hog started part-way ------------------------------------


def test_a_sampler_that_fell_behind_waits_a_full_interval() -> None:
    # Regression: a sampler that fell behind (starved at its low priority by a busy
    # box) sampled again at once, 0-1 ms after the late sample. Over such a span
    # psutil's CPU figures read 0 % (no 10 ms tick elapsed) or 1,433 % (one did), and
    # a real campaign beside a CPU hog averaged its "others" down to 0.1 core.
    due, delay = _next_sample(previous_t=10.0, interval_s=0.1, now=10.45)
    assert delay == pytest.approx(0.1) and due == pytest.approx(10.55)
    due, delay = _next_sample(previous_t=10.0, interval_s=0.1, now=10.03)  # on time
    assert delay == pytest.approx(0.07) and due == pytest.approx(10.1)


def test_a_reason_shown_in_parentheses_has_none_of_its_own() -> None:
    """The first screen shows it as "not measured (REASON)": with every pair starved it
    read "... did not starve (18 excluded))" (seen on a busy host)."""
    from report.context.summary import _no_pair_reason

    reason = _no_pair_reason("m", ("baseline", "cpu-moe"), {}, {("m", "cpu-moe"): 18})
    assert reason == (
        "no pair of successful streamed requests that other processes did not starve; "
        "18 starved left out"
    )
    assert "(" not in reason
