"""The site build stays linear in the store (issue 24): per-request figures over
telemetry are one time-ordered pass, not a range join of every sample of a server
run with every request of it, and the request figures are computed once per build.

Timings belong to `nox -s perf` (the site rows and their growth exponent); these
tests pin what makes the build linear, and that the single pass gives the figures
the range join gave (kept here as the definition it must match).
"""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import pytest

from collector.telemetry import Sample
from evidence.metrics import create_views
from evidence.store import open_store
from evidence.writer import insert_arrow, telemetry_table
from tests.support.stores import StoreFactory

# The definitions before issue 24, as the specification the single pass must meet.
RANGE_JOIN_PEAKS = """
SELECT r.request_id, max(t.rss_bytes) AS rss_peak, max(t.device_rss_bytes) AS dev_peak,
       max(t.gpu_mem_used_bytes) AS gpu_peak
FROM requests r
JOIN telemetry t ON t.server_run_id = r.server_run_id
     AND t.t_ns BETWEEN r.sent_ns AND r.done_ns
GROUP BY r.request_id ORDER BY 1
"""
RANGE_JOIN_LOAD = """
SELECT r.request_id,
       sum(o.other_cores * (least(o.t_ns, r.done_ns) - greatest(o.from_ns, r.sent_ns)))
           AS weighted, count(*) AS samples
FROM requests r
JOIN telemetry_other_cpu o ON o.server_run_id = r.server_run_id
     AND o.t_ns > r.sent_ns AND o.from_ns < r.done_ns
WHERE o.other_cores IS NOT NULL
GROUP BY r.request_id ORDER BY 1
"""
SINGLE_PASS_LOAD = """
SELECT request_id, other_cpu_cores, host_load_samples FROM request_host_load ORDER BY 1
"""


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Two server runs, back-to-back requests of every length (shorter than one sample
    span, spanning many, ending exactly on a sample), samples at uneven times."""
    rng = random.Random(7)
    db = tmp_path / "evidence.duckdb"
    with open_store(db) as con:
        factory = StoreFactory(con).campaign()
        con.execute("UPDATE hosts SET cpu_threads = 2")  # the host load needs the cores
        for label in ("baseline", "cpu-moe"):
            run = factory.server_run(label)
            t, samples = 0, []
            for _ in range(400):
                t += rng.choice([37, 100, 100, 100, 250])
                samples.append(
                    Sample(
                        t_ns=t,
                        proc_count=1,
                        rss_bytes=rng.randrange(1 << 20, 1 << 30),
                        cpu_percent=rng.uniform(0, 200),
                        sys_mem_used_bytes=1 << 30,
                        sys_cpu_percent=rng.uniform(0, 100),
                        gpu_mem_used_bytes=None,
                        gpu_proc_mem_bytes=None,
                        gpu_util_percent=None,
                        device_rss_bytes=rng.randrange(1 << 20, 1 << 28),
                        device_cpu_percent=rng.uniform(0, 100),
                        collector_cpu_percent=rng.uniform(0, 5),
                    )
                )
            insert_arrow(con, "telemetry", telemetry_table(run, samples))
            sent = 5
            for i in range(60):
                done = sent + rng.choice([3, 60, 100, 420, 1300])
                if i == 7:
                    done = samples[200].t_ns  # ends on a sample
                if done <= sent:
                    done = sent + 50
                factory.request(label, [(done, "x")], sent_ns=sent, done_ns=done, repeat=i + 1)
                # The next request is sent after this one ended (never at the same
                # nanosecond: two reads of one monotonic clock), sometimes 1 ns after.
                sent = done + rng.choice([1, 1, 80])
    return db


def _views(db: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(db), read_only=True)
    create_views(con)
    return con


def test_per_request_peaks_are_the_range_joins(store: Path) -> None:
    with _views(store) as con:
        single = con.execute("SELECT * FROM request_peak_memory ORDER BY 1").fetchall()
        assert single == con.execute(RANGE_JOIN_PEAKS).fetchall()
        assert len(single) >= 60  # the requests with a sample inside them


def test_per_request_host_load_is_the_range_joins(store: Path) -> None:
    with _views(store) as con:
        expected = {
            r: (max(w / s, 0) if s else None, n)
            for r, w, n, s in con.execute(
                f"""SELECT request_id, weighted, samples, r.done_ns - r.sent_ns
                    FROM ({RANGE_JOIN_LOAD}) JOIN requests r USING (request_id)"""
            ).fetchall()
        }
        got = {r: (c, n) for r, c, n in con.execute(SINGLE_PASS_LOAD).fetchall()}
    assert got.keys() == expected.keys() and len(got) >= 110
    for request_id, (cores, samples) in got.items():
        want_cores, want_samples = expected[request_id]
        assert samples == want_samples
        assert cores == pytest.approx(want_cores, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("view", ["request_peak_memory", "request_host_load"])
def test_no_range_join_of_telemetry_and_requests(store: Path, view: str) -> None:
    # A range join compares every sample of a run with every request of it: 1 M
    # chunks took 137 s and 3 M over 17 minutes to build; an ASOF join is one pass.
    with _views(store) as con:
        explained = con.execute(f"EXPLAIN SELECT * FROM {view}").fetchall()
    # Operator names as DuckDB prints them ("Asof Join"), in one spelling.
    plan = "\n".join(row[1] for row in explained).upper().replace(" ", "_")
    assert "ASOF" in plan
    for join in ("IE_JOIN", "PIECEWISE_MERGE_JOIN", "NESTED_LOOP_JOIN", "BLOCKWISE_NL_JOIN"):
        assert join not in plan, f"{view} plans a {join}"


def test_the_build_computes_request_figures_once(store: Path) -> None:
    # Every page reads request_metrics, some many times; as a view it was computed
    # again at every read.
    with duckdb.connect(str(store), read_only=True) as con:
        create_views(con, frozen=True)
        ((kind,),) = con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'request_metrics'"
        ).fetchall()
    assert kind == "LOCAL TEMPORARY"
