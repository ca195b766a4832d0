"""Merging stores and exchanging Parquet bundles: idempotent, read-only on the
sources, conflicts reported and never overwritten, checksums verified."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from common.errors import SchemaTooNew, StoreError
from evidence.bundle import export_bundle, import_bundle, open_source, read_manifest
from evidence.merge import merge_store
from evidence.store import open_store
from tests.support.cli import moe_evidence, moe_evidence_here
from tests.support.stores import MS, StoreFactory


def _store(path: Path, host: str, requests: int = 2) -> str:
    with open_store(path) as con:
        f = StoreFactory(con, host_id=host).campaign()
        f.server_run("baseline")
        for i in range(requests):
            f.request("baseline", [(10 * MS, "a"), (20 * MS, "b")], usage_tokens=2, repeat=i)
        con.execute(
            "INSERT INTO telemetry (server_run_id, t_ns, rss_bytes) VALUES (?, 1, 5)",
            [f.runs["baseline"]],
        )
        return f.campaign_id


def _counts(path: Path) -> dict[str, int]:
    with open_store(path, read_only=True) as con:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("hosts", "campaigns", "requests", "chunks", "telemetry")
        }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_merge_three_hosts_idempotently(tmp_path: Path) -> None:
    sources = [tmp_path / f"{h}.duckdb" for h in ("a", "b", "c")]
    for src, host in zip(sources, ("host-a", "host-b", "host-b"), strict=True):
        _store(src, host)
    digests = [_digest(s) for s in sources]
    target = tmp_path / "all.duckdb"
    with open_store(target) as con:
        reports = [merge_store(con, s) for s in sources]
    assert all(not r.conflicts for r in reports)
    assert _counts(target) == {
        "hosts": 2,
        "campaigns": 3,
        "requests": 6,
        "chunks": 12,
        "telemetry": 3,
    }
    with open_store(target) as con:
        again = [merge_store(con, s) for s in sources]
        log = con.execute("SELECT count(*) FROM merge_log").fetchone()
    assert all(r.total_added == 0 for r in again)
    assert _counts(target)["requests"] == 6
    assert log == (6,)
    assert [_digest(s) for s in sources] == digests  # sources untouched


def test_conflict_is_reported_not_overwritten(tmp_path: Path) -> None:
    src, target = tmp_path / "src.duckdb", tmp_path / "t.duckdb"
    _store(src, "host-a")
    shutil.copy(src, target)
    with open_store(src) as con:
        con.execute("UPDATE requests SET output_text = 'changed' WHERE repeat = 0")
    with open_store(target) as con:
        report = merge_store(con, src)
        kept = con.execute("SELECT output_text FROM requests WHERE repeat = 0").fetchone()
    assert list(report.conflicts) == ["requests"] and len(report.conflicts["requests"]) == 1
    assert kept == ("ab",)


def test_newer_or_foreign_source_is_refused(tmp_path: Path) -> None:
    newer, target = tmp_path / "newer.duckdb", tmp_path / "t.duckdb"
    _store(newer, "h")
    with open_store(newer) as con:
        con.execute("INSERT INTO schema_migrations VALUES (99, 'future', now())")
    foreign = tmp_path / "foreign.duckdb"
    import duckdb

    duckdb.connect(str(foreign)).execute("CREATE TABLE x (a INT)").close()
    with open_store(target) as con:
        with pytest.raises(SchemaTooNew, match="upgrade"):
            merge_store(con, newer)
        with pytest.raises(StoreError, match="not an evidence store"):
            merge_store(con, foreign)
        with pytest.raises(StoreError, match="no evidence store"):
            merge_store(con, tmp_path / "absent.duckdb")
    assert _counts(target)["requests"] == 0


def test_bundle_round_trip_and_checksums(tmp_path: Path) -> None:
    src = tmp_path / "src.duckdb"
    _store(src, "host-a", requests=3)
    bundle = tmp_path / "bundle"
    with open_store(src, read_only=True) as con:
        rows = export_bundle(con, bundle, str(src))
    assert rows["requests"] == 3 and rows["chunks"] == 6
    manifest = read_manifest(bundle)
    assert manifest["schema_version"] and manifest["source_store_id"]
    target = tmp_path / "t.duckdb"
    with open_store(target) as con:
        assert import_bundle(con, bundle).added["chunks"] == 6
        assert import_bundle(con, bundle).total_added == 0
    assert _counts(target) == _counts(src)
    (bundle / "chunks.parquet").write_bytes(b"damaged")
    with open_store(target) as con, pytest.raises(StoreError, match="checksum"):
        import_bundle(con, bundle)


def test_fleet_directory_is_read_in_place(tmp_path: Path) -> None:
    for host in ("gh200", "rtx4090"):
        db = tmp_path / f"{host}.duckdb"
        _store(db, host)
        with open_store(db, read_only=True) as con:
            export_bundle(con, tmp_path / "fleet" / f"host={host}" / "release=1.7.0", str(db))
    with open_source(tmp_path / "fleet") as con:
        assert con.execute("SELECT count(DISTINCT host_id) FROM hosts").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (4,)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no bundle"), open_source(tmp_path / "empty"):
        pass


def test_cli_merge_export_import(tmp_path: Path) -> None:
    src = tmp_path / "src.duckdb"
    _store(src, "h")
    into = str(tmp_path / "m.duckdb")
    merged = moe_evidence_here("merge", str(src), "--into", into)
    assert merged.returncode == 0 and "requests 2" in merged.stdout
    assert "nothing new" in moe_evidence_here("merge", str(src), "--into", into).stdout
    exported = moe_evidence_here("export", "--parquet", str(tmp_path / "b"), "--db", str(src))
    assert exported.returncode == 0
    db = str(tmp_path / "i.duckdb")
    imported = moe_evidence_here("import", str(tmp_path / "b"), "--db", db)
    assert imported.returncode == 0 and "requests 2" in imported.stdout
    missing = moe_evidence("merge", str(tmp_path / "nope.duckdb"), "--into", into)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no evidence store")
