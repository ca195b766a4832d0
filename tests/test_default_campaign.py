"""Which campaign `moe-evidence build` shows when none is named.

A later campaign that produced nothing (no request at all, or none that
succeeded) must never hide earlier evidence: the default is the latest
campaign with a successful request, complete ones first. Naming a campaign
with --campaign still shows exactly that one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from evidence.store import open_store
from report.queries import select_campaigns
from tests.support.stores import StoreFactory

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _campaign(con: duckdb.DuckDBPyConnection, hours: int, status: str, requests: list[str]) -> str:
    """A campaign started `hours` after T0 with one request per status in `requests`."""
    factory = StoreFactory(con, host_id=f"host-{hours}").campaign()
    con.execute(
        "UPDATE campaigns SET status = ?, started_utc = ? WHERE campaign_id = ?",
        [status, T0 + timedelta(hours=hours), factory.campaign_id],
    )
    if requests:
        factory.server_run("baseline")
    for repeat, request_status in enumerate(requests, start=1):
        factory.request("baseline", [(10, "a")], repeat=repeat, status=request_status)
    return factory.campaign_id


def _default(db: Path) -> str:
    with open_store(db, read_only=True) as con:
        (campaign,) = select_campaigns(con, []).campaigns
        return campaign.campaign_id


def test_an_empty_campaign_never_hides_earlier_evidence(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    with open_store(db) as con:
        good = _campaign(con, 0, "complete", ["ok", "timeout"])
        empty = _campaign(con, 1, "complete", [])
        failing = _campaign(con, 2, "complete", ["http_error", "error"])
        unreachable = _campaign(con, 3, "failed", [])
    assert _default(db) == good
    with open_store(db, read_only=True) as con:
        for named in (empty, failing, unreachable):
            assert select_campaigns(con, [named]).ids == [named]


def test_with_successes_the_latest_complete_one_still_wins(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    with open_store(db) as con:
        _campaign(con, 0, "complete", ["ok"])
        latest = _campaign(con, 1, "complete", ["ok"])
        _campaign(con, 2, "interrupted", ["ok"])  # partial: a complete one comes first
        _campaign(con, 3, "complete", [])
    assert _default(db) == latest


def test_a_partial_campaign_with_evidence_beats_a_complete_one_without(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    with open_store(db) as con:
        partial = _campaign(con, 0, "interrupted", ["ok"])
        _campaign(con, 1, "complete", ["error"])
    assert _default(db) == partial


def test_without_any_success_the_latest_complete_one_is_shown(tmp_path: Path) -> None:
    # Nothing better exists: the page then shows what there is (and says it failed).
    db = tmp_path / "e.duckdb"
    with open_store(db) as con:
        _campaign(con, 0, "complete", ["error"])
        latest = _campaign(con, 1, "complete", [])
        _campaign(con, 2, "failed", [])
    assert _default(db) == latest
