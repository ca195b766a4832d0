"""`moe-evidence review`: human 1-5 quality scores, kept apart from the
automated ones (the report shows both side by side, never merged).

Interactive by default: each stored output without a review is shown, and the
reviewer types a score (1-5), an optional note, `s` to skip or `q` to stop.
Scripts use `--request ID --score N [--note TEXT]`.
"""

from __future__ import annotations

import getpass
import uuid
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from common.errors import ConfigError, StoreError
from evidence.store import open_store
from evidence.writer import insert_row


def record_review(
    con: duckdb.DuckDBPyConnection,
    request_id: str,
    score: int,
    note: str | None,
    reviewer: str | None,
) -> str:
    """Store one human review; return its id."""
    if not 1 <= score <= 5:
        raise ConfigError(f"--score must be 1 to 5, got {score}")
    if not con.execute("SELECT 1 FROM requests WHERE request_id = ?", [request_id]).fetchone():
        raise StoreError(f"no request {request_id} in this store")
    review_id = str(uuid.uuid4())
    insert_row(
        con,
        "reviews",
        {
            "review_id": review_id,
            "request_id": request_id,
            "score": score,
            "note": note or None,
            "reviewer": reviewer,
            "reviewed_utc": datetime.now(UTC),
        },
    )
    return review_id


def _pending(con: duckdb.DuckDBPyConnection, campaign_id: str | None) -> list[tuple[str, ...]]:
    return con.execute(
        """SELECT r.request_id, r.test_id, s.config_label, r.prompt, r.output_text
           FROM requests r JOIN server_runs s USING (server_run_id)
           WHERE (? IS NULL OR r.campaign_id = ?) AND r.status = 'ok'
             AND r.request_id NOT IN (SELECT request_id FROM reviews)
           ORDER BY r.started_utc""",
        [campaign_id, campaign_id],
    ).fetchall()


def review(
    db: Path,
    *,
    campaign: str | None = None,
    request: str | None = None,
    score: int | None = None,
    note: str | None = None,
    reviewer: str | None = None,
) -> int:
    """Review one request (`request` and `score`) or, interactively, every output of
    `campaign` (default: all) without a review yet; returns the exit code."""
    reviewer = reviewer or getpass.getuser()
    with open_store(db) as con:
        if request:
            if score is None:
                raise ConfigError("--request needs --score 1-5")
            record_review(con, request, score, note, reviewer)
            print(f"reviewed {request}: {score}")
            return 0
        console = Console()
        pending = _pending(con, campaign)
        console.print(f"{len(pending)} outputs without a review")
        for request_id, test_id, config, prompt, output in pending:
            console.print(
                Panel(
                    Text(output or "(empty output)"),
                    title=f"{test_id} / {config}: {prompt}",
                    subtitle=request_id,
                )
            )
            answer = console.input("score 1-5, s = skip, q = quit: ").strip().lower()
            if answer == "q":
                break
            if answer not in {"1", "2", "3", "4", "5"}:
                continue
            note = console.input("note (optional): ").strip()
            record_review(con, request_id, int(answer), note, reviewer)
    return 0
