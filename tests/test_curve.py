"""The `--n-cpu-moe` curve: speed probes in the plan, the measured and predicted views
(`curve_points`, `curve_prediction`) on stores with known timings, and the Choosing K
page's figures equal to those views."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from collector import config as cfg
from collector.defaults import embedded_config, quick_profile
from collector.plan import server_plans
from collector.probes import probe_id, probe_prompt, probe_tests
from collector.telemetry import Sample
from evidence.metrics import PROBE_CATEGORY, create_views
from evidence.store import open_store
from evidence.writer import insert_arrow, telemetry_table
from report.charts import Chart, memory_charts
from report.context import choosing_k, memory
from report.queries import prepare, select_campaigns
from tests.support.curve import curve_store
from tests.support.stores import MS, StoreFactory

# Seconds per token at K = 0 and K = 30 (all 30 blocks), per measure.
DECODE_NONE, DECODE_ALL = 1 / 40, 1 / 20
PREFILL_NONE, PREFILL_ALL = 1 / 100, 1 / 80


def _linear(k: int, none: float, every: float) -> float:
    """Tokens/s where the time per token moves with the share of expert bytes moved."""
    return 1 / (none + k / 30 * (every - none))


def _points(
    ks: tuple[int, ...], middle: dict[int, float] | None = None
) -> dict[int, dict[tuple[int, str], list[float]]]:
    """Three repeats per K of a 128-token probe; `middle` overrides decode at some K."""
    out = {}
    for k in ks:
        decode = (middle or {}).get(k, _linear(k, DECODE_NONE, DECODE_ALL))
        prefill = _linear(k, PREFILL_NONE, PREFILL_ALL)
        out[k] = {
            (128, "prefill"): [prefill * f for f in (0.99, 1.0, 1.01)],
            (128, "decode"): [decode * f for f in (0.99, 1.0, 1.01)],
        }
    return out


@pytest.fixture
def curve(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A curve over K = 0, 10, 20, 30 whose time per token is linear in K, except
    decode at K = 10, which runs at 36 tokens/s."""
    with open_store(tmp_path / "curve.duckdb") as con:
        curve_store(StoreFactory(con).campaign(), _points((0, 10, 20, 30), {10: 36.0}))
        create_views(con)
        yield con


def _prediction(con: duckdb.DuckDBPyConnection, measure: str) -> dict[int, tuple]:
    return {
        int(r[0]): r[1:]
        for r in con.execute(
            "SELECT n_cpu_moe, curve_rate, predicted_curve_rate, prediction_error, "
            "calibration_point, host_share FROM curve_prediction WHERE measure = ?",
            [measure],
        ).fetchall()
    }


def test_the_model_is_calibrated_on_the_ends_and_predicts_between(
    curve: duckdb.DuckDBPyConnection,
) -> None:
    decode = _prediction(curve, "decode")
    assert set(decode) == {0, 10, 20, 30}
    for k in (0, 30):
        measured, predicted, error, calibration, _ = decode[k]
        assert calibration and predicted == pytest.approx(measured, rel=1e-6)
        assert error == pytest.approx(0, abs=1e-6)
    # K = 20 follows the model: predicted from the ends alone, error ~0.
    measured, predicted, error, calibration, share = decode[20]
    assert not calibration and share == pytest.approx(20 / 30)
    assert predicted == pytest.approx(_linear(20, DECODE_NONE, DECODE_ALL), rel=1e-3)
    # K = 10 does not; the error is measured / predicted - 1, and the prediction is not
    # pulled towards it (no point between the ends is fitted).
    measured, predicted, error, calibration, _ = decode[10]
    assert measured == pytest.approx(36.0, rel=1e-3)
    assert predicted == pytest.approx(_linear(10, DECODE_NONE, DECODE_ALL), rel=1e-3)
    assert error == pytest.approx(36.0 / predicted - 1, rel=1e-3)
    prefill = _prediction(curve, "prefill")
    assert prefill[10][1] == pytest.approx(_linear(10, PREFILL_NONE, PREFILL_ALL), rel=1e-3)


def test_measured_points_carry_their_spread_and_source(curve: duckdb.DuckDBPyConnection) -> None:
    row = curve.execute(
        "SELECT n, curve_rate, rate_sd, rate_min, rate_max, source, prompt_tokens, "
        "device_log_bytes FROM curve_points WHERE n_cpu_moe = 20 AND measure = 'prefill'"
    ).fetchone()
    assert row is not None
    n, mean, sd, low, high, source, tokens, device = row
    expected = _linear(20, PREFILL_NONE, PREFILL_ALL)
    assert n == 3 and mean == pytest.approx(expected, rel=1e-6)
    assert low == pytest.approx(0.99 * expected) and high == pytest.approx(1.01 * expected)
    assert sd == pytest.approx(0.01 * expected, rel=1e-3)
    assert source == "server timings" and tokens == 128
    assert device == pytest.approx((30 - 20) * 4 * 2**20 + 40 * 2**20)


