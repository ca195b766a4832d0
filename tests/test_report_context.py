"""The page contexts: SQL-backed figures with their N, spread and provenance."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from evidence.store import open_store
from report.context import choosing_k, memory, performance, quality, streaming, summary
from report.queries import Selection, prepare, select_campaigns
from report.values import Missing, Quantity
from scoring.gates import evaluate_gates
from tests.support.report import synthetic_store

Opened = tuple[duckdb.DuckDBPyConnection, Selection]


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cpu") / "cpu.duckdb"
    synthetic_store(path)
    return path


@pytest.fixture(scope="module")
def gpu_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "gpu.duckdb"
    synthetic_store(path, gpu=True, sweep=(8,), requests=60, chunks=1500)
    return path


def _open(path: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, Selection]]:
    with open_store(path, read_only=True) as con:
        sel = select_campaigns(con, [])
        prepare(con, sel)
        yield con, sel


@pytest.fixture
def cpu(cpu_store: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, Selection]]:
    yield from _open(cpu_store)


@pytest.fixture
def gpu(gpu_store: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, Selection]]:
    yield from _open(gpu_store)


def test_without_a_gpu_vram_saved_is_the_labelled_estimate(cpu: Opened) -> None:
    con, sel = cpu
    ctx = memory.build(con, sel)
    (comparison,) = ctx.comparisons
    assert isinstance(comparison.measured, Missing)
    assert comparison.measured.reason.startswith("no NVIDIA GPU on this host (NVML:")
    assert isinstance(comparison.log, Missing)
    assert isinstance(comparison.headline, Quantity) and comparison.headline.source == "estimated"
    # The same source on both sides of the comparison.
    assert isinstance(comparison.baseline_gpu, Quantity)
    assert isinstance(comparison.offload_gpu, Quantity)
    assert comparison.baseline_gpu.source == comparison.offload_gpu.source == "estimated"
    assert ctx.gpu_reason is not None and "NVML" in ctx.gpu_reason


def test_measured_gpu_memory_wins_and_the_log_is_shown_beside_it(gpu: Opened) -> None:
    con, sel = gpu
    ctx = memory.build(con, sel)
    cpu_moe = next(c for c in ctx.comparisons if c.config == "cpu-moe")
    assert isinstance(cpu_moe.headline, Quantity) and cpu_moe.headline.source == "measured"
    assert isinstance(cpu_moe.log, Quantity) and cpu_moe.log.source == "log"
    assert isinstance(cpu_moe.estimated, Quantity)
    sweep = next(c for c in ctx.comparisons if c.config == "n-cpu-moe-8")
    # --n-cpu-moe 8 on DeepSeek (block 0 dense, MoE blocks 1-27): the experts of
    # blocks 1-7 leave the GPU, 7 of the 27 MoE blocks' share of --cpu-moe's saving.
    assert isinstance(sweep.estimated, Quantity) and isinstance(cpu_moe.estimated, Quantity)
    assert sweep.estimated.value == pytest.approx(cpu_moe.estimated.value * 7 / 27, rel=1e-6)
    assert 0 < cpu_moe.headline.value < 100
    # VRAM saved compares GPU memory after load (the one definition, which the
    # memory-savings gate reads too), not the peak during generation.
    runs = {r.config: r for r in ctx.runs}
    b, o = runs["baseline"].gpu_idle_measured, runs["cpu-moe"].gpu_idle_measured
    assert isinstance(b, Quantity) and isinstance(o, Quantity)
    assert cpu_moe.headline.value == pytest.approx(100 * (1 - o.value / b.value))


def test_the_log_is_the_fallback_when_nvml_was_unavailable(gpu_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "nvml-off.duckdb"
    copy.write_bytes(gpu_store.read_bytes())
    with duckdb.connect(str(copy)) as con:
        # What the collector stores when NVML is unavailable: the host's status,
        # and telemetry without GPU figures.
        con.execute("UPDATE hosts SET gpu_status = 'NVML: driver not loaded'")
        con.execute(
            "UPDATE telemetry SET gpu_mem_used_bytes = NULL, gpu_proc_mem_bytes = NULL, "
            "gpu_util_percent = NULL"
        )
    for con, sel in _open(copy):
        ctx = memory.build(con, sel)
        cpu_moe = next(c for c in ctx.comparisons if c.config == "cpu-moe")
        assert isinstance(cpu_moe.headline, Quantity) and cpu_moe.headline.source == "log"
        assert isinstance(cpu_moe.measured, Missing)


def test_expert_placement_is_checked_against_the_gguf(gpu: Opened) -> None:
    con, sel = gpu
    runs = {r.config: r for r in memory.build(con, sel).runs}
    assert runs["baseline"].placement.status == "PASS"
    assert runs["cpu-moe"].placement.status == "PASS"
    assert (
        runs["cpu-moe"].placement.expected_tensors == runs["cpu-moe"].placement.overridden_tensors
    )
    assert runs["n-cpu-moe-8"].layers_on_cpu == 7  # blocks 1-7: block 0 is dense


def test_summary_avg_tokens_per_second_is_the_protocols_definition(
    cpu: Opened, cpu_store: Path
) -> None:
    con, sel = cpu
    mem = memory.build(con, sel)
    perf = performance.build(con, sel, mem.runs)
    qual = quality.build(con, sel)
    ctx = summary.build(con, sel, mem, perf, qual, choosing_k.build(con, sel, mem))
    rows = {r.config: r for r in ctx.rows}
    # Recompute by hand from the raw tables: output tokens / E2E, successful streamed only.
    raw = con.execute(
        """
        SELECT s.config_label, r.usage_completion_tokens, (r.done_ns - r.sent_ns) / 1e9
        FROM requests r JOIN server_runs s USING (server_run_id)
        WHERE r.stream AND r.status = 'ok' AND r.finish_reason IN ('stop', 'length')
        """
    ).fetchall()
    for config in ("baseline", "cpu-moe"):
        values = [tokens / e2e for c, tokens, e2e in raw if c == config]
        stat = rows[config].avg_tps
        assert stat.n == len(values)
        assert stat.mean == pytest.approx(statistics.mean(values))
        assert stat.sd == pytest.approx(statistics.stdev(values))
        assert stat.mean is not None and stat.ci_low is not None and stat.ci_high is not None
        assert stat.ci_low < stat.mean < stat.ci_high
    assert rows["baseline"].vram_saved is None
    assert isinstance(rows["cpu-moe"].vram_saved, Quantity)
    # The synthetic store's gates come from the real scorer: the verdict counts them.
    statuses = [g for (g,) in con.execute("SELECT status FROM gates").fetchall()]
    assert len(statuses) == 11
    assert (ctx.verdict.passed, ctx.verdict.failed) == (
        statuses.count("PASS"),
        statuses.count("FAIL"),
    )
    assert ctx.verdict.status == ("NOT READY" if "FAIL" in statuses else "INCOMPLETE")
    assert ctx.synthetic


def test_per_test_rows_exist_even_when_a_metric_has_no_value(cpu: Opened) -> None:
    con, sel = cpu
    ctx = streaming.build(con, sel)
    tests = {(r.test_id, r.config) for r in ctx.per_test}
    assert len(tests) == 18  # 9 tests x 2 configurations, even a one-token answer
    for row in ctx.per_test:
        for s in row.stats:
            assert s.n > 0 or s.missing


def test_failed_requests_count_against_completion_not_performance(gpu: Opened) -> None:
    con, sel = gpu
    q = quality.build(con, sel)
    by = {(r.model, r.config): r for r in q.overall}
    assert all(r.requests >= r.completed for r in by.values())
    perf = performance.build(con, sel, memory.build(con, sel).runs)
    assert perf.streamed_ok <= perf.streamed_total


def test_quality_without_scores_says_why(tmp_path: Path) -> None:
    path = tmp_path / "noscores.duckdb"
    synthetic_store(path, scores=False, gates=False, reviews=False)
    for con, sel in _open(path):
        q = quality.build(con, sel)
        assert not q.has_scores
        row = q.overall[0]
        assert row.scores["quality"].n == 0
        assert "scoring has not run" in (row.scores["quality"].missing or "")
        assert row.completed > 0  # completion comes from the requests themselves


def test_transcripts_keep_every_output(cpu: Opened) -> None:
    con, sel = cpu
    quality.build(con, sel)
    pages = quality.transcript_pages(con)
    total = sum(len(p.transcripts) for p in pages)
    assert (total,) == con.execute("SELECT count(*) FROM requests").fetchone()
    outputs = {t.output for p in pages for t in p.transcripts}
    assert any("<script>" in o for o in outputs)


def test_empty_store_gives_empty_contexts(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    with open_store(path):
        pass
    for con, sel in _open(path):
        assert sel.empty
        mem = memory.build(con, sel)
        assert mem.runs == () and mem.comparisons == ()
        perf = performance.build(con, sel, mem.runs)
        assert isinstance(perf.timeline, Missing)


def test_instrument_validation_lists_each_run_with_its_host(tmp_path: Path) -> None:
    from report.context import validation

    path = tmp_path / "perf.duckdb"
    synthetic_store(path, perf=True)
    for con, _ in _open(path):
        (run,) = validation.build(con).runs
        assert run.host.startswith("AMD Ryzen") and "no NVIDIA GPU" in run.host
        assert {r.name for r in run.results} >= {"ttft_accuracy_ms"}
        assert all(isinstance(r.value, Quantity) for r in run.results)


def test_the_memory_gate_and_the_site_quote_the_same_saving(gpu: Opened) -> None:
    # One definition: the memory-savings gate and the Memory page both read the
    # `vram_saved` view, so they cannot publish two different figures.
    con, sel = gpu
    cpu_moe = next(c for c in memory.build(con, sel).comparisons if c.config == "cpu-moe")
    assert isinstance(cpu_moe.headline, Quantity)
    (campaign_id,) = sel.ids
    gate = next(g for g in evaluate_gates(con, campaign_id) if g.gate_id == "memory-savings")
    (judged,) = gate.evidence["comparisons"]
    assert (judged["config"], judged["source"]) == ("cpu-moe", cpu_moe.headline.source)
    assert judged["saved_pct"] == pytest.approx(cpu_moe.headline.value)


def test_without_a_baseline_label_nothing_is_compared(gpu_store: Path, tmp_path: Path) -> None:
    # Every comparison in the report (VRAM, speed, quality preservation) is against
    # the configuration labelled "baseline"; without one, the page says so and the
    # memory gate has nothing to judge.
    copy = tmp_path / "dense.duckdb"
    copy.write_bytes(gpu_store.read_bytes())
    with duckdb.connect(str(copy)) as con:
        con.execute("UPDATE server_runs SET config_label = 'dense' WHERE config_label = 'baseline'")
    for con, sel in _open(copy):
        cpu_moe = next(c for c in memory.build(con, sel).comparisons if c.config == "cpu-moe")
        assert isinstance(cpu_moe.headline, Missing)
        assert "labelled 'baseline'" in cpu_moe.headline.reason
        (campaign_id,) = sel.ids
        gate = next(g for g in evaluate_gates(con, campaign_id) if g.gate_id == "memory-savings")
        assert gate.status == "NOT MEASURED"
