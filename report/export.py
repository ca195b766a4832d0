"""Parquet exports of the evidence behind a site, one file per table.

Rows are those of the selected campaigns (the site's evidence), except the
store-wide tables (store_meta, schema_migrations, perf_results). The derived
`request_metrics` view is exported too, flagged as derived: it is recomputed
from the raw tables by `evidence.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

# Table -> the rows of the selection (SQL over the TEMP `sel_campaigns` and `sel_requests` tables).
EXPORTS: tuple[tuple[str, str], ...] = (
    (
        "campaigns",
        "SELECT * FROM campaigns WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)",
    ),
    (
        "hosts",
        "SELECT * FROM hosts WHERE host_id IN (SELECT host_id FROM campaigns "
        "WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns))",
    ),
    ("tests", "SELECT * FROM tests WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)"),
    ("models", "SELECT * FROM models WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)"),
    (
        "server_runs",
        "SELECT * FROM server_runs WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)",
    ),
    (
        "requests",
        "SELECT * FROM requests WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)",
    ),
    ("chunks", "SELECT c.* FROM chunks c SEMI JOIN sel_requests USING (request_id)"),
    ("telemetry", "SELECT t.* FROM telemetry t SEMI JOIN sel_runs USING (server_run_id)"),
    ("scores", "SELECT s.* FROM scores s SEMI JOIN sel_requests USING (request_id)"),
    ("gates", "SELECT * FROM gates WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns)"),
    ("reviews", "SELECT v.* FROM reviews v SEMI JOIN sel_requests USING (request_id)"),
    ("perf_results", "SELECT * FROM perf_results"),
    ("store_meta", "SELECT * FROM store_meta"),
    ("schema_migrations", "SELECT * FROM schema_migrations"),
)
DERIVED: tuple[tuple[str, str], ...] = (
    (
        "request_metrics",
        "SELECT * EXCLUDE (model, model_order, config_order, test_order, category) "
        "FROM sel_requests",
    ),
)


@dataclass(frozen=True)
class Export:
    """One Parquet file written for the data page."""

    table: str
    file: str  # relative to the docs directory
    rows: int
    bytes: int
    derived: bool


def export_tables(
    con: duckdb.DuckDBPyConnection, docs: Path, subdir: str = "data"
) -> tuple[Export, ...]:
    """Write every table of the selection as Parquet under `docs/subdir`."""
    out_dir = docs / subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for derived, items in ((False, EXPORTS), (True, DERIVED)):
        for table, sql in items:
            path = out_dir / f"{table}.parquet"
            n = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()
            # The path is ours (table names above), never from the store.
            con.execute(f"COPY ({sql}) TO '{path.as_posix()}' (FORMAT parquet, COMPRESSION zstd)")
            written.append(
                Export(
                    table,
                    f"{subdir}/{table}.parquet",
                    int(n[0]) if n else 0,
                    path.stat().st_size,
                    derived,
                )
            )
    return tuple(written)
