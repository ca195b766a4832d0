"""A damaged store (issue 23, hostile case 4): 300 kB of random bytes written at
the middle of a real store's file, where DuckDB still opens it and meets the damage
only when a query reads a bad block.

Every command that opens a store must then say so in one line, `error: ...`, naming
the file and the way back (a backup, or a Parquet bundle that `moe-evidence export`
wrote), and exit 1; and no command may write into it: `collect` refuses before it
writes anything, leaving the file byte for byte as it was.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from benchmarks.synthetic import SyntheticSpec, generate
from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from common.errors import StoreError
from common.files import file_sha256
from evidence import store as store_module
from evidence.store import open_store
from tests.support.cli import collect_here, moe_evidence, moe_evidence_here
from tests.support.report import project
from tests.support.stores import StoreFactory

# 9.4 MB (36 blocks of 256 KiB), written in about 4 s: big enough that the middle of the file is
# table data (the requests table, which every command reads, `campaigns` for its counts)
# rather than the headers or the catalog that DuckDB reads when it opens the file.
SPEC = SyntheticSpec(requests=1000, chunks=150_000, telemetry_hz=1.0)
DAMAGE_BYTES = 300_000


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("healthy") / "evidence.duckdb"
    generate(path, SPEC)
    return path


def _write_random(path: Path, at: int, size: int) -> None:
    with path.open("r+b") as stream:
        stream.seek(at)
        stream.write(random.Random(at).randbytes(size))


@pytest.fixture
def damaged(healthy: Path, tmp_path: Path) -> Path:
    """A copy of the healthy store with 300 kB of random bytes at its middle."""
    path = tmp_path / "evidence.duckdb"
    shutil.copyfile(healthy, path)
    _write_random(path, path.stat().st_size // 2, DAMAGE_BYTES)
    # The case under test: the file opens, and only a query meets the damage.
    duckdb.connect(str(path), read_only=True).close()
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[CalibratedServer]:
    with CalibratedServer(Scenario(tokens=4, gap_s=0.001)) as calibrated:
        yield calibrated


def _says_damaged(done: subprocess.CompletedProcess[str], path: Path) -> str:
    """The one `error:` line of a command refused for a damaged store at `path`."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    line = lines[0]
    assert f"evidence store {path} is damaged" in line, line
    for way_back in ("backup", "Parquet bundle", "moe-evidence export", "moe-evidence import"):
        assert way_back in line, line
    return line


# -- the reported commands ------------------------------------------------------------


def test_campaigns_is_one_line(damaged: Path) -> None:
    before = file_sha256(damaged)
    _says_damaged(moe_evidence("campaigns", "--db", str(damaged)), damaged)
    assert file_sha256(damaged) == before


def test_build_is_one_line(damaged: Path, tmp_path: Path) -> None:
    root = project(tmp_path)
    site = tmp_path / "site"
    args = ["build", "--db", str(damaged), "--root", str(root), "--site-dir", str(site)]
    _says_damaged(moe_evidence_here(*args), damaged)
    assert not (site / "index.html").exists()


def test_collect_refuses_before_it_writes(damaged: Path, server: CalibratedServer) -> None:
    before = file_sha256(damaged)
    attached = ["--endpoint", server.base_url, "--model", "calibration", "--quick"]
    _says_damaged(collect_here(*attached, "--no-non-streaming", "--db", str(damaged)), damaged)
    assert file_sha256(damaged) == before
    assert sorted(p.name for p in damaged.parent.iterdir()) == ["evidence.duckdb"]


# -- every other command that opens a store -------------------------------------------


