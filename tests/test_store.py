"""The store: schema creation, migrations, locking, version checks, transactions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from common.errors import SchemaTooNew, StoreError, StoreLocked
from evidence.migrations import SCHEMA_VERSION
from evidence.store import open_store, schema_version
from evidence.writer import Transaction, chunk_table, insert_arrow

CONTRACT = {
    "requests": [
        "request_id",
        "server_run_id",
        "test_id",
        "repeat",
        "stream",
        "status",
        "http_status",
        "error",
        "finish_reason",
        "output_text",
        "sent_ns",
        "first_token_ns",
        "done_ns",
        "usage_prompt_tokens",
        "usage_completion_tokens",
        "server_timings",
    ],
    "chunks": ["request_id", "seq", "t_ns", "text"],
    "server_runs": [
        "server_run_id",
        "campaign_id",
        "model_id",
        "config_label",
        "argv",
        "version",
        "load_ms",
        "log_text",
        "exit_code",
    ],
    "models": ["model_id", "path", "sha256", "file_bytes"],
    "campaigns": ["campaign_id"],
    "hosts": ["host_id"],
    "telemetry": ["server_run_id", "t_ns"],
    "scores": ["request_id", "name", "value", "detail", "scorer_version"],
    "gates": ["campaign_id", "gate_id", "status", "threshold", "measured", "evidence"],
}


def test_new_store_has_the_contract(tmp_path: Path) -> None:
    with open_store(tmp_path / "e.duckdb") as con:
        for table, columns in CONTRACT.items():
            have = {
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                    [table],
                ).fetchall()
            }
            assert set(columns) <= have, (table, set(columns) - have)
        assert schema_version(con) == SCHEMA_VERSION
        store_id = con.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        assert store_id is not None and len(store_id[0]) == 36


def test_reopening_migrates_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "e.duckdb"
    with open_store(path):
        pass
    with open_store(path) as con:
        rows = con.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert rows == (SCHEMA_VERSION,)


def test_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.duckdb"
    with open_store(path) as con:
        con.execute("INSERT INTO schema_migrations VALUES (999, 'future', now())")
    with pytest.raises(SchemaTooNew, match="newer than this tool"), open_store(path):
        pass
    with pytest.raises(SchemaTooNew), open_store(path, read_only=True):
        pass


def test_missing_store_read_only(tmp_path: Path) -> None:
    with (
        pytest.raises(StoreError, match="nox -s collect"),
        open_store(tmp_path / "absent.duckdb", read_only=True),
    ):
        pass


def test_not_a_duckdb_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.duckdb"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="--db"), open_store(path):
        pass


def test_lock_names_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "locked.duckdb"
    with open_store(path):
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked) as info, open_store(path):
            pass
        assert info.value.pid == holder.pid
        assert f"PID {holder.pid}" in str(info.value) and "--db" in str(info.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_transaction_rolls_back_partial_request(tmp_path: Path) -> None:
    with open_store(tmp_path / "t.duckdb") as con:
        with pytest.raises(KeyboardInterrupt), Transaction(con):
            insert_arrow(con, "chunks", chunk_table("r1", [1, 2], ["a", "b"], ["content"] * 2))
            raise KeyboardInterrupt
        assert con.execute("SELECT count(*) FROM chunks").fetchone() == (0,)
        with Transaction(con):
            insert_arrow(con, "chunks", chunk_table("r2", [1], ["a"], ["content"]))
        assert con.execute("SELECT count(*) FROM chunks").fetchone() == (1,)


def test_read_only_store_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "ro.duckdb"
    with open_store(path):
        pass
    with open_store(path, read_only=True) as con, pytest.raises(duckdb.Error):
        con.execute("DELETE FROM chunks")
