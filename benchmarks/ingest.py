"""Store ingest: chunk rows per second, written the way a campaign writes them.

One transaction per request holds its `requests` row and its chunks. The
batched path is the collector's (`evidence.writer.chunk_table` into Arrow,
`insert_arrow`); the row-by-row path sends the same rows through a
parameterised `executemany`, for the side-by-side ratio. Building the rows is
inside the timer: it is part of what storing a request costs.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from benchmarks.results import Measurement, judged, reference
from evidence.store import open_store
from evidence.writer import Transaction, chunk_table, insert_arrow, insert_row

CHUNKS_PER_REQUEST = 400
# One request's chunks as parallel columns: arrival time (ns), text, kind.
Columns = tuple[list[int], list[str], list[str]]
Writer = Callable[[duckdb.DuckDBPyConnection, str, Columns], None]


def _batched(con: duckdb.DuckDBPyConnection, request_id: str, columns: Columns) -> None:
    insert_arrow(con, "chunks", chunk_table(request_id, *columns))


def _row_by_row(con: duckdb.DuckDBPyConnection, request_id: str, columns: Columns) -> None:
    rows = [(request_id, seq, *chunk) for seq, chunk in enumerate(zip(*columns, strict=True))]
    con.executemany(
        "INSERT INTO chunks (request_id, seq, t_ns, text, kind) VALUES (?, ?, ?, ?, ?)", rows
    )


def _request_row(request_id: str, text: str, n: int) -> dict[str, object]:
    return {
        "request_id": request_id,
        "server_run_id": "perf",
        "campaign_id": "perf",
        "test_id": "creative-writing",
        "repeat": 1,
        "stream": True,
        "api": "openai-chat",
        "prompt": "p",
        "max_tokens": n,
        "temperature": 0.3,
        "seed": 42,
        "started_utc": datetime.now(UTC),
        "status": "ok",
        "output_text": text,
        "sent_ns": 0,
        "first_token_ns": 1,
        "done_ns": n,
        "event_count": n,
    }


def _rate(db: Path, requests: int, write: Writer) -> float:
    """Chunk rows per second for `requests` requests of CHUNKS_PER_REQUEST chunks each."""
    n = CHUNKS_PER_REQUEST
    text = [f" token{i % 97}" for i in range(n)]
    kind = ["content"] * n
    output = "".join(text)
    with open_store(db) as con:
        started = time.perf_counter()
        for r in range(requests):
            request_id = str(uuid.uuid4())
            t = [r * 1_000_000_000 + i * 20_000_000 for i in range(n)]
            with Transaction(con):
                insert_row(con, "requests", _request_row(request_id, output, n))
                write(con, request_id, (t, text, kind))
        elapsed = time.perf_counter() - started
        stored = con.execute("SELECT count(*) FROM chunks").fetchone()
    if not stored or stored[0] != requests * n:
        raise RuntimeError(f"expected {requests * n} chunk rows, the store has {stored}")
    return requests * n / elapsed


def _bulk_rate(db: Path, rows: int) -> float:
    """Chunk rows per second for one Arrow insert of `rows` rows: the ceiling that
    the per-request transactions are measured against."""
    t = list(range(rows))
    table = chunk_table("bulk", t, [f" token{i % 97}" for i in t], ["content"] * rows)
    with open_store(db) as con:
        started = time.perf_counter()
        with Transaction(con):
            insert_arrow(con, "chunks", table)
        return rows / (time.perf_counter() - started)


def measure_ingest(quick: bool) -> list[Measurement]:
    batched_requests = 100 if quick else 500
    row_requests = 10 if quick else 40
    with tempfile.TemporaryDirectory(prefix="moe-perf-") as tmp:
        batched = _rate(Path(tmp) / "batched.duckdb", batched_requests, _batched)
        row_by_row = _rate(Path(tmp) / "rows.duckdb", row_requests, _row_by_row)
        bulk_rows = batched_requests * CHUNKS_PER_REQUEST
        bulk = _bulk_rate(Path(tmp) / "bulk.duckdb", bulk_rows)
    shape = f"{CHUNKS_PER_REQUEST} chunks per request, one transaction each"
    return [
        judged(
            "store ingest, batched",
            batched,
            "rows/s",
            ">= 100,000 rows/s",
            requests=batched_requests,
            chunks_per_request=CHUNKS_PER_REQUEST,
            note=shape,
        ),
        reference(
            "store ingest, row by row",
            row_by_row,
            "rows/s",
            requests=row_requests,
            chunks_per_request=CHUNKS_PER_REQUEST,
            note=shape,
        ),
        reference("store ingest, batched / row by row", batched / row_by_row, "ratio"),
        reference(
            "store ingest, one bulk insert",
            bulk,
            "rows/s",
            rows=bulk_rows,
            note="all rows in one Arrow insert and transaction: the per-transaction cost removed",
        ),
    ]
