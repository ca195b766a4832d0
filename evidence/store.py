"""Opening the evidence store: locking, migrations, schema-version checks, damage.

The store is one DuckDB file. Writers hold DuckDB's file lock for as long as the
connection is open; a second writer (or a reader while a writer runs) gets
`StoreLocked` naming the PID that holds it, taken from DuckDB's own message.

A damaged file (bytes DuckDB did not write) is `StoreCorrupt`, one line, whenever
DuckDB meets a bad block; and a writer checks every block before it writes, so a
damaged store is never added to (see `_check_blocks`).
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
import numpy as np

from common import interrupts
from common.errors import DiskFull, SchemaTooNew, StoreCorrupt, StoreError, StoreLocked
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

# Each block starts with an 8-byte checksum of the rest of it: 5381, XORed with
# every 8-byte word of it times this factor (DuckDB 1.3-2.x, src/common/checksum.cpp).
_CHECKSUM_SEED = 5381
_CHECKSUM_FACTOR = 0xBF58476D1CE4E5B9
_BLOCKS_PER_READ = 64  # 16 MiB at DuckDB's 256 KiB block: memory stays flat


def _layout(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int] | None:
    """The store's (block_size, total_blocks, free_blocks), from its active header."""
    row = con.execute(
        "SELECT block_size, total_blocks, free_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else None


def _check_whole(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a store file cut short (a copy that did not finish, a full disk).

    DuckDB opens such a file and fails only at the first read of a missing
    block, mid-campaign; the headers say how long the file must be, so check
    that at once."""
    layout = _layout(con)
    if layout is None or not path.exists():
        return
    block_size, total_blocks, free_blocks = layout
    # DuckDB trims free blocks off the end of the file, so only the blocks in use are
    # sure to be there (a healthy store opened to write a few times was refused).
    in_use = total_blocks - free_blocks
    expected = _HEADER_BYTES + block_size * in_use if in_use > 0 else 0
    size = path.stat().st_size
    if size < expected:
        raise StoreError(
            f"evidence store {path} is cut short ({size} of its {expected} bytes): an "
            f"unfinished copy or a full disk; restore it, or pass another file with --db"
        )


def _bad_blocks(path: Path, block_size: int, total_blocks: int) -> list[int]:
    """The blocks of the file at `path` whose bytes do not match their checksum."""
    bad: list[int] = []
    with path.open("rb") as stream:
        stream.seek(_HEADER_BYTES)
        for first in range(0, total_blocks, _BLOCKS_PER_READ):
            data = stream.read(min(_BLOCKS_PER_READ, total_blocks - first) * block_size)
            count = len(data) // block_size
            words = np.frombuffer(data, dtype="<u8", count=count * block_size // 8)
            blocks = words.reshape(count, block_size // 8)
            computed = np.bitwise_xor.reduce(blocks[:, 1:] * np.uint64(_CHECKSUM_FACTOR), axis=1)
            computed ^= np.uint64(_CHECKSUM_SEED)
            bad.extend(first + int(i) for i in np.flatnonzero(computed != blocks[:, 0]))
    return bad


def _check_blocks(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a store any block of which fails its checksum: before a write, not during.

    DuckDB checks a block only when it reads one, and it reads lazily: a full read
    of every table (`count(*)` reads no data block at all) still leaves the
    primary-key index blocks unread, a quarter of a large store's, and an insert
    that reaches a bad one fails mid-campaign. So every block is hashed here, as
    DuckDB would: 0.04 s more per open of a 51 MB store (10,000 requests, 1,000,000
    chunks; 0.08 s from disk). Readers, the build among them, skip it: what they
    read, DuckDB checks, and a bad block they never read does not change their output."""
    layout = _layout(con)
    if layout is None or not layout[1]:
        return
    block_size, total_blocks, _ = layout
    try:
        bad = _bad_blocks(path, block_size, total_blocks) if block_size % 8 == 0 else None
    except OSError:
        bad = None
    if bad is None or len(bad) == total_blocks:
        # Not one block matches: a layout this code does not know (another DuckDB, an
        # encrypted file). DuckDB's own reads then check what they can.
        _read_every_table(con)
    elif bad:
        raise StoreCorrupt(
            str(path),
            f"{len(bad)} of its {total_blocks} blocks fail their checksum, the first at "
            f"byte {_HEADER_BYTES + bad[0] * block_size}",
        )


def _read_every_table(con: duckdb.DuckDBPyConnection) -> None:
    """Read every column of every table, so DuckDB checksums each data block."""
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
    ).fetchall()
    for (table,) in tables:
        # hash() needs every value: count(*), count(column) and min(column) are
        # answered without reading a damaged block of that column (measured).
        con.execute(f'SELECT bit_xor(hash(COLUMNS(*))) FROM "{table}"').fetchall()


# DuckDB's words for a block that fails its checksum (an IOException in 1.x, a
# plain Error in 2.x: the words are what stays the same).
_CORRUPT = "corrupt database file"


def _corruption(exc: BaseException) -> str | None:
    """DuckDB's message where `exc`, or an error it was raised while handling, says a
    block of the file is damaged; None otherwise."""
    seen: BaseException | None = exc
    for _ in range(16):  # as in disk_full: a chain is short, a cycle must not hang us
        if seen is None:
            return None
        text = str(seen)
        at = text.lower().find(_CORRUPT)
        if at >= 0:
            return text[at:].splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise _open_error(path, exc) from exc
    try:
        _check_whole(con, path)
    except BaseException:
        con.close()
        raise
    return con


def _open_error(path: Path, exc: duckdb.Error) -> StoreError:
    """The one-line error for a store DuckDB could not open."""
    message = str(exc)
    # Damage first: DuckDB's message for it says "block", which has "lock" in it.
    damage = _damage(path, exc)
    if damage is not None:
        return damage
    if not isinstance(exc, duckdb.IOException):
        return StoreError(
            f"{path} is not a readable DuckDB evidence store ({message.splitlines()[0]}); "
            f"pass another file with --db"
        )
    if "lock" in message.lower():
        match = _LOCK_PID.search(message)
        return StoreLocked(str(path), int(match.group(1)) if match else None)
    if disk_full(exc):
        return DiskFull(str(path))
    return StoreError(
        f"cannot open evidence store {path}: {message.splitlines()[0]}; pass another file with --db"
    )


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
def open_store(
    path: Path, *, read_only: bool = False, verify: bool | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open (and, for writers, create and migrate) the store at `path`.

    Readers never modify the file: an older store is read as it is (the report
    presents it as today's schema, evidence.current_schema), a newer one is refused.
    `verify` (default: for writers) checks every block first (`verify_store`); a
    reader without it meets damage only in the blocks it reads, as one line.
    """
    if read_only and not path.exists():
        raise StoreError(f"no evidence store at {path}; run `nox -s collect` first or pass --db")
    if not read_only:
        _make_folder(path)
    if ((not read_only) if verify is None else verify) and path.exists():
        # Read-only, before DuckDB opens the file to write: opened so, it replays a WAL
        # left by a crash and writes it into the file on close, damaged or not.
        verify_store(path)
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
        damage = _damage(path, exc)
        if damage is None:
            raise
        raise damage from exc
    finally:
        try:
            con.close()
        except duckdb.Error as exc:
            # Closing checkpoints the WAL into the file; on a full disk that fails,
            # and the WAL, which holds every committed row, is replayed on next open.
            damage = _damage(path, exc)
            if damage is not None:
                raise damage from exc
            if not disk_full(exc):
                raise


def verify_store(path: Path) -> None:
    """Refuse the store at `path` if any block of it fails its checksum (read-only)."""
    con = _connect(path, read_only=True)
    try:
        _check_blocks(con, path)
    except duckdb.Error as exc:
        damage = _damage(path, exc)
        if damage is None:
            raise
        raise damage from exc
    finally:
        con.close()


def _damage(path: Path, exc: BaseException) -> StoreCorrupt | None:
    """The one line for `exc` where it says a block of `path` is damaged (any query
    can meet a bad block, not only the open); None for any other error."""
    detail = _corruption(exc)
    return None if detail is None else StoreCorrupt(str(path), detail)


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


def query_interrupted(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C (or SIGTERM, which the CLI turns into one) that arrived
    while DuckDB ran a query: its client then stops the query and raises
    RuntimeError("Query interrupted") in place of the KeyboardInterrupt, or another
    error of its own (see common.interrupts): after a latched interrupt, any error is
    read as the interruption."""
    if isinstance(exc, KeyboardInterrupt) or interrupts.requested():
        return True
    return isinstance(exc, RuntimeError) and str(exc).startswith("Query interrupted")


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
