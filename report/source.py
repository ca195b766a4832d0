"""What a build reads: a store file, or a fleet directory of Parquet bundles.

`evidence.bundle.open_source` opens either one read-only, a directory as one
view per table over every bundle's Parquet file. In a fleet, rows that
describe a machine or a store rather than a campaign repeat: every bundle from
one host carries that host's row, every bundle its store's migrations. Those
tables are collapsed here to one row per key, as TEMP tables (which DuckDB
resolves before the views of the same name), so each campaign joins its host
once. A campaign itself must be in one bundle only: two copies would count its
requests twice, so that is an error saying what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from common.errors import BuildError
from evidence.bundle import open_source
from evidence.current_schema import present_as_current

# Tables every bundle of a fleet may repeat, and the key that makes a row one.
SHARED: tuple[tuple[str, str], ...] = (
    ("hosts", "host_id"),
    ("store_meta", "key, value"),
    ("schema_migrations", "version"),
)


@contextmanager
def open_evidence(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The build's read-only connection to `path` (a store file or a fleet directory)."""
    with open_source(path) as con:
        # One thread: parallel aggregation adds floating-point partial sums in an
        # order that varies from run to run, and the last bits of a mean or a
        # standard deviation with them; the site must be the same bytes every time.
        con.execute("SET threads = 1")
        # A store (or bundles) from an earlier collector: read as today's schema, the
        # columns it never had NULL, which the pages show as not measured.
        present_as_current(con)
        if path.is_dir():
            _one_row_per_key(con)
            _one_bundle_per_campaign(con, path)
        yield con


def _one_row_per_key(con: duckdb.DuckDBPyConnection) -> None:
    for table, key in SHARED:
        # A host's facts can differ between bundles (a driver updated between
        # campaigns); ORDER BY ALL makes the row kept the same on every build.
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS "
            f"SELECT DISTINCT ON ({key}) * FROM main.{table} ORDER BY ALL"
        )


def _one_bundle_per_campaign(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    twice = con.execute(
        "SELECT campaign_id, count(*) FROM campaigns GROUP BY campaign_id HAVING count(*) > 1 "
        "ORDER BY campaign_id LIMIT 1"
    ).fetchone()
    if twice is not None:
        raise BuildError(
            f"campaign {twice[0]} is in {twice[1]} bundles under {path}; a fleet directory "
            "must hold each campaign once. Remove the extra bundle, or import the bundles into "
            f"one store, which merges them by key: `moe-evidence import {path} "
            "--db fleet.duckdb`, then build with --db fleet.duckdb"
        )
