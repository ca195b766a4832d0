"""Collect, then score: the one place the two happen in sequence.

Capture (collector) stores every token and sample and never imports scoring;
scoring reads stored rows only. A campaign whose configurations failed is still
scored (what ran is evidence too) before its failure is reported.
"""

from __future__ import annotations

from pathlib import Path

from collector.collect_request import CollectRequest
from collector.runner import run_command
from common.errors import CampaignFailed
from evidence.store import default_db_path, open_store
from scoring.store import rescore_campaign


def collect_and_score(request: CollectRequest) -> int:
    """Run (or resume) the campaign `request` asks for, score it, and report; exit code 0."""
    db: Path = request.db or default_db_path()
    try:
        campaign_id = run_command(request, db)
    except CampaignFailed as exc:
        score(db, exc.campaign_id)
        raise
    n = score(db, campaign_id)
    print(f"campaign {campaign_id} complete: {n} requests in {db}")
    return 0


def score(db: Path, campaign_id: str) -> int:
    """Compute the campaign's scores and gates from its stored rows; its request count."""
    with open_store(db) as con:
        rescore_campaign(con, campaign_id)
        row = con.execute(
            "SELECT count(*) FROM requests WHERE campaign_id = ?", [campaign_id]
        ).fetchone()
    return int(row[0]) if row else 0
