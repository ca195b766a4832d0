"""A store written by an earlier collector builds: the report reads it as today's schema
(evidence.current_schema), never writing to it, and shows what it lacks as not measured."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from evidence.current_schema import present_as_current
from evidence.migrations import SCHEMA_VERSION
from tests.support.report import build, project, synthetic_store

# What migrations 6-8 added, as a store of schema version 5 (the previous release) lacks it.
_SINCE_5 = (
    "ALTER TABLE requests DROP COLUMN tokenizer",
    "ALTER TABLE requests DROP COLUMN tokenizer_error",
    "DROP TABLE server_loads",
    "ALTER TABLE telemetry DROP COLUMN collector_cpu_percent",
    "DELETE FROM schema_migrations WHERE version > 5",
)


@pytest.fixture(scope="module")
def version_5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("v5") / "v5.duckdb"
    synthetic_store(db)
    con = duckdb.connect(str(db))
    try:
        for statement in _SINCE_5:
            con.execute(statement)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return db


def test_a_version_5_store_builds_unchanged(version_5: Path, tmp_path: Path) -> None:
    assert SCHEMA_VERSION > 5
    before = hashlib.sha256(version_5.read_bytes()).hexdigest()
    root = project(tmp_path)
    result = build(version_5, root)  # raised a BinderException (collector_cpu_percent) before
    assert (result.site_dir / "index.html").is_file()
    performance = (root / "docs" / "performance.md").read_text(encoding="utf-8")
    assert "not measured" in performance
    # A reader never migrates: the file is the same bytes after the build.
    assert hashlib.sha256(version_5.read_bytes()).hexdigest() == before


def test_what_an_older_store_lacks_is_named_and_null(version_5: Path) -> None:
    con = duckdb.connect(str(version_5), read_only=True)
    try:
        added = present_as_current(con)
        assert sorted(added) == [
            "requests.tokenizer",
            "requests.tokenizer_error",
            "server_loads",
            "telemetry.collector_cpu_percent",
        ]
        row = con.execute("SELECT count(*), count(tokenizer) FROM requests").fetchone()
        assert row is not None and row[0] > 0 and row[1] == 0
        assert con.execute("SELECT count(*) FROM server_loads").fetchone() == (0,)
    finally:
        con.close()


def test_a_current_store_is_left_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "now.duckdb"
    synthetic_store(db)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert present_as_current(con) == []
    finally:
        con.close()
