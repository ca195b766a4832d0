"""Opening the evidence store: locking, migrations, schema-version checks.

The store is one DuckDB file. Writers hold DuckDB's file lock for as long as the
connection is open; a second writer (or a reader while a writer runs) gets
`StoreLocked` naming the PID that holds it, taken from DuckDB's own message.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from common.errors import DiskFull, SchemaTooNew, StoreError, StoreLocked
from evidence.migrations import MIGRATIONS, SCHEMA_VERSION
from evidence.writer import Transaction

DEFAULT_DB = Path("data") / "evidence.duckdb"
DB_ENV = "EVIDENCE_DB"

_LOCK_PID = re.compile(r"\(PID (\d+)\)")


def default_db_path() -> Path:
    """The store used when no --db is given: $EVIDENCE_DB, else data/evidence.duckdb."""
    env = os.environ.get(DB_ENV)
    return Path(env) if env else DEFAULT_DB


# A DuckDB file is its headers (a file header and two database headers, 4 KiB
# each) followed by `total_blocks` blocks of `block_size` bytes (DuckDB 1.x-2.x).
_HEADER_BYTES = 3 * 4096


def _check_whole(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a store file cut short (a copy that did not finish, a full disk).

    DuckDB opens such a file and fails only at the first read of a missing
    block, mid-campaign; the headers say how long the file must be, so check
    that at once."""
    row = con.execute(
        "SELECT block_size, total_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchone()
    if row is None or not path.exists():
        return
    block_size, total_blocks = int(row[0]), int(row[1])
    expected = _HEADER_BYTES + block_size * total_blocks if total_blocks else 0
    size = path.stat().st_size
    if size < expected:
        raise StoreError(
            f"evidence store {path} is cut short ({size} of its {expected} bytes): an "
            f"unfinished copy or a full disk; restore it, or pass another file with --db"
        )


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        message = str(exc)
        if "lock" in message.lower():
            match = _LOCK_PID.search(message)
            raise StoreLocked(str(path), int(match.group(1)) if match else None) from exc
        if disk_full(exc):
            raise DiskFull(str(path)) from exc
        raise StoreError(
            f"cannot open evidence store {path}: {message.splitlines()[0]}; "
            f"pass another file with --db"
        ) from exc
    except duckdb.Error as exc:
        raise StoreError(
            f"{path} is not a readable DuckDB evidence store ({str(exc).splitlines()[0]}); "
            f"pass another file with --db"
        ) from exc
    try:
        _check_whole(con, path)
    except BaseException:
        con.close()
        raise
    return con


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest applied migration, 0 for a store with no schema yet."""
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    ).fetchone()
    if not has_table or has_table[0] == 0:
        return 0
    row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def check_version(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Refuse stores written by a newer tool; return the store's version."""
    version = schema_version(con)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"evidence store {path} has schema version {version}, newer than this tool's "
            f"{SCHEMA_VERSION}; upgrade moe-evidence to read it"
        )
    return version


def migrate(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Apply the migrations this store has not seen yet, each in its own transaction."""
    version = check_version(con, path)
    if version == 0:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
            " applied_utc TIMESTAMPTZ NOT NULL)"
        )
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        with Transaction(con):
            migration.apply(con)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                [migration.version, migration.name, datetime.now(UTC)],
            )
            if migration.version == 1:
                con.execute(
                    "INSERT INTO store_meta VALUES ('store_id', ?), ('created_utc', ?)",
                    [str(uuid.uuid4()), datetime.now(UTC).isoformat()],
                )


@contextmanager
def open_store(path: Path, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open (and, for writers, create and migrate) the store at `path`.

    Readers never modify the file: an older store is read as it is (the report
    presents it as today's schema, evidence.current_schema), a newer one is refused.
    """
    if read_only and not path.exists():
        raise StoreError(f"no evidence store at {path}; run `nox -s collect` first or pass --db")
    if not read_only:
        _make_folder(path)
    con = _connect(path, read_only)
    try:
        if read_only:
            check_version(con, path)
        else:
            migrate(con, path)
        yield con
    except (duckdb.Error, OSError) as exc:
        if disk_full(exc):
            raise DiskFull(str(path)) from exc
        raise
    finally:
        try:
            con.close()
        except duckdb.Error as exc:
            # Closing checkpoints the WAL into the file; on a full disk that fails,
            # and the WAL, which holds every committed row, is replayed on next open.
            if not disk_full(exc):
                raise


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if disk_full(exc):
            raise DiskFull(str(path)) from exc
        blocker = next((p for p in path.parents if p.is_file()), None)
        reason = f"{blocker} is a file" if blocker else (exc.strerror or str(exc))
        raise StoreError(
            f"cannot create the folder {path.parent} for the evidence store ({reason}); "
            f"pass --db a path in a folder you can write"
        ) from exc


# How a full disk reads in DuckDB's messages (it gives the OS's text, not an errno):
# ENOSPC on POSIX, ERROR_DISK_FULL / ERROR_HANDLE_DISK_FULL on Windows, and a quota.
_NO_SPACE = (
    "no space left on device",
    "not enough space on the disk",
    "disk is full",
    "disk quota exceeded",
)
_NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised while handling, says the disk is full.

    The chain matters: a failed commit is often followed by a failed attempt to mark
    the campaign failed, whose own message may say nothing about space."""
    seen: BaseException | None = exc
    for _ in range(16):  # a chain is short; a cycle must not hang us
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE_ERRNOS:
            return True
        text = str(seen).lower()
        if any(phrase in text for phrase in _NO_SPACE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class CampaignListing:
    """One line of `moe-evidence campaigns`."""

    campaign_id: str
    status: str
    profile: str
    started_utc: datetime
    name: str
    requests: int


def list_campaigns(path: Path) -> list[CampaignListing]:
    """The campaigns of the store at `path`, oldest first, with their request counts."""
    with open_store(path, read_only=True) as con:
        rows = con.execute(
            "SELECT c.campaign_id, c.status, c.profile, c.started_utc, c.name,"
            " (SELECT count(*) FROM requests r WHERE r.campaign_id = c.campaign_id)"
            " FROM campaigns c ORDER BY c.started_utc"
        ).fetchall()
    return [CampaignListing(*row) for row in rows]
