"""Evidence from three machines: real campaigns on the real engine, merged into
one store and read in place as a fleet of Parquet bundles, then one site with
the hosts side by side.

The three campaigns run here, on one machine; two of them are told they run on
other hosts (the collector's host inventory is replaced for them), which is
all that tells machines apart in the store. Each campaign is tiny (one test,
two repeats, 16 tokens, baseline and --cpu-moe) to stay near a minute in all.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from collector import campaign
from collector.config import Config, Configuration
from collector.engine import EngineBuild
from collector.inventory import Host, collect_host
from collector.progress import CampaignProgress
from evidence.bundle import export_bundle
from evidence.merge import merge_store
from evidence.store import open_store
from report.build import BuildResult
from scoring.store import rescore_campaign
from tests.support.engine import CPU_MOE, engine_config, run_in_process
from tests.support.report import build, project

pytestmark = pytest.mark.engine

GIB = 1 << 30


def _other_host(host_id: str, cpu: str, ram_gib: int, gpu: str | None) -> Host:
    """A host inventory for a machine this test does not run on."""
    facts: dict[str, Any] = dict(collect_host().facts)
    facts.update(
        {
            "hostname_hash": host_id,
            "cpu_model": cpu,
            "ram_bytes": ram_gib * GIB,
            "gpus": [{"index": 0, "name": gpu, "memory_bytes": 24 * GIB, "uuid_hash": "ab12"}]
            if gpu
            else [],
            "gpu_driver": "550.120" if gpu else None,
            "cuda_version": "12.4" if gpu else None,
        }
    )
    return Host(host_id=host_id, facts=facts)


@dataclass(frozen=True)
class Machine:
    store: str
    release: str
    host: Host | None  # None: this machine's own inventory


def _config(model: Path, engine: EngineBuild, release: str) -> Config:
    return engine_config(
        model,
        engine,
        configurations=(Configuration(label="baseline"), CPU_MOE),
        name="fleet test",
        release=release,
        repeats=2,
        max_tokens_cap=16,
        tests=["simple-response"],
    )


@pytest.fixture(scope="module")
def machines() -> tuple[Machine, ...]:
    return (
        Machine("here.duckdb", "1.6.0", None),
        Machine(
            "gpu-box.duckdb",
            "1.7.0",
            _other_host("f1ee7000aaaa0001", "Fleet CPU A", 64, "NVIDIA RTX 4090 (test)"),
        ),
        Machine("laptop.duckdb", "1.7.0", _other_host("f1ee7000aaaa0002", "Fleet CPU B", 16, None)),
    )


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory,
    engine: EngineBuild,
    moe_model: Path,
    machines: tuple[Machine, ...],
) -> list[Path]:
    tmp = tmp_path_factory.mktemp("fleet")
    # The inventory is read where the campaign row is created.
    recording = importlib.import_module(campaign.create_campaign.__module__)
    paths = []
    for m in machines:
        db = tmp / m.store
        with pytest.MonkeyPatch.context() as mp:
            if m.host is not None:
                mp.setattr(recording, "collect_host", lambda nvml=None, h=m.host: h)
            with open_store(db) as con, CampaignProgress() as progress:
                campaign_id = run_in_process(
                    con,
                    _config(moe_model, engine, m.release),
                    progress,
                    tmp,
                    engine=engine,
                    model=moe_model,
                    profile="quick",
                    command=["test_fleet"],
                )
                rescore_campaign(con, campaign_id)
        paths.append(db)
    return paths


def _count(db: Path, sql: str) -> Any:
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(sql).fetchone()
        return row[0] if row else None
    finally:
        con.close()


@pytest.fixture(scope="module")
def merged(stores: list[Path]) -> Path:
    target = stores[0].parent / "all.duckdb"
    with open_store(target) as con:
        reports = [merge_store(con, s) for s in stores]
    assert all(not r.conflicts for r in reports)
    return target


def test_three_stores_from_three_hosts_merge_into_one(merged: Path, stores: list[Path]) -> None:
    assert _count(merged, "SELECT count(*) FROM hosts") == 3
    assert _count(merged, "SELECT count(*) FROM campaigns") == 3
    assert _count(merged, "SELECT count(DISTINCT host_id) FROM campaigns") == 3
    requests = sum(_count(s, "SELECT count(*) FROM requests") for s in stores)
    chunks = sum(_count(s, "SELECT count(*) FROM chunks") for s in stores)
    assert requests == _count(merged, "SELECT count(*) FROM requests") == 3 * 2 * 2
    assert chunks == _count(merged, "SELECT count(*) FROM chunks")
    before = {
        t: _count(merged, f"SELECT count(*) FROM {t}")
        for t in ("requests", "chunks", "telemetry", "scores")
    }
    with open_store(merged) as con:
        again = [merge_store(con, s) for s in stores]
    assert [r.total_added for r in again] == [0, 0, 0]
    assert before == {t: _count(merged, f"SELECT count(*) FROM {t}") for t in before}


@pytest.fixture(scope="module")
def merged_site(merged: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildResult]:
    root = project(tmp_path_factory.mktemp("merged-site"))
    return root, build(merged, root, all_campaigns=True)


def _host_ids(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [
            str(r[0])
            for r in con.execute("SELECT host_id FROM campaigns ORDER BY started_utc").fetchall()
        ]
    finally:
        con.close()


def _summary_rows(index: str) -> list[list[str]]:
    table = index.split("## Summary table", 1)[1].split("\n\n", 2)[1]
    return [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]


def test_the_site_shows_the_hosts_side_by_side_and_per_host_rows(
    merged_site: tuple[Path, BuildResult], merged: Path, machines: tuple[Machine, ...]
) -> None:
    root, result = merged_site
    assert len(result.campaign_ids) == 3
    hosts = _host_ids(merged)
    page = (root / "docs" / "hardware.md").read_text(encoding="utf-8")
    assert "ran on **3 hosts**" in page
    # The side-by-side table: from its "| Fact |" header to the first line that is not a row
    # (the page goes on with each host's own inventory, whose rows have the same names).
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Fact |"))
    header = lines[start]
    assert [h for h in hosts if f"<code>{h}</code>" in header] == hosts
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    facts = {line.split("|")[1].strip(): line for line in lines[start + 2 : end]}
    # Only what differs: the CPUs, memory and GPUs do; the architecture does not.
    assert "Fleet CPU A" in facts["CPU"] and "Fleet CPU B" in facts["CPU"]
    assert "65,536.0&nbsp;MiB" in facts["Memory"] and "16,384.0&nbsp;MiB" in facts["Memory"]
    assert "NVIDIA RTX 4090 (test)" in facts["GPUs"]
    assert "Architecture" not in facts and "Architecture" in page.split("| Fact |")[0]

    rows = _summary_rows((root / "docs" / "index.md").read_text(encoding="utf-8"))
    assert all(len(r) == 8 for r in rows)  # the Host column is there
    by_host = {h: sorted(r[2] for r in rows if r[1] == f"<code>{h}</code>") for h in hosts}
    assert by_host == {h: ["baseline", "cpu-moe"] for h in hosts}

    history = (root / "docs" / "history.md").read_text(encoding="utf-8")
    assert "<strong>1.6.0</strong>" in history and "<strong>1.7.0</strong>" in history
    assert "History needs two releases" not in history
    for html in ("hardware", "history"):
        assert (result.site_dir / html / "index.html").is_file()


def test_the_site_builds_from_a_fleet_directory_read_in_place(
    stores: list[Path],
    machines: tuple[Machine, ...],
    merged_site: tuple[Path, BuildResult],
    tmp_path: Path,
) -> None:
    fleet = tmp_path / "fleet"
    for db, m in zip(stores, machines, strict=True):
        with open_store(db, read_only=True) as con:
            export_bundle(con, fleet / f"host={db.stem}" / f"release={m.release}", str(db))
    root = project(tmp_path)
    result = build(fleet, root, all_campaigns=True)
    merged_root, merged_result = merged_site
    assert sorted(result.campaign_ids) == sorted(merged_result.campaign_ids)

    def page(r: Path, name: str) -> str:
        text = (r / "docs" / name).read_text(encoding="utf-8")
        return re.sub(r'<p class="built-from">.*?</p>', "", text, flags=re.S)

    # The same evidence, whether merged into a store or read from the bundles.
    for name in ("hardware.md", "history.md", "index.md", "performance.md"):
        assert page(root, name) == page(merged_root, name), name
    reproduce = page(root, "reproduce.md")
    assert "a fleet of 3 Parquet" in reproduce
    assert "Built from the fleet directory <code>fleet</code>" in (
        root / "docs" / "index.md"
    ).read_text(encoding="utf-8")
    assert (result.site_dir / "hardware" / "index.html").is_file()
