"""Each metric on hand-made chunk timelines, checked against arithmetic done by hand."""

from __future__ import annotations

import math
import re
from pathlib import Path

import duckdb
import pytest

from evidence.metrics import (
    COMPARE_METRICS,
    GENERATED_VIEWS,
    METRICS,
    PER_TEST_METRICS,
    create_views,
)
from evidence.statistics import Summary, aggregate_sql, ratio_of_means, summarize, t95
from evidence.store import open_store
from report.context.methodology import metric_docs
from tests.support.stores import MS, StoreFactory


def test_single_token_events(store: StoreFactory) -> None:
    # sent at 0; tokens at 100, 150, 200, 250, 300 ms; [DONE] at 310 ms.
    rid = store.request(
        "baseline",
        [(t * MS, "w ") for t in (100, 150, 200, 250, 300)],
        done_ns=310 * MS,
        usage_tokens=5,
    )
    m = store.metrics(rid)
    assert m["ttft_ms"] == pytest.approx(100.0)
    assert m["e2e_s"] == pytest.approx(0.31)
    assert m["output_tokens"] == 5 and m["token_source"] == "usage"
    assert not m["tokens_estimated"]
    assert m["avg_tps"] == pytest.approx(5 / 0.31)
    assert m["decode_tps"] == pytest.approx(4 / 0.2)
    assert m["itl_p50_ms"] == pytest.approx(50.0)
    assert m["max_stall_ms"] == pytest.approx(50.0)
    assert m["itl_cv"] == pytest.approx(0.0)
    assert m["completed"]


def test_a_multi_token_event_is_one_gap_and_tokens_per_event_says_so(
    store: StoreFactory,
) -> None:
    # 6 tokens in 3 events: the server batches; the gaps are what the reader saw.
    rid = store.request(
        "baseline", [(100 * MS, "ab"), (160 * MS, "cd"), (220 * MS, "ef")], usage_tokens=6
    )
    m = store.metrics(rid)
    gaps = store.con.execute(
        "SELECT gap_ms FROM event_gaps WHERE request_id = ? ORDER BY event_idx", [rid]
    ).fetchall()
    assert [g for (g,) in gaps] == pytest.approx([60.0, 60.0])
    assert m["itl_p50_ms"] == pytest.approx(60.0) and m["max_stall_ms"] == pytest.approx(60.0)
    assert m["tokens_per_event"] == pytest.approx(2.0)
    assert m["decode_tps"] == pytest.approx(5 / 0.12)


def test_no_token_is_invented_between_events(store: StoreFactory) -> None:
    # Regression: 20 text events for 21 counted tokens (the end-of-generation token
    # has no text) used to be split by characters into 26 "tokens" and gaps.
    events = [(10 * MS * (i + 1), "word" * (1 + i % 3)) for i in range(20)]
    rid = store.request("baseline", events, usage_tokens=21)
    m = store.metrics(rid)
    (gaps,) = store.con.execute(
        "SELECT count(*) FROM event_gaps WHERE request_id = ?", [rid]
    ).fetchone()
    assert gaps == m["content_events"] - 1 == 19
    assert m["tokens_per_event"] == pytest.approx(21 / 20)
    assert m["itl_p50_ms"] == pytest.approx(10.0)


def test_token_source_fallbacks(store: StoreFactory) -> None:
    chunks = [(t * MS, "x") for t in (10, 20, 30)]
    timings = store.request(
        "baseline", chunks, timings={"predicted_n": 3, "predicted_per_second": 100.0}
    )
    tokenized = store.request("baseline", chunks, tokenized=3)
    counted = store.request("baseline", chunks)
    assert store.metrics(timings)["token_source"] == "timings"
    assert store.metrics(tokenized)["token_source"] == "tokenize"
    m = store.metrics(counted)
    assert m["token_source"] == "chunks" and m["tokens_estimated"]
    # client decode 2 tokens / 20 ms = 100 tok/s vs server's 100 -> ratio 1
    assert store.metrics(timings)["client_server_ratio"] == pytest.approx(1.0)


def test_sources_disagree_flag(store: StoreFactory) -> None:
    chunks = [(t * MS, "x") for t in (10, 20, 30)]
    close = store.request("baseline", chunks, usage_tokens=100, tokenized=105)
    far = store.request("baseline", chunks, usage_tokens=100, tokenized=120)
    assert not store.metrics(close)["tokens_disagree"]
    assert store.metrics(far)["tokens_disagree"]


def test_consistency_ratio_detects_slowdown(store: StoreFactory) -> None:
    # 16 tokens: first half 10 ms apart, second half 20 ms apart.
    times, t = [], 0
    for i in range(16):
        t += 10 if i < 8 else 20
        times.append(t)
    rid = store.request("baseline", [(x * MS, "w") for x in times], usage_tokens=16)
    # first quarter: tokens 0-3 at 10 ms spacing -> 3/0.03 = 100/s;
    # last quarter: tokens 12-15 at 20 ms -> 3/0.06 = 50/s.
    assert store.metrics(rid)["consistency_ratio"] == pytest.approx(0.5)


def test_non_streamed_request_has_no_ttft(store: StoreFactory) -> None:
    rid = store.request("baseline", [(500 * MS, "whole answer")], stream=False, usage_tokens=2)
    m = store.metrics(rid)
    assert m["ttft_ms"] is None and m["decode_tps"] is None
    assert m["avg_tps"] == pytest.approx(4.0)


def test_incomplete_request(store: StoreFactory) -> None:
    rid = store.request("baseline", [(10 * MS, "a")], status="disconnected", finish_reason=None)
    assert not store.metrics(rid)["completed"]


