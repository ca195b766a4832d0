"""Read an older store as if it had the current schema, without writing to it.

The report and the metric views query today's columns. A store written by an
earlier collector lacks the columns and tables added since (a reader never
migrates the file: the store is evidence, and may be read-only or shared), so
each table that lacks something is shadowed by a TEMP view of the same name
(DuckDB resolves TEMP objects first) that adds the missing columns as NULL, and
each missing table by an empty TEMP table. NULL is what the report already
reads as "not measured: the store predates it". The same holds for a fleet
directory whose Parquet bundles all come from an older tool.
"""

from __future__ import annotations

from functools import cache

import duckdb

from evidence.migrations import MIGRATIONS

__all__ = ["present_as_current"]


@cache
def _current_tables() -> dict[str, tuple[tuple[str, str], ...]]:
    """{table: ((column, type), ...)} of a store at this tool's schema version."""
    con = duckdb.connect(":memory:")
    try:
        for migration in MIGRATIONS:
            migration.apply(con)
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        tables.setdefault(table, []).append((column, data_type))
    return {t: tuple(cols) for t, cols in tables.items()}


def _present(con: duckdb.DuckDBPyConnection, schema: str) -> dict[str, set[str]]:
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = ? AND table_catalog = current_database()",
        [schema],
    ).fetchall()
    present: dict[str, set[str]] = {}
    for table, column in rows:
        present.setdefault(table, set()).add(column)
    return present


def present_as_current(con: duckdb.DuckDBPyConnection, schema: str = "main") -> list[str]:
    """Shadow what `schema` lacks of the current schema with TEMP views and tables;
    return what was added ("table" or "table.column"), empty for a current store."""
    present = _present(con, schema)
    # Named with its catalog: the TEMP view's own schema is also called "main".
    row = con.execute("SELECT current_database()").fetchone()
    source = f'"{row[0]}".{schema}' if row else schema
    added: list[str] = []
    for table, columns in _current_tables().items():
        if table == "schema_migrations":
            continue  # the store's own history, read as it is
        have = present.get(table)
        if have is None:
            typed = ", ".join(f'"{c}" {t}' for c, t in columns)
            con.execute(f'CREATE OR REPLACE TEMP TABLE "{table}" ({typed})')
            added.append(table)
            continue
        missing = [(c, t) for c, t in columns if c not in have]
        if not missing:
            continue
        extra = ", ".join(f'NULL::{t} AS "{c}"' for c, t in missing)
        con.execute(
            f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT *, {extra} FROM {source}."{table}"'
        )
        added.extend(f"{table}.{c}" for c, _ in missing)
    return added
