"""An older store, as an earlier version of the tool left it, is migrated and keeps its rows."""

from __future__ import annotations

from pathlib import Path

import duckdb

from evidence.migrations import MIGRATIONS, SCHEMA_VERSION
from evidence.store import open_store, schema_version
from tests.support.stores import StoreFactory

TABLES = ("hosts", "campaigns", "models", "server_runs", "requests", "chunks", "store_meta")
# Filled by _version_1_store: each table's columns at schema version 1.
VERSION_1_COLUMNS: dict[str, list[str]] = {}


def _version_1_store(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """A store at schema version 1 (only MIGRATIONS[0], applied by hand as the tool did),
    holding a campaign; returns every row of its tables."""
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
            " name VARCHAR NOT NULL, applied_utc TIMESTAMPTZ NOT NULL)"
        )
        first = MIGRATIONS[0]
        first.apply(con)
        for table in TABLES:
            described = con.execute(f"SELECT * FROM {table} LIMIT 0").description
            VERSION_1_COLUMNS[table] = [d[0] for d in described]
        con.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, now())", [first.version, first.name]
        )
        con.execute("INSERT INTO store_meta VALUES ('store_id', 'store-from-version-1')")
        factory = StoreFactory(con).campaign()
        factory.server_run("cpu-moe", ready_ns=5, n_cpu_moe=-1)
        factory.request("cpu-moe", [(10, "Hello"), (20, " there")], usage_tokens=2)
        factory.request("cpu-moe", [(30, "again")], status="timeout", repeat=2)
        return _rows(con)
    finally:
        con.close()


def _rows(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the version-1 tables, in the version-1 columns (migrations only
    ever add columns, so these must come through unchanged)."""
    out = {}
    for table in TABLES:
        columns = ", ".join(VERSION_1_COLUMNS[table])
        out[table] = con.execute(f"SELECT {columns} FROM {table} ORDER BY ALL").fetchall()
    return out


def test_a_version_1_store_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    before = _version_1_store(path)
    assert len(before["chunks"]) == 3

    # A reader reads it as it is and changes nothing.
    with open_store(path, read_only=True) as con:
        assert schema_version(con) == 1
        assert _rows(con) == before

    with open_store(path) as con:
        assert schema_version(con) == SCHEMA_VERSION
        applied = con.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ).fetchall()
        assert applied == [(m.version, m.name) for m in MIGRATIONS]
        assert _rows(con) == before
        # Migration 2's table exists and works on the old rows.
        assert con.execute("SELECT count(*) FROM placement_checks").fetchone() == (0,)
        run_id = con.execute("SELECT server_run_id FROM server_runs").fetchone()
        assert run_id is not None
        con.execute(
            "INSERT INTO placement_checks (server_run_id, status, message, "
            "scorer_version) VALUES (?, 'NOT MEASURED', 'old run', 'test')",
            [run_id[0]],
        )

    # Opening it again applies nothing twice and still finds everything.
    with open_store(path) as con:
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchone() == (
            len(MIGRATIONS),
        )
        assert _rows(con) == before
        assert con.execute("SELECT count(*) FROM placement_checks").fetchone() == (1,)
