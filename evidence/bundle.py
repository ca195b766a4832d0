"""Portable Parquet bundles, and reading a whole fleet of them in place.

A bundle is a directory with one Parquet file per table and `manifest.json`
(schema version, source store id, row counts, sha256 of each file). It moves
evidence between machines on different DuckDB versions or through object
storage. `import` verifies every checksum before touching the target, then
merges like `merge` does.

A fleet is a directory tree of bundles, e.g. `fleet/host=gh200/release=1.7.0/`.
`open_source` reads it in place: an in-memory DuckDB with one view per table
over every bundle's Parquet file, so the report can build from it without an
import.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from common.errors import SchemaTooNew, StoreError
from common.files import file_sha256
from evidence.merge import ALL_TABLES, MergeReport, merge_schema, record_merge
from evidence.migrations import SCHEMA_VERSION
from evidence.store import check_version, open_store
from evidence.writer import Transaction

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
# Tables a bundle carries besides the merged ones: the source's own identity.
META_TABLES = ("store_meta", "schema_migrations")


def _sql(path: Path) -> str:
    return str(path).replace("'", "''")


def export_bundle(con: duckdb.DuckDBPyConnection, directory: Path, source: str) -> dict[str, int]:
    """Write every table of the open store to `directory` as Parquet + manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    version = check_version(con, Path(source))
    tables: dict[str, dict[str, object]] = {}
    for table in (*ALL_TABLES, *META_TABLES):
        try:
            con.execute(f"SELECT 1 FROM {table} LIMIT 0")
        except duckdb.Error:
            continue
        target = directory / f"{table}.parquet"
        con.execute(f"COPY {table} TO '{_sql(target)}' (FORMAT parquet, COMPRESSION zstd)")
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        tables[table] = {"rows": int(row[0]) if row else 0, "sha256": file_sha256(target)}
    store_id = con.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
    manifest = {
        "bundle_format": BUNDLE_FORMAT,
        "schema_version": version,
        "source_store_id": store_id[0] if store_id else None,
        "source": source,
        "exported_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "duckdb_version": duckdb.__version__,
        "tables": tables,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return {t: int(str(v["rows"])) for t, v in tables.items()}


def read_manifest(directory: Path) -> dict[str, object]:
    """The bundle's manifest, with every file's checksum verified."""
    path = directory / MANIFEST
    if not path.is_file():
        raise StoreError(
            f"{directory} has no {MANIFEST}; is it a bundle written by `moe-evidence export`?"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"bundle {directory} has schema version "
            f"{manifest['schema_version']}, newer than this tool's "
            f"{SCHEMA_VERSION}; upgrade moe-evidence to import it"
        )
    for table, info in manifest["tables"].items():
        file = directory / f"{table}.parquet"
        if not file.is_file():
            raise StoreError(f"bundle {directory} lacks {file.name}; copy the whole bundle")
        if file_sha256(file) != info["sha256"]:
            raise StoreError(
                f"{file} does not match its checksum in {MANIFEST}; the bundle "
                f"is damaged, export it again"
            )
    return dict(manifest)


def _bundle_views(
    con: duckdb.DuckDBPyConnection, schema: str, files: dict[str, list[Path]]
) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for table, paths in files.items():
        listed = ", ".join(f"'{_sql(p)}'" for p in paths)
        con.execute(
            f"CREATE OR REPLACE VIEW {schema}.{table} AS SELECT * FROM "
            f"read_parquet([{listed}], union_by_name = true)"
        )


def import_bundle(con: duckdb.DuckDBPyConnection, directory: Path) -> MergeReport:
    """Verify and merge one bundle into the open (writable) store."""
    manifest = read_manifest(directory)
    tables = dict(manifest["tables"])  # type: ignore[call-overload]
    _bundle_views(con, "bundle_src", {t: [directory / f"{t}.parquet"] for t in tables})
    try:
        with Transaction(con):
            report = merge_schema(con, "bundle_src", str(directory))
            record_merge(con, str(manifest.get("source_store_id") or ""), report)
    finally:
        con.execute("DROP SCHEMA bundle_src CASCADE")
    return report


def find_bundles(root: Path) -> list[Path]:
    """Every bundle directory under `root` (itself included), sorted."""
    return sorted(p.parent for p in root.rglob(MANIFEST))


@contextmanager
def open_source(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """What the report reads: a store file (read-only), or a directory of
    bundles queried in place through views named like the store's tables."""
    if not path.is_dir():
        with open_store(path, read_only=True) as con:
            yield con
        return
    bundles = find_bundles(path)
    if not bundles:
        raise StoreError(f"{path} is a directory with no bundle ({MANIFEST}) in it")
    files: dict[str, list[Path]] = {}
    for bundle in bundles:
        for table in dict(read_manifest(bundle)["tables"]):  # type: ignore[call-overload]
            files.setdefault(table, []).append(bundle / f"{table}.parquet")
    con = duckdb.connect(":memory:")
    try:
        _bundle_views(con, "main", files)
        yield con
    finally:
        con.close()
