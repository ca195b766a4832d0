"""Runs disturbed by the host: other processes' CPU per request, the starved flag,
and starved requests kept out of the headline figures (and brought back on demand).

The rule over hand-made telemetry first (known numbers in, known flags out), then
the sampler's own measurement, then a real campaign with a CPU hog started beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from collector.engine import EngineBuild
from evidence.metrics import create_views
from moe_evidence.cli import main
from tests.support.cli import cli_env, query
from tests.support.report import build, project

THREADS = 4  # the hand-made host's logical CPUs


HOG_FROM, HOG_UNTIL = 2, 6  # progress lines (stored requests) that start and stop the hog


def _hogs() -> list[subprocess.Popen[bytes]]:
    """Busy loops: two at least (on 2 cores the server and its device use both, so a
    single one would get about half a core of the three-way share)."""
    n = max(2, min(4, os.cpu_count() or 2))
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.engine
def test_a_cpu_hog_beside_a_real_campaign_is_flagged_and_kept_out(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    db = tmp_path / "hog.duckdb"
    argv = [
        sys.executable,
        "-m",
        "moe_evidence",
        "collect",
        "--quick",
        "--repeats",
        "3",
        "--tests",
        "simple-response,technical-explanation",
        "--no-non-streaming",
        "--no-sweep",
        "--db",
        str(db),
    ]
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cli_env()
    )
    assert proc.stderr is not None
    hogs: list[subprocess.Popen[bytes]] = []
    hog_ns: list[int] = []
    seen: list[str] = []
    stored = 0
    try:
        for line in proc.stderr:
            seen.append(line)
            if " stream " not in line or " ok " not in line:
                continue
            stored += 1
            if stored == HOG_FROM:
                hog_ns.append(time.perf_counter_ns())
                hogs = _hogs()
            elif stored == HOG_UNTIL:
                for hog in hogs:
                    hog.kill()
                hog_ns.append(time.perf_counter_ns())
        _, rest = proc.communicate(timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(seen)[-3000:] + rest
    assert len(hog_ns) == 2, "".join(seen)[-3000:]
    start, stop = hog_ns

    # Requests sent after the hog started and done before it stopped: all starved.
    during = query(
        db,
        "SELECT request_id FROM requests WHERE sent_ns > ? AND done_ns < ? ORDER BY sent_ns",
        [start, stop],
    )
    assert len(during) >= 2
    with duckdb.connect(str(db), read_only=True) as con:
        create_views(con)
        flags = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT request_id, starved, in_headline, other_cpu_cores FROM request_metrics"
            ).fetchall()
        }
        for (rid,) in during:
            starved, headline, others = flags[rid]
            assert starved is True and headline is False, (rid, others)
        excluded = sum(1 for s, h, _ in flags.values() if s and not h)
        pairs = con.execute(
            "SELECT count(*) FROM offload_pair_ratios WHERE metric = 'decode_tps'"
        ).fetchone()
        create_views(con, include_starved=True)
        all_pairs = con.execute(
            "SELECT count(*) FROM offload_pair_ratios WHERE metric = 'decode_tps'"
        ).fetchone()
    assert pairs is not None and all_pairs is not None and pairs[0] < all_pairs[0] == 6

    # The site, built from that store: the count beside the headline, the requests listed.
    root = project(tmp_path)
    build(db, root, run_mkdocs=False)
    index = (root / "docs" / "index.md").read_text(encoding="utf-8")
    performance = (root / "docs" / "performance.md").read_text(encoding="utf-8")
    plural = "s" if excluded != 1 else ""
    assert f"**{excluded} request{plural} excluded** from these figures" in index
    assert f"**{excluded} request{plural} excluded**: other processes" in performance
    listed = performance.split("## Requests disturbed by the host")[1].split("\n## ")[0]
    assert listed.count(" | yes |") == excluded

    # --include-starved, through the command line: they count again.
    site = tmp_path / "site-included"
    assert (
        main(
            [
                "build",
                "--db",
                str(db),
                "--root",
                str(root),
                "--site-dir",
                str(site),
                "--include-starved",
            ]
        )
        == 0
    )
    index = (root / "docs" / "index.md").read_text(encoding="utf-8")
    assert "excluded**" not in index and "included** in these figures" in index
    assert (site / "index.html").is_file()
