"""`python -m benchmarks [--db PATH] [--only NAME,...] [--quick]` (what `nox -s perf` runs).

Runs the instrument benchmarks one after another (never in parallel: each
would disturb the others' figures), prints every figure in one table with
pass/fail against its target, and stores the table as one perf run in the
evidence store's `perf_results`. The machine's load average before and after
each benchmark is kept with its figures: on a shared machine it says how much
of a miss is the neighbours'.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from benchmarks.accuracy import measure_accuracy, measure_collector_cpu
from benchmarks.device_limit import measure_device_limit
from benchmarks.ingest import measure_ingest
from benchmarks.interference import measure_interference
from benchmarks.results import Measurement, not_measured, print_table, store_figures
from benchmarks.sampler import measure_sampler
from benchmarks.site_build import measure_site_build
from common.errors import EvidenceError
from evidence.store import default_db_path, open_store

Benchmark = Callable[[bool], list[Measurement]]

BENCHMARKS: dict[str, tuple[Benchmark, str]] = {
    "accuracy": (measure_accuracy, "TTFT and chunk arrival error vs the calibrated server"),
    "collector-cpu": (measure_collector_cpu, "collector CPU while receiving 1,000 events/s"),
    "sampler": (measure_sampler, "telemetry sampler CPU at 10 Hz"),
    "interference": (measure_interference, "real engine: sampler on/off, client vs server"),
    "ingest": (measure_ingest, "store ingest, batched vs row by row"),
    "site": (measure_site_build, "site build time vs store size"),
    "device-limit": (measure_device_limit, "RPC device memory limit: admitted vs set"),
}


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _run_one(name: str, benchmark: Benchmark, quick: bool, console: Console) -> list[Measurement]:
    load_before, started = _load(), time.perf_counter()
    try:
        figures = benchmark(quick)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken benchmark must not cost the others' figures
        console.print(f"[red]{name} failed[/]: {type(exc).__name__}: {exc}")
        console.print(traceback.format_exc(limit=-3), markup=False, highlight=False)
        figures = [not_measured(name, "", f"the benchmark failed: {type(exc).__name__}: {exc}")]
    context = {
        "benchmark": name,
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": _load(),
        "cpu_count": os.cpu_count(),
        "quick": quick,
        "benchmark_s": round(time.perf_counter() - started, 1),
    }
    console.print(f"  {name}: {context['benchmark_s']} s")
    return [dataclasses.replace(f, detail={**f.detail, **context}) for f in figures]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the instrument: timing accuracy, overhead, interference, scale.",
    )
    parser.add_argument("--db", type=Path, default=None, help="evidence store for the results")
    parser.add_argument(
        "--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 3 minutes)")
    parser.add_argument(
        "--site-requests",
        help="store sizes for the site benchmark, e.g. 1000,10000,100000 "
        "(default 1000,10000,30000; --quick 1000,10000)",
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(n) for n in (args.site_requests or "").split(",") if n.strip()]
    except ValueError:
        parser.error("--site-requests takes comma-separated request counts")
    if any(n < 1 for n in sizes):
        parser.error("--site-requests: counts must be at least 1")
    names = [n.strip() for n in (args.only or ",".join(BENCHMARKS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    db = args.db or default_db_path()
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        with open_store(db):  # fail now, not after ten minutes, if the store is locked
            pass
        figures: list[Measurement] = []
        for name in names:
            benchmark, description = BENCHMARKS[name]
            console.print(f"[bold]{name}[/]: {description}")
            if name == "site" and sizes:
                benchmark = functools.partial(measure_site_build, sizes=sizes)
            figures += _run_one(name, benchmark, args.quick, console)
        title = (
            f"Instrument validation{' (quick)' if args.quick else ''}: "
            f"{os.cpu_count()} CPUs, load average {_load():.1f}"
        )
        print_table(figures, console, title)
        run_id = store_figures(db, figures)
    except EvidenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {r: sum(1 for f in figures if f.result == r) for r in ("PASS", "FAIL")}
    missing = sum(1 for f in figures if f.value is None)
    console.print(
        f"{counts['PASS']} pass, {counts['FAIL']} fail, {missing} not measured; "
        f"stored as perf run {run_id} in {db}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
