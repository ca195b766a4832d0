"""`merge`, `export` and `import`: evidence from many machines into one store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evidence.bundle import export_bundle, find_bundles, import_bundle
from evidence.merge import MergeReport, merge_store
from evidence.store import open_store


def _print(report: MergeReport) -> bool:
    """Print what a merge did; True when it met conflicts."""
    added = ", ".join(f"{t} {n}" for t, n in report.added.items() if n) or "nothing new"
    print(f"{report.source}: added {added}")
    for table, keys in report.conflicts.items():
        print(
            f"  conflict: {len(keys)} {table} row(s) differ from the target's and were not "
            f"overwritten (first: {keys[0]})"
        )
    return bool(report.conflicts)


def merge_stores(target: Path, sources: Sequence[Path]) -> bool:
    """Merge each source store into `target`; True when any row conflicted."""
    conflicts = False
    with open_store(target) as con:
        for source in sources:
            if source.resolve() == target.resolve():
                print(f"{source}: skipped (it is the target)")
                continue
            conflicts |= _print(merge_store(con, source))
    return conflicts


def export_store(db: Path, directory: Path) -> None:
    """Write `db` as a Parquet bundle in `directory`."""
    with open_store(db, read_only=True) as con:
        rows = export_bundle(con, directory, str(db))
    print(f"exported {sum(rows.values())} rows in {len(rows)} tables to {directory}")


def import_bundles(db: Path, roots: Sequence[Path]) -> bool:
    """Verify and merge every bundle under `roots` into `db`; True on any conflict."""
    conflicts = False
    with open_store(db) as con:
        for root in roots:
            for bundle in find_bundles(root) or [root]:
                conflicts |= _print(import_bundle(con, bundle))
    return conflicts
