"""Writing rows: batched through Arrow, never row by row.

A request, its chunks and the telemetry sampled since the previous request go
in one transaction, so a crash (or Ctrl-C) loses at most the request in flight
and the store never holds a request without its chunks.

Every row passes through here, so here is where secrets are replaced (see
`common.secrets`): `to_json` replaces what its structure shows (a secret flag's
value in any list of strings, a URL's credentials), and, once `redact_secrets`
has named a connection's secrets, every row written through it has their values
replaced in every string, chunks included.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from common.secrets import Secrets, redact_argv, redact_url

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
        ("collector_cpu_percent", pa.float64()),
    ]
)


# The secrets of each open connection (see `redact_secrets`); weak, so that a
# closed and collected connection takes its secrets with it.
_SECRETS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, Secrets] = (
    weakref.WeakKeyDictionary()
)
# A value that is one URL and nothing else (an endpoint).
_BARE_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S*", re.IGNORECASE)
# Tables of streamed pieces: their `text` is redacted per request and kind as one text.
_STREAM_COLUMNS = frozenset({"request_id", "kind", "text"})
# Columns whose text may end cut short (an error quotes the first bytes of a body):
# a tail that is the start of a secret is redacted too (see `Secrets.text`).
_CUT_COLUMNS = frozenset({"error"})


def redact_secrets(con: duckdb.DuckDBPyConnection, secrets: Secrets) -> None:
    """From now on, replace `secrets` (added to any named before) in every row
    written through `con` by `insert_row`, `update_row` and `insert_arrow`."""
    _SECRETS[con] = _SECRETS.get(con, Secrets()) | secrets


def secrets_of(con: duckdb.DuckDBPyConnection) -> Secrets:
    """The secrets named for `con` (none yet: an empty Secrets), for what the campaign
    keeps outside the store and must redact the same way (its logs on disk)."""
    return _SECRETS.get(con, Secrets())


class JsonText(str):
    """The text `to_json` made: the writer redacts it as JSON (strings only), never
    as text, so a secret that happens to match a number or `true` cannot break it."""


def to_json(value: Any) -> JsonText | None:
    """JSON text for a JSON column (None stays NULL), with what its structure shows
    to be secret replaced: the value of a secret flag in any list of strings (an
    argv, a command), the credentials of any URL."""
    if value is None:
        return None
    return JsonText(json.dumps(_structural(value), sort_keys=True, default=str))


def _structural(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: _structural(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return redact_argv(value)
        return [_structural(v) for v in value]
    return value


def as_stored(value: Any, secrets: Secrets | None = None) -> Any:
    """`value` as a JSON column holds it once written with `secrets` named: what a
    check that compares a value with its stored copy must compare."""
    text = to_json(value)
    return None if text is None else json.loads(_redact(text, secrets))


def _redacted(con: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> list[Any]:
    secrets = _SECRETS.get(con)
    return [_redact(v, secrets, cut=k in _CUT_COLUMNS) for k, v in row.items()]


def _redact(value: Any, secrets: Secrets | None, cut: bool = False) -> Any:
    if isinstance(value, JsonText):
        if not secrets:
            return value
        return json.dumps(secrets.value(json.loads(value)), sort_keys=True)
    if isinstance(value, str):
        if _BARE_URL.fullmatch(value):
            value = redact_url(value)
        return secrets.text(value, cut=cut) if secrets else value
    return value


def insert_row(con: duckdb.DuckDBPyConnection, table: str, row: Mapping[str, Any]) -> None:
    """INSERT one row by column name (secrets replaced: see `redact_secrets`)."""
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    con.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", _redacted(con, row))


def update_row(
    con: duckdb.DuckDBPyConnection, table: str, key: str, key_value: str, row: Mapping[str, Any]
) -> None:
    """UPDATE one row's columns by key (secrets replaced: see `redact_secrets`)."""
    sets = ", ".join(f"{c} = ?" for c in row)
    con.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", [*_redacted(con, row), key_value])


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    """Bulk-insert an Arrow table whose column names match `table`'s (secrets
    replaced: see `redact_secrets`)."""
    if data.num_rows == 0:
        return
    secrets = _SECRETS.get(con)
    if secrets:
        data = _redact_table(data, secrets)
    con.register("_batch", data)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _batch")
    finally:
        con.unregister("_batch")


def _redact_table(data: pa.Table, secrets: Secrets) -> pa.Table:
    """`data` with `secrets` replaced in its string columns; the `text` of a table of
    streamed pieces as one text per request and kind (a secret may arrive split)."""
    for i, field in enumerate(data.schema):
        if not pa.types.is_string(field.type) and not pa.types.is_large_string(field.type):
            continue
        values = data.column(i).to_pylist()
        if field.name == "text" and set(data.column_names) >= _STREAM_COLUMNS:
            redacted = _redact_streams(data, values, secrets)
        elif secrets.found_in("\0".join(v for v in values if v)):  # one search per column
            redacted = [None if v is None else secrets.text(v) for v in values]
        else:
            continue
        if redacted != values:
            data = data.set_column(i, field, pa.array(redacted, field.type))
    return data


def _redact_streams(data: pa.Table, texts: list[str | None], secrets: Secrets) -> list[str | None]:
    streams: dict[tuple[Any, Any], list[int]] = {}
    keys = zip(data.column("request_id").to_pylist(), data.column("kind").to_pylist(), strict=True)
    for row, key in enumerate(keys):
        streams.setdefault(key, []).append(row)
    out = list(texts)
    for rows in streams.values():
        for row, text in zip(rows, secrets.stream([texts[r] for r in rows]), strict=True):
            out[row] = text
    return out


def chunk_table(
    request_id: str, t_ns: Sequence[int], text: Sequence[str], kind: Sequence[str]
) -> pa.Table:
    n = len(t_ns)
    # The column types are CHUNK_SCHEMA's alone: from_pydict converts to them.
    return pa.Table.from_pydict(
        {
            "request_id": [request_id] * n,
            "seq": range(n),
            "t_ns": t_ns,
            "text": text,
            "kind": kind,
        },
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