def test_without_an_end_there_is_no_prediction(tmp_path: Path) -> None:
    with open_store(tmp_path / "c.duckdb") as con:
        curve_store(StoreFactory(con).campaign(), _points((0, 10, 20)))
        create_views(con)
        assert con.execute("SELECT count(*) FROM curve_points").fetchone() == (6,)
        assert con.execute("SELECT count(*) FROM curve_prediction").fetchone() == (0,)


def test_prefill_falls_back_to_ttft_and_says_so(store: StoreFactory) -> None:
    # No server timings: prompt tokens from usage over the time to first token.
    store.con.execute("UPDATE server_runs SET n_cpu_moe = 0")
    store.con.execute(
        "INSERT INTO tests VALUES (?, 'prefill-64', 10, ?, 'p', 3, 3, 'none')",
        [store.campaign_id, PROBE_CATEGORY],
    )
    rid = store.request(
        "baseline", [(400 * MS, "a"), (450 * MS, "b"), (500 * MS, "c")], test_id="prefill-64"
    )
    store.con.execute("UPDATE requests SET usage_prompt_tokens = 80 WHERE request_id = ?", [rid])
    m = store.metrics(rid)
    assert m["prompt_tokens"] == 80 and m["prefill_source"] == "TTFT"
    assert m["prefill_tps"] == pytest.approx(80 / 0.4)


def test_server_timings_win_over_ttft(store: StoreFactory) -> None:
    rid = store.request(
        "baseline", [(400 * MS, "a"), (450 * MS, "b")], timings={"prompt_n": 50, "prompt_ms": 250}
    )
    m = store.metrics(rid)
    assert (m["prompt_tokens"], m["prefill_source"]) == (50, "server timings")
    assert m["prefill_tps"] == pytest.approx(200.0)


def test_the_page_shows_the_views(tmp_path: Path) -> None:
    with open_store(tmp_path / "curve.duckdb") as curve:
        curve_store(StoreFactory(curve).campaign(), _points((0, 10, 20, 30), {10: 36.0}))
        sel = select_campaigns(curve, [])
        prepare(curve, sel)
        _page_equals_views(curve, choosing_k.build(curve, sel, memory.build(curve, sel)))


def _page_equals_views(curve: duckdb.DuckDBPyConnection, page: choosing_k.ChoosingKContext) -> None:
    assert page.missing is None and [p.k for p in page.points] == [0, 10, 20, 30]
    views = {
        (int(r[0]), r[1]): r[2:]
        for r in curve.execute(
            "SELECT n_cpu_moe, measure, curve_rate, predicted_curve_rate, prediction_error "
            "FROM curve_prediction"
        ).fetchall()
    }
    for p in page.points:
        for s in p.speeds:
            measured, predicted, error = views[(p.k, s.measure)]
            assert s.measured.mean == pytest.approx(measured)
            assert s.predicted.value == pytest.approx(predicted)  # type: ignore[union-attr]
            assert s.error.value == pytest.approx(100 * error)  # type: ignore[union-attr]
    # K = 10's decode misses by ~20 % with a tight interval: it does not hold; the rest do.
    at_10 = page.points[1].speed(probe_id(128), "decode")
    assert at_10 is not None and at_10.holds is False
    assert page.tested == 2 and page.held == 1
    # The summary's answer: the fastest decode that loaded, here K = 0.
    (answer,) = page.answers
    assert answer.k == 0 and answer.decode.mean == pytest.approx(40.0, rel=1e-3)


def _busy_host(store: StoreFactory, label: str) -> None:
    """Telemetry of run `label`: its 4-CPU host fully busy over its requests, the
    server one core of it, so other processes hold 2.7 cores: every request starved."""
    store.con.execute("UPDATE hosts SET cpu_threads = 4")
    samples = [
        Sample(
            t_ns=t * MS,
            proc_count=1,
            rss_bytes=1,
            cpu_percent=100.0,
            sys_mem_used_bytes=1,
            sys_cpu_percent=100.0,
            gpu_mem_used_bytes=None,
            gpu_proc_mem_bytes=None,
            gpu_util_percent=None,
            device_rss_bytes=1,
            device_cpu_percent=20.0,
            collector_cpu_percent=10.0,
        )
        for t in range(100, 5000, 100)
    ]
    insert_arrow(store.con, "telemetry", telemetry_table(store.runs[label], samples))


