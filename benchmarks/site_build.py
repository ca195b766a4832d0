"""Site build time against store size, on synthetic stores (`report.synthetic`).

Each store holds N requests with 100 chunks each; each site is built in a
staged copy of the project (`report.build.stage_project`), so the project's
own docs/ and site/ are never touched. Growth is the exponent b of
time ~ N^b between consecutive sizes (1 is linear); it is judged between the
two largest, where the fixed costs (chart rendering, MkDocs start-up) weigh
least.

The report package is imported lazily: without it (or without mkdocs.yml) the
figures are reported as not measured.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.results import Measurement, judged, not_measured, reference

ROOT = Path(__file__).resolve().parents[1]
CHUNKS_PER_REQUEST = 100
# 100,000 requests (10 M chunks) take over ten minutes to generate and build on
# 2 cores, past the default run's budget: ask for them with --site-requests.
SIZES = (1_000, 10_000, 30_000)
QUICK_SIZES = (1_000, 10_000)
GROWTH = "site build growth exponent"
GROWTH_TARGET = "<= 1.1 (linear, 10 % for noise)"
MILLION_TARGET = "< 20 s (1M chunks)"


def build_seconds(workdir: Path, requests: int) -> tuple[float, float, dict[str, float]]:
    """Generate a synthetic store of `requests` requests and build its site; return
    (generate seconds, build seconds, the build's own step timings)."""
    from benchmarks.synthetic import SyntheticSpec, generate
    from report.build import BuildOptions, build_site, stage_project

    db = workdir / f"synthetic-{requests}.duckdb"
    started = time.perf_counter()
    generate(db, SyntheticSpec(requests=requests, chunks=requests * CHUNKS_PER_REQUEST))
    generated = time.perf_counter() - started
    project = stage_project(ROOT, workdir / f"project-{requests}")
    started = time.perf_counter()
    result = build_site(BuildOptions(db=db, root=project))
    return generated, time.perf_counter() - started, dict(result.timings)


def _missing() -> str | None:
    try:
        import benchmarks.synthetic  # noqa: F401
        import report.build  # noqa: F401
    except ImportError as exc:
        return f"report package missing ({exc.name})"
    if not (ROOT / "mkdocs.yml").is_file():
        return "the report's mkdocs.yml is missing"
    return None


def measure_site_build(quick: bool, sizes: Sequence[int] | None = None) -> list[Measurement]:
    sizes = tuple(sorted(sizes)) if sizes else (QUICK_SIZES if quick else SIZES)
    reason = _missing()
    if reason is not None:
        return [not_measured(f"site build, {n:,} requests", "s", reason) for n in sizes] + [
            not_measured(GROWTH, "", reason, GROWTH_TARGET)
        ]
    figures: list[Measurement] = []
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="moe-perf-site-") as tmp:
        for n in sizes:
            generated, built, steps = build_seconds(Path(tmp), n)
            times.append(built)
            # The fleet-store size the target is set for: 1M chunks in under 20 s.
            million = n * CHUNKS_PER_REQUEST == 1_000_000
            figures.append(
                (functools.partial(judged, target=MILLION_TARGET) if million else reference)(
                    f"site build, {n:,} requests",
                    built,
                    "s",
                    requests=n,
                    chunks=n * CHUNKS_PER_REQUEST,
                    generate_s=generated,
                    steps=steps,
                    note=f"{n * CHUNKS_PER_REQUEST:,} chunks; synthetic store made in "
                    f"{generated:.0f} s",
                )
            )
    if len(sizes) < 2:
        return figures
    exponents = [
        math.log(times[i + 1] / times[i]) / math.log(sizes[i + 1] / sizes[i])
        for i in range(len(sizes) - 1)
    ]
    figures.append(
        judged(
            GROWTH,
            exponents[-1],
            "",
            GROWTH_TARGET,
            exponents=exponents,
            sizes=list(sizes),
            seconds=times,
            note=f"between {sizes[-2]:,} and {sizes[-1]:,} requests; all steps: "
            + ", ".join(f"{e:.2f}" for e in exponents),
        )
    )
    return figures
