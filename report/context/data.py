"""Data page: the Parquet downloads and the store's schema."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from report.export import Export
from report.queries import rows


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class DataContext:
    """The data page: the Parquet exports and the store schema."""

    exports: tuple[Export, ...]
    tables: tuple[Table, ...]
    schema_version: int


def build(con: duckdb.DuckDBPyConnection, exports: tuple[Export, ...]) -> DataContext:
    """The data page's context: what was exported, and the store's own schema."""
    cols = rows(
        con,
        """
        SELECT table_name, column_name, data_type, is_nullable
        FROM duckdb_columns()
        WHERE database_name = current_database() AND schema_name = 'main'
        ORDER BY table_name, column_index
        """,
    )
    tables: dict[str, list[Column]] = {}
    for c in cols:
        tables.setdefault(c["table_name"], []).append(
            Column(c["column_name"], c["data_type"], bool(c["is_nullable"]))
        )
    version = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return DataContext(
        exports=exports,
        tables=tuple(Table(name, tuple(c)) for name, c in tables.items()),
        schema_version=int(version[0]) if version and version[0] is not None else 0,
    )
