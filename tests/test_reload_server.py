"""A server that loads the model for every request (Shimmy 1.7.0), end to end.

The collector launches the calibration server in its Shimmy 1.7.0 mode, whose
stderr (the loader log, one load per generation request over `--load-s`) lands in
the run's log file; the log watcher stamps each load, the store attributes it to
its request, the registry's metrics split TTFT into load and the rest, and the
site says the server reloaded. Attached, the same server has no log: not
verifiable, said so."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from calibration.shimmy import ShimmyMode
from collector.campaign import run_campaign
from collector.config import CampaignSection, Config, Configuration, ModelEntry, ServerSection
from collector.progress import CampaignProgress
from collector.server import free_port
from evidence.metrics import create_views
from evidence.store import open_store
from report.build import BuildOptions, build_site, stage_project

ROOT = Path(__file__).resolve().parents[1]
LOAD_S = 0.4
TESTS = ["simple-response", "code-generation"]


class _ServerTruth(CampaignProgress):
    """After each recorded request, the calibration server's own record of its load."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url
        self.records: list[dict[str, Any]] = []

    def finished(self, status: str, summary: str) -> None:
        super().finished(status, summary)
        last = httpx.get(f"{self.base_url}/_calibration/last", trust_env=False, timeout=10)
        self.records.append(last.json())


def _campaign() -> CampaignSection:
    return CampaignSection(
        name="reload test",
        repeats=2,
        pause_s=0,
        non_streaming=False,
        idle_window_s=0.2,
        telemetry_hz=10,
        tests=TESTS,
        tokenize=False,
    )


def _run(config: Config, progress: CampaignProgress, tmp_path: Path) -> Path:
    db = tmp_path / "evidence.duckdb"
    with open_store(db) as con, progress:
        run_campaign(
            con,
            config,
            profile="test",
            command=["test"],
            model_paths={},
            engine=None,
            inspect=lambda _: {},
            progress=progress,
            data_dir=tmp_path / "data",
        )
    return db


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_a_launched_reloading_server_has_its_load_measured_per_request(tmp_path: Path) -> None:
    port = free_port()
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(Scenario(tokens=12, gap_s=0.01).to_dict()), encoding="utf-8")
    config = Config(
        campaign=_campaign(),
        server=ServerSection(
            command=[
                sys.executable,
                "-m",
                "calibration.server",
                "--port",
                "{port}",
                "--scenario",
                str(scenario),
                "--shimmy-1.7.0",
                "--load-s",
                str(LOAD_S),
            ],
            port=port,
            api="shimmy",
            startup_timeout_s=30,
            env={"PYTHONPATH": str(ROOT)},
        ),
        models=[ModelEntry(label="calibration")],
        configurations=[Configuration(label="baseline")],
    )
    truth = _ServerTruth(f"http://127.0.0.1:{port}")
    db = _run(config, truth, tmp_path)

    con = duckdb.connect(str(db), read_only=True)
    create_views(con)
    loads = _rows(con, "SELECT * FROM server_loads ORDER BY seq")
    requests = _rows(
        con,
        "SELECT r.request_id, r.sent_ns, r.first_token_ns, m.loads_in_request, m.model_load_ms, "
        "m.ttft_ms, m.ttft_after_load_ms, m.request_rss_peak_bytes FROM requests r "
        "JOIN request_metrics m USING (request_id) ORDER BY r.sent_ns",
    )
    run = _rows(con, "SELECT * FROM server_run_loads")[0]
    log_summary = json.loads(con.execute("SELECT log_summary FROM server_runs").fetchone()[0])
    con.close()

    recorded = len(TESTS) * 2
    assert len(requests) == recorded
    # The warm-up's load belongs to no request; then one load per recorded request.
    assert len(loads) == recorded + 1
    assert loads[0]["request_id"] is None
    assert [x["request_id"] for x in loads[1:]] == [r["request_id"] for r in requests]
    assert all(x["last_line_ns"] is not None for x in loads)
    assert log_summary["loads"] == recorded + 1 and log_summary["load_differences"] == []
    for req, load, record in zip(requests, loads[1:], truth.records, strict=True):
        assert req["loads_in_request"] == 1
        # Seen at most a few polls after the server wrote the load's last line.
        lag_ms = (load["last_line_ns"] - record["load_ended_ns"]) / 1e6
        assert -1 < lag_ms < 150, lag_ms
        assert LOAD_S * 1000 <= req["model_load_ms"] < LOAD_S * 1000 + 200
        # TTFT includes the load; after it, only the first token's own latency.
        assert req["ttft_ms"] >= LOAD_S * 1000
        assert req["ttft_after_load_ms"] == pytest.approx(
            max(req["ttft_ms"] - req["model_load_ms"], 0.0)
        )
        assert req["ttft_after_load_ms"] < 150
    assert run["reloads_per_request"] is True
    assert run["requests_with_load"] == recorded
    assert LOAD_S * 1000 <= run["model_load_ms_median"] < LOAD_S * 1000 + 200

    docs = _site(db, tmp_path)
    said = (
        f"baseline: this server loaded the model for each request ({recorded} of "
        f"{recorded} requests): TTFT includes a load of"
    )
    performance = (docs / "performance.md").read_text(encoding="utf-8")
    memory = (docs / "memory.md").read_text(encoding="utf-8")
    assert said in performance and said in memory
    assert "| TTFT after the load |" in performance
    assert "| Device memory peak during the request |" in memory
    assert "not resident between requests" in memory


def test_an_attached_reloading_server_is_not_verifiable(tmp_path: Path) -> None:
    with CalibratedServer(
        Scenario(tokens=6, gap_s=0.005), shimmy=ShimmyMode(load_s=0.1, log=tmp_path / "x.log")
    ) as server:
        config = Config(
            campaign=_campaign(),
            server=ServerSection(mode="attach", endpoint=server.base_url, api="shimmy"),
            models=[ModelEntry(label="calibration")],
            configurations=[Configuration(label="attached")],
        )
        db = _run(config, CampaignProgress(), tmp_path)
    con = duckdb.connect(str(db), read_only=True)
    create_views(con)
    assert con.execute("SELECT count(*) FROM server_loads").fetchone() == (0,)
    assert con.execute(
        "SELECT DISTINCT loads_in_request, model_load_ms FROM request_metrics"
    ).fetchall() == [(None, None)]
    assert con.execute("SELECT reloads_per_request FROM server_run_loads").fetchall() == [(None,)]
    con.close()
    docs = _site(db, tmp_path)
    for page in ("performance.md", "memory.md"):
        text = (docs / page).read_text(encoding="utf-8")
        assert "per-request reload not verifiable: no server log" in text
        assert "loaded the model for each request" not in text


def _site(db: Path, tmp_path: Path) -> Path:
    root = stage_project(ROOT, tmp_path / "project")
    build_site(BuildOptions(db=db, root=root, run_mkdocs=False))
    return root / "docs"
