"""Scores and gates into the store, recomputed from stored rows only.

`rescore_campaign` replaces a campaign's scores and gates in one transaction:
raw rows are never touched, and derived rows always carry the scorer version
that made them. `python -m collector rescore` runs it without a model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb

from evidence.errors import SandboxError, StoreError
from evidence.metrics import create_views
from evidence.store import default_db_path, open_store
from evidence.writer import Transaction, to_json
from scoring import SCORER_VERSION
from scoring.gates import evaluate_gates
from scoring.placement import Placement, check_placement
from scoring.quality import score_request
from scoring.score import Score
from scoring.similarity import similarity_scores


def _request_scores(con: duckdb.DuckDBPyConnection, campaign_id: str) -> list[tuple[str, Score]]:
    rows = con.execute(
        "SELECT request_id, test_id, output_text, finish_reason, status, max_tokens "
        "FROM requests WHERE campaign_id = ? ORDER BY started_utc",
        [campaign_id],
    ).fetchall()
    out: list[tuple[str, Score]] = []
    for request_id, test_id, text, finish, status, max_tokens in rows:
        try:
            scores = score_request(test_id, text, finish, status, max_tokens)
        except SandboxError as exc:
            # The sandbox itself could not run: store no verdict rather than a false fail.
            scores = [Score("scoring_error", 1.0, {"error": str(exc)})]
        out += [(request_id, s) for s in scores]
    return out


def _preservation_scores(
    con: duckdb.DuckDBPyConnection, campaign_id: str
) -> list[tuple[str, Score]]:
    """Each offload request against the baseline request of the same model, test,
    repeat and streaming mode: the same seed, so any difference is the offload's."""
    pairs = con.execute(
        """
        SELECT o.request_id, o.output_text, b.request_id, b.output_text
        FROM requests o
        JOIN server_runs so ON so.server_run_id = o.server_run_id
        JOIN requests b ON b.campaign_id = o.campaign_id AND b.test_id = o.test_id
                       AND b.repeat = o.repeat AND b.stream = o.stream
        JOIN server_runs sb ON sb.server_run_id = b.server_run_id
        WHERE o.campaign_id = ? AND so.config_label <> 'baseline'
          AND sb.config_label = 'baseline' AND sb.model_id = so.model_id
          AND o.status = 'ok' AND b.status = 'ok'
        """,
        [campaign_id],
    ).fetchall()
    out: list[tuple[str, Score]] = []
    for req_id, text, base_id, base_text in pairs:
        out += [(req_id, s) for s in similarity_scores(base_text, text, base_id)]
    return out


def _placements(con: duckdb.DuckDBPyConnection, campaign_id: str) -> list[tuple[str, Placement]]:
    rows = con.execute(
        """SELECT s.server_run_id, m.spec, s.log_summary, s.n_cpu_moe
           FROM server_runs s JOIN models m USING (model_id)
           WHERE s.campaign_id = ? ORDER BY s.started_utc""",
        [campaign_id],
    ).fetchall()
    return [
        (
            run_id,
            check_placement(
                json.loads(spec) if spec else None, json.loads(log) if log else None, n_cpu_moe
            ),
        )
        for run_id, spec, log, n_cpu_moe in rows
    ]


def rescore_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str) -> tuple[int, int]:
    """Recompute every score and gate of `campaign_id`; return (scores, gates) written."""
    create_views(con)
    scores = _request_scores(con, campaign_id) + _preservation_scores(con, campaign_id)
    placements = _placements(con, campaign_id)
    with Transaction(con):
        con.execute(
            "DELETE FROM placement_checks WHERE server_run_id IN "
            "(SELECT server_run_id FROM server_runs WHERE campaign_id = ?)",
            [campaign_id],
        )
        if placements:
            con.executemany(
                "INSERT INTO placement_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        p.status,
                        p.expected_count,
                        p.overridden_count,
                        to_json(p.missing),
                        to_json(p.unexpected),
                        p.message,
                        SCORER_VERSION,
                    )
                    for run_id, p in placements
                ],
            )
        con.execute(
            "DELETE FROM scores WHERE request_id IN "
            "(SELECT request_id FROM requests WHERE campaign_id = ?)",
            [campaign_id],
        )
        if scores:
            con.executemany(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?)",
                [(rid, s.name, s.value, to_json(s.detail), SCORER_VERSION) for rid, s in scores],
            )
        gates = evaluate_gates(con, campaign_id)
        con.execute("DELETE FROM gates WHERE campaign_id = ?", [campaign_id])
        con.executemany(
            "INSERT INTO gates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    campaign_id,
                    g.gate_id,
                    g.title,
                    g.status,
                    g.threshold,
                    g.measured,
                    to_json(g.evidence),
                    SCORER_VERSION,
                )
                for g in gates
            ],
        )
    return len(scores), len(gates)


def main_rescore(argv: list[str]) -> int:
    """`python -m collector rescore [--db PATH] [--campaign ID]`."""
    parser = argparse.ArgumentParser(
        prog="python -m collector rescore",
        description="Recompute scores and gates from stored rows (no model is run).",
    )
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--campaign", help="one campaign (default: all)")
    args = parser.parse_args(argv)
    with open_store(args.db or default_db_path()) as con:
        ids = (
            [args.campaign]
            if args.campaign
            else [
                r[0]
                for r in con.execute(
                    "SELECT campaign_id FROM campaigns ORDER BY started_utc"
                ).fetchall()
            ]
        )
        if (
            args.campaign
            and not con.execute(
                "SELECT 1 FROM campaigns WHERE campaign_id = ?", [args.campaign]
            ).fetchone()
        ):
            raise StoreError(f"no campaign {args.campaign} in this store")
        for campaign_id in ids:
            n_scores, n_gates = rescore_campaign(con, campaign_id)
            status = ", ".join(
                f"{g}={s}"
                for g, s in con.execute(
                    "SELECT gate_id, status FROM gates WHERE campaign_id = ? ORDER BY gate_id",
                    [campaign_id],
                ).fetchall()
            )
            print(f"{campaign_id}: {n_scores} scores ({SCORER_VERSION}), {n_gates} gates: {status}")
    return 0
