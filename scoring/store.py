"""Scores and gates into the store, recomputed from stored rows only.

`rescore_campaign` replaces a campaign's scores and gates in one transaction:
raw rows are never touched, and derived rows always carry the scorer version
that made them. `moe-evidence rescore` runs it without a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from common.errors import SandboxError, StoreError
from evidence.metrics import create_views
from evidence.store import open_store
from evidence.writer import Transaction, to_json
from scoring import SCORER_VERSION
from scoring.gates import evaluate_gates
from scoring.placement import Placement, check_placement
from scoring.quality import score_request
from scoring.score import Score
from scoring.similarity import similarity_scores


def _request_scores(con: duckdb.DuckDBPyConnection, campaign_id: str) -> list[tuple[str, Score]]:
    rows = con.execute(
        """SELECT r.request_id, r.test_id, r.output_text, m.completed, r.max_tokens,
                  r.finish_reason, m.finish_reason_inferred, r.status,
                  -- cut short on purpose: a capped budget, and the output reached it
                  coalesce(r.max_tokens < t.protocol_max_tokens
                           AND (r.finish_reason = 'length' OR m.output_tokens >= r.max_tokens),
                           false) AS cut_by_cap
           FROM requests r JOIN request_metrics m USING (request_id)
           LEFT JOIN tests t ON t.campaign_id = r.campaign_id AND t.test_id = r.test_id
           WHERE r.campaign_id = ? ORDER BY r.started_utc""",
        [campaign_id],
    ).fetchall()
    out: list[tuple[str, Score]] = []
    for request_id, test_id, text, completed, max_tokens, finish, inferred, status, cut in rows:
        try:
            scores = score_request(
                test_id,
                text,
                bool(completed),
                max_tokens,
                finish_reason=finish,
                finish_reason_inferred=inferred,
                status=status,
                cut_by_cap=bool(cut),
            )
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
        FROM offload_pairs p
        JOIN requests o ON o.request_id = p.offload_request_id
        JOIN requests b ON b.request_id = p.baseline_request_id
        WHERE p.campaign_id = ? AND o.status = 'ok' AND b.status = 'ok'
        """,
        [campaign_id],
    ).fetchall()
    out: list[tuple[str, Score]] = []
    for req_id, text, base_id, base_text in pairs:
        out += [(req_id, s) for s in similarity_scores(base_text, text, base_id)]
    return out


def _placements(con: duckdb.DuckDBPyConnection, campaign_id: str) -> list[tuple[str, Placement]]:
    rows = con.execute(
        """SELECT s.server_run_id, s.log_summary,
                  json_array_length(json_extract(m.spec, '$.expert_tensor_names')) AS total,
                  list_filter(
                      TRY_CAST(json_extract(m.spec, '$.expert_tensor_names') AS VARCHAR[]),
                      lambda name: expert_on_cpu(block_of(name), s.n_cpu_moe)) AS expected
           FROM server_runs s JOIN models m USING (model_id)
           WHERE s.campaign_id = ? ORDER BY s.started_utc""",
        [campaign_id],
    ).fetchall()
    return [
        (
            run_id,
            check_placement(
                None if expected is None else list(expected),
                int(total or 0),
                json.loads(log) if log else None,
            ),
        )
        for run_id, log, total, expected in rows
    ]


def rescore_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str) -> tuple[int, int]:
    """Recompute every score and gate of `campaign_id`; return (scores, gates) written."""
    create_views(con)
    scores = _request_scores(con, campaign_id) + _preservation_scores(con, campaign_id)
    with Transaction(con):
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
        gates = judge_campaign(con, campaign_id)
    return len(scores), gates


def judge_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str) -> int:
    """Recompute the placement checks and the release gates of `campaign_id` from its
    stored rows and scores (inside the caller's transaction); return the gate count."""
    create_views(con)
    placements = _placements(con, campaign_id)
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
    return len(gates)


def rescore_store(db: Path, campaign: str | None = None) -> list[str]:
    """Recompute the scores and gates of one campaign (default: every one) in `db`;
    one line per campaign saying what was written."""
    lines = []
    with open_store(db) as con:
        ids = [
            r[0]
            for r in con.execute(
                "SELECT campaign_id FROM campaigns WHERE ? IS NULL OR campaign_id = ? "
                "ORDER BY started_utc",
                [campaign, campaign],
            ).fetchall()
        ]
        if campaign and not ids:
            raise StoreError(f"no campaign {campaign} in this store; list them with `campaigns`")
        for campaign_id in ids:
            n_scores, n_gates = rescore_campaign(con, campaign_id)
            status = ", ".join(
                f"{g}={s}"
                for g, s in con.execute(
                    "SELECT gate_id, status FROM gates WHERE campaign_id = ? ORDER BY gate_id",
                    [campaign_id],
                ).fetchall()
            )
            lines.append(
                f"{campaign_id}: {n_scores} scores ({SCORER_VERSION}), {n_gates} gates: {status}"
            )
    return lines
