"""Timing the build on synthetic stores, for `nox -s perf`.

Two stores are generated (a quick campaign's size, and by default 10,000
requests with 1,000,000 chunks), each site is built in a scratch copy of the
project, and the wall time of each build step is printed. The target is a
full build in under 60 s on the large store.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from report.build import BuildOptions, build_site, stage_project
from report.synthetic import SyntheticSpec, generate

TARGET_S = 60.0


@dataclass(frozen=True)
class Timing:
    """One timed build: the store's size and each step's seconds."""

    name: str
    requests: int
    chunks: int
    seconds: float
    steps: dict[str, float]


def time_builds(
    workdir: Path, requests: int = 10_000, chunks: int = 1_000_000, root: Path = Path(".")
) -> list[Timing]:
    """Generate the stores under `workdir`, build each site there, and time it."""
    out = []
    specs = (
        ("quick", SyntheticSpec.quick()),
        ("large", SyntheticSpec(requests=requests, chunks=chunks)),
    )
    for name, spec in specs:
        db = workdir / f"{name}.duckdb"
        if not db.exists():
            generate(db, spec)
        project = stage_project(root, workdir / f"site-{name}")
        start = time.perf_counter()
        result = build_site(BuildOptions(db=db, root=project))
        elapsed = time.perf_counter() - start
        out.append(Timing(name, spec.requests, spec.chunks, elapsed, result.timings))
    return out


def main_timing(requests: int, chunks: int, workdir: Path | None, root: Path = Path(".")) -> int:
    """Print the timings; exit status 1 when the large build misses the target."""
    with tempfile.TemporaryDirectory(prefix="report-timing-") as tmp:
        timings = time_builds(workdir or Path(tmp), requests, chunks, root)
    worst = 0.0
    for t in timings:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in t.steps.items())
        print(
            f"{t.name}: {t.requests:,} requests, {t.chunks:,} chunks: {t.seconds:.1f} s "
            f"(target {TARGET_S:.0f} s) [{steps}]"
        )
        worst = max(worst, t.seconds)
    return 0 if worst < TARGET_S else 1