def test_every_command_that_opens_a_store_is_one_line(
    damaged: Path, healthy: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    exported = moe_evidence_here("export", "--parquet", str(bundle), "--db", str(healthy))
    assert exported.returncode == 0
    target = tmp_path / "target.duckdb"
    shutil.copyfile(healthy, target)
    with duckdb.connect(str(healthy), read_only=True) as con:
        request = con.execute("SELECT min(request_id) FROM requests").fetchone()
    assert request is not None
    site = project(tmp_path)
    subprocess.run(["git", "init", "-q", str(site)], check=True)  # publish needs a repository
    db = ["--db", str(damaged)]
    root = ["--root", str(site)]
    commands = {
        "publish": ["publish", "9.9.9", *db, *root],
        "rescore": ["rescore", *db],
        "review": ["review", "--request", str(request[0]), "--score", "3", *db],
        "merge into it": ["merge", str(healthy), "--into", str(damaged)],
        "export": ["export", "--parquet", str(tmp_path / "out"), *db],
        "import": ["import", str(bundle), *db],
    }
    before = file_sha256(damaged)
    for name, args in commands.items():
        assert _says_damaged(moe_evidence_here(*args), damaged), name
        assert file_sha256(damaged) == before, name
    # A damaged source is named as such, and the target is left as it was.
    target_before = file_sha256(target)
    _says_damaged(moe_evidence_here("merge", str(damaged), "--into", str(target)), damaged)
    assert file_sha256(target) == target_before


# -- what the writers' check sees that reads do not -----------------------------------


def _index_block_at(path: Path) -> int:
    """The offset of a block that holds neither table data nor the catalog: in a
    store written in one go, a primary-key index's."""
    with duckdb.connect(str(path), read_only=True) as con:
        layout = con.execute(
            "SELECT block_size, total_blocks, free_blocks FROM pragma_database_size() "
            "WHERE database_name = current_database()"
        ).fetchone()
        used = {r[0] for r in con.execute("SELECT block_id FROM pragma_metadata_info()").fetchall()}
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            used |= {
                r[0]
                for r in con.execute(
                    f"SELECT block_id FROM pragma_storage_info('{table}') WHERE persistent"
                ).fetchall()
            }
    assert layout is not None and layout[2] == 0, layout  # no free block to pick
    block = next(b for b in range(int(layout[1])) if b not in used)
    return 3 * 4096 + block * int(layout[0])


def test_a_writer_refuses_damage_no_read_meets(healthy: Path, tmp_path: Path) -> None:
    path = tmp_path / "evidence.duckdb"
    shutil.copyfile(healthy, path)
    _write_random(path, _index_block_at(path) + 4096, 64)
    with duckdb.connect(str(path), read_only=True) as con:
        # Every value of every table reads back: only the writers' check can see it.
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            con.execute(f"SELECT bit_xor(hash(COLUMNS(*))) FROM {table}").fetchall()
    before = file_sha256(path)
    damaged = r"is damaged \(1 of its \d+ blocks fail their checksum"
    with pytest.raises(StoreError, match=damaged), open_store(path):
        pass
    assert file_sha256(path) == before
    with open_store(path, read_only=True) as con:  # a reader still reads what is whole
        assert con.execute("SELECT count(*) FROM campaigns").fetchone() == (1,)


def test_a_writer_refuses_before_duckdb_replays_a_wal(healthy: Path, tmp_path: Path) -> None:
    path = tmp_path / "evidence.duckdb"
    shutil.copyfile(healthy, path)
    _write_random(path, _index_block_at(path) + 4096, 64)
    # A crash left a committed row in the WAL: a writer's open would replay it, and
    # write it into the file on close.
    crash = (
        "import duckdb, os\n"
        f"con = duckdb.connect({str(path)!r})\n"
        "con.execute(\"INSERT INTO telemetry (server_run_id, t_ns) VALUES ('crashed', 1)\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash], check=True)
    wal = path.with_name(path.name + ".wal")
    file_before, wal_before = file_sha256(path), file_sha256(wal)
    with pytest.raises(StoreError, match=r"is damaged \(1 of its"), open_store(path):
        pass
    assert file_sha256(path) == file_before
    assert wal.is_file() and file_sha256(wal) == wal_before


def test_an_unknown_block_layout_falls_back_to_reading_every_table(
    healthy: Path, damaged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if DuckDB changed its checksum: no block matches, so DuckDB's own reads judge.
    monkeypatch.setattr(store_module, "_CHECKSUM_FACTOR", 3)
    with open_store(healthy, read_only=True, verify=True) as con:
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (SPEC.requests,)
    with (
        pytest.raises(StoreError, match=r"is damaged \(Corrupt database file"),
        open_store(damaged, read_only=True, verify=True),
    ):
        pass


# -- damage DuckDB meets when it opens the file ---------------------------------------


def test_a_damaged_header_is_the_same_line(healthy: Path, tmp_path: Path) -> None:
    path = tmp_path / "evidence.duckdb"
    shutil.copyfile(healthy, path)
    _write_random(path, 4096 + 64, 256)  # the first database header
    _says_damaged(moe_evidence("campaigns", "--db", str(path)), path)


def test_damage_in_a_1x_message_is_not_taken_for_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DuckDB 1.x raised it as an IOException, and "block" has "lock" in it.
    message = "IO Error: Corrupt database file: computed checksum 1 does not match stored "
    message += "checksum 2 in block at location 12288"

    def connect(*args: object, **kwargs: object) -> None:
        raise duckdb.IOException(message)

    path = tmp_path / "evidence.duckdb"
    path.write_bytes(b"")
    monkeypatch.setattr(duckdb, "connect", connect)
    with (
        pytest.raises(StoreError, match=r"is damaged \(Corrupt database file: .* location 12288"),
        open_store(path, read_only=True),
    ):
        pass


def test_a_healthy_store_written_a_few_times_is_not_called_cut_short(tmp_path: Path) -> None:
    # DuckDB trims free blocks off the file's end: the header's total then exceeds the
    # file, and a healthy store was refused as "cut short" on its third open to write.
    db = tmp_path / "evidence.duckdb"
    for i in range(6):
        with open_store(db) as con:
            factory = StoreFactory(con).campaign()
            factory.server_run("baseline")
            factory.request("baseline", [(10, "a" * 1000)] * 50)
            if i == 1:
                con.execute("UPDATE requests SET output_text = output_text || 'x'")
    with open_store(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM campaigns").fetchone() == (6,)
