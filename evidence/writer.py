"""Writing rows: batched through Arrow, never row by row.

A request, its chunks and the telemetry sampled since the previous request go
in one transaction, so a crash (or Ctrl-C) loses at most the request in flight
and the store never holds a request without its chunks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

# Column types for the tables written in bulk (chunks, telemetry); everything
# else is few rows and goes through plain parameterised INSERTs.
CHUNK_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("seq", pa.int32()),
        ("t_ns", pa.int64()),
        ("text", pa.string()),
        ("kind", pa.string()),
    ]
)

TELEMETRY_SCHEMA = pa.schema(
    [
        ("server_run_id", pa.string()),
        ("t_ns", pa.int64()),
        ("proc_count", pa.int32()),
        ("rss_bytes", pa.int64()),
        ("cpu_percent", pa.float64()),
        ("sys_mem_used_bytes", pa.int64()),
        ("sys_cpu_percent", pa.float64()),
        ("gpu_mem_used_bytes", pa.int64()),
        ("gpu_proc_mem_bytes", pa.int64()),
        ("gpu_util_percent", pa.float64()),
        ("device_rss_bytes", pa.int64()),
        ("device_cpu_percent", pa.float64()),
    ]
)


def to_json(value: Any) -> str | None:
    """JSON text for a JSON column (None stays NULL)."""
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def insert_row(con: duckdb.DuckDBPyConnection, table: str, row: Mapping[str, Any]) -> None:
    """INSERT one row by column name."""
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    con.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(row.values()))


def update_row(
    con: duckdb.DuckDBPyConnection, table: str, key: str, key_value: str, row: Mapping[str, Any]
) -> None:
    sets = ", ".join(f"{c} = ?" for c in row)
    con.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", [*row.values(), key_value])


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    """Bulk-insert an Arrow table whose column names match `table`'s."""
    if data.num_rows == 0:
        return
    con.register("_batch", data)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _batch")
    finally:
        con.unregister("_batch")


def chunk_table(
    request_id: str, t_ns: Sequence[int], text: Sequence[str], kind: Sequence[str]
) -> pa.Table:
    n = len(t_ns)
    return pa.Table.from_arrays(
        [
            pa.array([request_id] * n, pa.string()),
            pa.array(range(n), pa.int32()),
            pa.array(t_ns, pa.int64()),
            pa.array(text, pa.string()),
            pa.array(kind, pa.string()),
        ],
        schema=CHUNK_SCHEMA,
    )


def telemetry_table(server_run_id: str, samples: Sequence[Any]) -> pa.Table:
    """Arrow table from telemetry samples (objects with the TELEMETRY_SCHEMA fields)."""
    names = TELEMETRY_SCHEMA.names[1:]
    columns: list[pa.Array] = [pa.array([server_run_id] * len(samples), pa.string())]
    for name in names:
        columns.append(
            pa.array([getattr(s, name) for s in samples], TELEMETRY_SCHEMA.field(name).type)
        )
    return pa.Table.from_arrays(columns, schema=TELEMETRY_SCHEMA)


class Transaction:
    """`with Transaction(con):` commits on success, rolls back on any exception
    (KeyboardInterrupt included), so partial writes never land."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.con.execute("BEGIN TRANSACTION")
        return self.con

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.con.execute("COMMIT")
        else:
            self.con.execute("ROLLBACK")