def test_memory_windows(tmp_path: Path) -> None:
    with open_store(tmp_path / "mem.duckdb") as con:
        f = StoreFactory(con).campaign({"campaign": {"idle_window_s": 1.0}})
        run = f.server_run("baseline", ready_ns=1000 * MS, gpu_before={"mem_used_bytes": 100})
        for i, rss in enumerate([10, 12, 11, 50, 80, 60]):
            # samples at 1.0, 1.4, 1.8 (idle window), 3.0, 3.4, 3.8 s (generation)
            t = (1000 + 400 * (i % 3) + (2000 if i >= 3 else 0)) * MS
            con.execute(
                "INSERT INTO telemetry (server_run_id, t_ns, rss_bytes, "
                "gpu_mem_used_bytes) VALUES (?, ?, ?, ?)",
                [run, t, rss, rss + 100],
            )
        f.request("baseline", [(3500 * MS, "x")], sent_ns=2900 * MS, done_ns=4000 * MS)
        create_views(con)
        row = con.execute(
            "SELECT rss_idle_bytes, rss_peak_bytes, gpu_idle_delta_bytes, "
            "gpu_peak_delta_bytes FROM server_run_memory"
        ).fetchone()
    assert row == (11, 80, 11, 80)


def test_views_work_read_only(tmp_path: Path) -> None:
    path = tmp_path / "ro.duckdb"
    with open_store(path) as con:
        f = StoreFactory(con).campaign()
        f.server_run("baseline")
        f.request("baseline", [(10 * MS, "a"), (20 * MS, "b")], usage_tokens=2)
    con = duckdb.connect(str(path), read_only=True)
    try:
        create_views(con)
        n = con.execute("SELECT count(*) FROM request_metrics").fetchone()
        assert n == (1,)
    finally:
        con.close()


def test_every_metric_is_defined_and_is_a_column(store: StoreFactory) -> None:
    columns = {
        view: {d[0] for d in store.con.execute(f"SELECT * FROM {view} LIMIT 0").description}
        for view in {m.source_view for m in METRICS.values()}
    }
    for metric in METRICS.values():
        assert len(metric.definition) > 40, metric.name
        assert metric.sql, f"{metric.name} has no SQL in the registry"
        if metric.aggregate:  # an aggregate over a group's request_metrics rows
            store.con.execute(f"SELECT {metric.sql} FROM request_metrics").fetchall()
        else:
            assert metric.name in columns[metric.view], metric.name


def test_needs_are_declared() -> None:
    # A metric of a generated view that names another metric of its view needs it
    # (so it is computed first); a metric with its own view reads others through it.
    for metric in METRICS.values():
        if metric.view in GENERATED_VIEWS:
            named = {
                other.name
                for other in METRICS.values()
                if other.view == metric.view
                and other is not metric
                and re.search(rf"(?<![.\w]){other.name}(?!\w)", metric.sql)
            }
            assert named <= set(metric.needs), (metric.name, named - set(metric.needs))
        elif metric.owns_view:
            assert metric.needs, f"{metric.name} owns {metric.view} but needs nothing"


def test_per_test_figures_are_flags_of_the_registry(store: StoreFactory) -> None:
    assert PER_TEST_METRICS == ("ttft_ms", "decode_tps", "avg_tps", "e2e_s")
    assert COMPARE_METRICS == ("ttft_ms", "decode_tps", "e2e_s")
    assert {n for n, m in METRICS.items() if m.token_count} == {
        "output_tokens",
        "avg_tps",
        "decode_tps",
    }
    # offload_pair_ratios has one ratio per per-test figure and pair of requests.
    store.server_run("cpu-moe", n_cpu_moe=-1)
    for config in ("baseline", "cpu-moe"):
        store.request(config, [(10 * MS, "a"), (30 * MS, "b")], usage_tokens=2)
    found = store.con.execute("SELECT metric FROM offload_pair_ratios ORDER BY metric").fetchall()
    assert [m for (m,) in found] == sorted(PER_TEST_METRICS)


def test_methodology_names_only_views_of_the_store(store: StoreFactory) -> None:
    # The methodology page once said "the view `group`", a view no store has.
    views = {
        name
        for (name,) in store.con.execute(
            "SELECT view_name FROM duckdb_views() UNION SELECT table_name FROM duckdb_tables()"
        ).fetchall()
    }
    docs = metric_docs()
    assert [d.name for d in docs] == list(METRICS)
    for doc in docs:
        assert doc.view in views, (doc.name, doc.view)
        if not doc.aggregate:
            columns = store.con.execute(f"SELECT * FROM {doc.view} LIMIT 0").description
            assert doc.name in {c[0] for c in columns}, doc.name


def test_summary_ci_and_ratio() -> None:
    s = summarize(3, 10.0, 1.0, 9.0, 11.0)
    half = 4.303 * 1.0 / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == pytest.approx((10 - half, 10 + half))
    assert summarize(1, 10.0, None, 10.0, 10.0).ci_low is None
    r = ratio_of_means(
        Summary(3, 5.0, 0.5, None, None, 4.5, 5.5), Summary(3, 10.0, 1.0, None, None, 9, 11)
    )
    assert r.ratio == pytest.approx(0.5)
    assert r.ci_low is not None and r.ci_low < 0.5 < r.ci_high  # type: ignore[operator]
    assert t95(1) == 12.706 and t95(100) == 1.96


def test_aggregate_sql(store: StoreFactory) -> None:
    for gap in (10, 20, 30):
        store.request("baseline", [(gap * MS, "a"), (2 * gap * MS, "b")], usage_tokens=2)
    n, mean, sd, lo, hi = store.con.execute(aggregate_sql("ttft_ms", [])).fetchone()  # type: ignore[misc]
    assert (n, mean, lo, hi) == (3, pytest.approx(20.0), 10.0, 30.0)
    assert sd == pytest.approx(10.0)