@pytest.mark.parametrize("counted", [False, True], ids=["left-out", "included"])
def test_the_page_counts_the_probes_a_busy_host_starved(tmp_path: Path, counted: bool) -> None:
    # The protocol pages' host-load section holds no probe: this page says how many of
    # its requests were starved, and whether its figures leave them out.
    with open_store(tmp_path / "curve.duckdb") as con:
        store = curve_store(StoreFactory(con).campaign(), _points((0, 10, 20, 30)))
        _busy_host(store, "n-cpu-moe-20")
        sel = select_campaigns(con, [])
        prepare(con, sel, include_starved=counted)
        page = choosing_k.build(con, sel, memory.build(con, sel))
    # 4 K x 3 repeats of one probe: 12 requests, the 3 at K = 20 starved.
    assert page.starved == choosing_k.StarvedProbes(12, 3, 0 if counted else 3)
    at_20 = next(p for p in page.points if p.k == 20)
    assert bool(at_20.speeds) is counted
    assert page.tested == (2 if counted else 1)
    # The Summary's "fastest K measured" names the K it could not compare.
    (answer,) = page.answers
    assert answer.unmeasured == (() if counted else (20,))


def test_buffers_are_named_by_device_not_by_the_port_of_each_start(tmp_path: Path) -> None:
    # Every K of a sweep starts its own RPC device on a port of its own; the loader log
    # names its buffers with that endpoint. The Memory page had 27 buffer columns for the
    # default campaign's 9 server starts (3 per start), one set per port.
    with open_store(tmp_path / "curve.duckdb") as con:
        store = curve_store(StoreFactory(con).campaign(), _points((0, 30)))
        for k, port in ((0, 40411), (30, 56595)):
            log = {
                "gpu_total_mib": 100.0,
                "buffers": {
                    f"RPC0[127.0.0.1:{port}]": {"model": 60.0, "kv": 40.0},
                    "CPU_Mapped": {"model": 20.0},
                },
            }
            con.execute(
                "UPDATE server_runs SET log_summary = ? WHERE server_run_id = ?",
                [json.dumps(log), store.runs[f"n-cpu-moe-{k}"]],
            )
        sel = select_campaigns(con, [])
        prepare(con, sel)
        page = memory.build(con, sel)
    assert page.buffer_columns == (
        ("RPC0 model", True),
        ("RPC0 kv", True),
        ("CPU_Mapped model", False),
    )
    assert all(r.buffer_mib["RPC0 model"] == 60.0 for r in page.runs if r.buffers)
    # The chart's rows in the campaign's order, as the table's (not n-cpu-moe-30 first).
    chart = memory_charts(page, ["n-cpu-moe-0", "n-cpu-moe-30"], [])["memory-distribution"]
    assert isinstance(chart, Chart)
    assert chart.spec["spec"]["encoding"]["y"]["sort"] == ["n-cpu-moe-0", "n-cpu-moe-30"]


def test_probe_prompts_are_fixed_text_near_their_length() -> None:
    assert probe_prompt(1024) == probe_prompt(1024)
    words = len(probe_prompt(1024).split())
    assert 850 < words < 1050
    (short, long) = probe_tests([128, 1024], 64)
    assert (short.test_id, long.test_id) == ("prefill-128", "prefill-1024")
    assert short.category == PROBE_CATEGORY and long.max_tokens == 64
    assert long.ordinal == short.ordinal + 1 == 11


def test_the_default_sweep_runs_seven_k_with_probes_only() -> None:
    plans = [
        p for p in server_plans(embedded_config()) if p.configuration.n_cpu_moe not in (None, -1)
    ]
    assert [p.configuration.n_cpu_moe for p in plans] == [0, 5, 10, 15, 20, 25, 30]
    for plan in plans:
        assert [t.test_id for t in plan.tests] == ["prefill-128", "prefill-1024"]
        assert len(plan.cells) == 6 and all(c.stream for c in plan.cells)


def test_the_quick_profile_thins_the_sweep() -> None:
    sweep = quick_profile(embedded_config()).sweep
    assert sweep is not None
    assert (sweep.n_cpu_moe, sweep.repeats, sweep.prompt_tokens) == ([0, 10, 20, 30], 1, [16, 128])


def test_a_sweep_must_run_something() -> None:
    with pytest.raises(ValidationError, match="runs nothing"):
        cfg.SweepSection(n_cpu_moe=[0, 30], tests=[])
    with pytest.raises(ValidationError, match="distinct prompt lengths"):
        cfg.SweepSection(n_cpu_moe=[0], prompt_tokens=[64, 64])
    ok = cfg.SweepSection(n_cpu_moe=[0], tests=[], prompt_tokens=[512, 64])
    assert ok.prompt_tokens == [64, 512]
