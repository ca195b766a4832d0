"""Bringing campaigns from other stores (or Parquet bundles) into one store.

Idempotent: rows are keyed by their UUIDs, so merging the same source twice
adds nothing. Read-only on the sources. One transaction: a merge lands whole
or not at all. A row whose key exists with different content is a conflict:
reported, never overwritten (the target keeps its row, and the rows that
belong to it — chunks, telemetry — are not taken from the source either).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from common.errors import SchemaTooNew, StoreError
from evidence.migrations import SCHEMA_VERSION
from evidence.store import verify_store
from evidence.writer import Transaction

# (table, key columns) in dependency order. Child tables without a key of
# their own come in with their parent: chunks with requests, telemetry with
# server runs.
KEYED_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hosts", ("host_id",)),
    ("campaigns", ("campaign_id",)),
    ("tests", ("campaign_id", "test_id")),
    ("models", ("model_id",)),
    ("server_runs", ("server_run_id",)),
    ("requests", ("request_id",)),
    ("scores", ("request_id", "name")),
    ("gates", ("campaign_id", "gate_id")),
    ("reviews", ("review_id",)),
    ("perf_results", ("perf_run_id", "name")),
    ("placement_checks", ("server_run_id",)),
    ("server_loads", ("server_run_id", "seq")),
)
CHILD_TABLES: tuple[tuple[str, str, str], ...] = (
    # (child, its parent table, the key they share)
    ("chunks", "requests", "request_id"),
    ("telemetry", "server_runs", "server_run_id"),
)
ALL_TABLES = tuple(t for t, _ in KEYED_TABLES) + tuple(c for c, _, _ in CHILD_TABLES)


@dataclass
class MergeReport:
    source: str
    added: dict[str, int] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total_added(self) -> int:
        return sum(self.added.values())


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [d[0] for d in con.execute(f"SELECT * FROM {relation} LIMIT 0").description]


def _source_tables(con: duckdb.DuckDBPyConnection, schema: str) -> set[str]:
    # Looked up, not probed: a failed SELECT would abort the merge's transaction.
    # `schema` is an attached database (its tables sit in its `main`) or a
    # schema of views over Parquet files.
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE (table_catalog = ? AND table_schema = 'main') OR table_schema = ?",
        [schema, schema],
    ).fetchall()
    return {str(r[0]) for r in rows}


def _source_version(con: duckdb.DuckDBPyConnection, schema: str, label: str) -> int:
    if "schema_migrations" not in _source_tables(con, schema):
        raise StoreError(
            f"{label} is not an evidence store (no schema_migrations table); nothing merged"
        )
    row = con.execute(f"SELECT max(version) FROM {schema}.schema_migrations").fetchone()
    version = int(row[0]) if row and row[0] is not None else 0
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{label} has schema version {version}, newer than this tool's "
            f"{SCHEMA_VERSION}; upgrade moe-evidence to merge it"
        )
    return version


def merge_schema(con: duckdb.DuckDBPyConnection, schema: str, label: str) -> MergeReport:
    """Merge every table of `schema` (an attached store, or views over a bundle)
    into the connection's main store. The caller holds the transaction."""
    _source_version(con, schema, label)
    present = _source_tables(con, schema)
    report = MergeReport(label)
    parents = {parent: link for _, parent, link in CHILD_TABLES}
    for table, key in KEYED_TABLES:
        if table not in present:
            continue  # an older source without this table
        src_cols = _columns(con, f"{schema}.{table}")
        common = [c for c in _columns(con, f"main.{table}") if c in src_cols]
        cols = ", ".join(common)
        on = " AND ".join(f"t.{k} = s.{k}" for k in key)
        # Conflicts: same key, different content in the columns both sides have
        # (a row comparison: no per-row text is built, so re-merging is cheap).
        src_row = ", ".join(f"s.{c}" for c in common)
        dst_row = ", ".join(f"t.{c}" for c in common)
        key_text = " || '/' || ".join(f"s.{k}::VARCHAR" for k in key)
        conflicts = con.execute(
            f"SELECT {key_text} FROM {schema}.{table} s JOIN main.{table} t ON {on} "
            f"WHERE ({src_row}) IS DISTINCT FROM ({dst_row})"
        ).fetchall()
        if conflicts:
            report.conflicts[table] = [str(c[0]) for c in conflicts]
        new_rows = (
            f"FROM {schema}.{table} s WHERE NOT EXISTS (SELECT 1 FROM main.{table} t WHERE {on})"
        )
        if table in parents:
            # The rows this merge adds: only their children come along.
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _new_{table} AS "
                f"SELECT s.{parents[table]} AS k {new_rows}"
            )
        before = _count(con, f"main.{table}")
        con.execute(
            f"INSERT INTO main.{table} ({cols}) "
            f"SELECT {', '.join('s.' + c for c in common)} {new_rows}"
        )
        report.added[table] = _count(con, f"main.{table}") - before
    for child, parent, link in CHILD_TABLES:
        if child not in present or parent not in present:
            continue
        src_cols = _columns(con, f"{schema}.{child}")
        common = [c for c in _columns(con, f"main.{child}") if c in src_cols]
        before = _count(con, f"main.{child}")
        con.execute(
            f"INSERT INTO main.{child} ({', '.join(common)}) "
            f"SELECT {', '.join('s.' + c for c in common)} FROM {schema}.{child} s "
            f"WHERE s.{link} IN (SELECT k FROM _new_{parent})"
        )
        report.added[child] = _count(con, f"main.{child}") - before
        con.execute(f"DROP TABLE _new_{parent}")
    return report


def _count(con: duckdb.DuckDBPyConnection, relation: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {relation}").fetchone()
    return int(row[0]) if row else 0


def record_merge(
    con: duckdb.DuckDBPyConnection, source_store_id: str | None, report: MergeReport
) -> None:
    con.execute(
        "INSERT INTO merge_log VALUES (?, ?, ?, ?, ?)",
        [
            source_store_id,
            report.source,
            datetime.now(UTC),
            json.dumps(report.added, sort_keys=True),
            json.dumps({k: len(v) for k, v in report.conflicts.items()}, sort_keys=True),
        ],
    )


def merge_store(con: duckdb.DuckDBPyConnection, source: Path) -> MergeReport:
    """Merge the DuckDB store at `source` (opened read-only) into `con`'s store."""
    if not source.is_file():
        raise StoreError(f"no evidence store at {source}; check the path")
    # Every block first: a damaged source met halfway through the merge would be
    # reported as damage to the target, whose connection reads it.
    verify_store(source)
    try:
        con.execute(f"ATTACH '{_sql_path(source)}' AS merge_src (READ_ONLY)")
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        raise StoreError(f"cannot open {source} read-only: {message}") from exc
    try:
        with Transaction(con):
            report = merge_schema(con, "merge_src", str(source))
            store_id = con.execute(
                "SELECT value FROM merge_src.store_meta WHERE key = 'store_id'"
            ).fetchone()
            record_merge(con, store_id[0] if store_id else None, report)
    finally:
        con.execute("DETACH merge_src")
    return report


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
