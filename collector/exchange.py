"""`merge`, `export` and `import`: evidence from many machines into one store."""

from __future__ import annotations

import argparse
from pathlib import Path

from evidence.bundle import export_bundle, find_bundles, import_bundle
from evidence.merge import MergeReport, merge_store
from evidence.store import default_db_path, open_store


def _print(report: MergeReport) -> int:
    added = ", ".join(f"{t} {n}" for t, n in report.added.items() if n) or "nothing new"
    print(f"{report.source}: added {added}")
    for table, keys in report.conflicts.items():
        print(
            f"  conflict: {len(keys)} {table} row(s) differ from the target's and were not "
            f"overwritten (first: {keys[0]})"
        )
    return 1 if report.conflicts else 0


def main_merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector merge",
        description="Merge campaigns from other stores (read-only) into one, idempotently.",
    )
    parser.add_argument("stores", nargs="+", type=Path)
    parser.add_argument("--into", type=Path, default=None, help="target store (default: --db)")
    args = parser.parse_args(argv)
    target = args.into or default_db_path()
    status = 0
    with open_store(target) as con:
        for source in args.stores:
            if source.resolve() == target.resolve():
                print(f"{source}: skipped (it is the target)")
                continue
            status |= _print(merge_store(con, source))
    return status


def main_export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector export",
        description="Write the store as a Parquet bundle (one file per table + manifest).",
    )
    parser.add_argument("--parquet", type=Path, required=True, metavar="DIR")
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args(argv)
    db = args.db or default_db_path()
    with open_store(db, read_only=True) as con:
        rows = export_bundle(con, args.parquet, str(db))
    print(f"exported {sum(rows.values())} rows in {len(rows)} tables to {args.parquet}")
    return 0


def main_import(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector import",
        description="Verify and merge Parquet bundles (a bundle, or a tree of them).",
    )
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args(argv)
    status = 0
    with open_store(args.db or default_db_path()) as con:
        for root in args.bundles:
            for bundle in find_bundles(root) or [root]:
                status |= _print(import_bundle(con, bundle))
    return status
