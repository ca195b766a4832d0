"""A fleet of stores: merge time, and site build time from the merge and in place.

`python -m benchmarks.fleet [--stores 100] [--hosts 10] [--template STORE]`

The stores are copies of one template store, a quick campaign's size: by
default a synthetic `--quick` store (`report.synthetic`, 36 requests, 600
chunks), or with `--template` a real one (`moe-evidence collect --quick`).
Each copy gets its own ids: every id column (campaign, model, server run,
request, review, perf run) is rewritten to a UUID-shaped md5 of the copy's
number and the old id, the same in every table, so references hold and no two
copies share a row. Copies are spread over `--hosts` hosts (host id and CPU
name rewritten, so each host is a distinct machine) and over releases
(`fleet-r1`, `fleet-r2`, ...; one campaign per host and release), with start
times one hour apart.

Timed: making the copies, `collector merge` of all of them into one store,
the same merge again (it adds nothing), exporting each copy as a Parquet
bundle under `fleet/host=H/release=R/`, and building the site showing every
campaign from the merged store and from the fleet directory read in place.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from benchmarks.results import Measurement, reference

ROOT = Path(__file__).resolve().parents[1]
# Rewritten per copy; `restart_of` holds a server_run_id.
ID_COLUMNS = (
    "campaign_id",
    "model_id",
    "server_run_id",
    "request_id",
    "review_id",
    "perf_run_id",
    "restart_of",
)


def _sql(path: Path) -> str:
    return str(path).replace("'", "''")


def _uuid_sql(salt: str, column: str) -> str:
    """SQL: a UUID-shaped md5 of `salt` and the column's value (NULL stays NULL)."""
    h = f"md5('{salt}' || {column})"
    parts = [
        f"substr({h}, {start}, {length})"
        for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    ]
    return " || '-' || ".join(parts)


def host_id(host: int) -> str:
    """The host id of the fleet's host number `host` (16 hex digits, like the collector's)."""
    import hashlib

    return hashlib.sha256(f"fleet-host-{host}".encode()).hexdigest()[:16]


def stamp(template: Path, target: Path, copy: int, host: int, release: str) -> None:
    """Write `target` as copy number `copy` of `template`: new ids, on fleet host
    `host`, labelled `release`, started `copy` hours after the template."""
    from evidence.merge import ALL_TABLES
    from evidence.store import open_store
    from evidence.writer import Transaction

    salt = f"fleet-{copy}:"
    new_host = host_id(host)
    shift = timedelta(hours=copy)
    with open_store(target) as con:
        con.execute(f"ATTACH '{_sql(template)}' AS tpl (READ_ONLY)")
        try:
            present = {
                str(r[0])
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'tpl'"
                ).fetchall()
            }
            with Transaction(con):
                for table in ALL_TABLES:
                    if table not in present:
                        continue
                    source = [
                        d[0] for d in con.execute(f"SELECT * FROM tpl.{table} LIMIT 0").description
                    ]
                    target_cols = [
                        d[0] for d in con.execute(f"SELECT * FROM main.{table} LIMIT 0").description
                    ]
                    cols = [c for c in target_cols if c in source]
                    exprs = [_rewrite(table, c, salt, new_host, host, release, shift) for c in cols]
                    con.execute(
                        f"INSERT INTO main.{table} ({', '.join(cols)}) "
                        f"SELECT {', '.join(exprs)} FROM tpl.{table}"
                    )
        finally:
            con.execute("DETACH tpl")


def _rewrite(
    table: str, column: str, salt: str, new_host: str, host: int, release: str, shift: timedelta
) -> str:
    if column in ID_COLUMNS:
        return _uuid_sql(salt, column)
    if column == "host_id":
        return f"'{new_host}'"
    if table == "hosts" and column == "cpu_model":
        return f"cpu_model || ' (fleet host {host})'"
    if table == "hosts" and column == "hostname_hash":
        return f"'{new_host}'"
    if table == "campaigns" and column == "release_label":
        return f"'{release}'"
    if table == "campaigns" and column in ("started_utc", "finished_utc", "clock_origin_utc"):
        return f"{column} + INTERVAL {int(shift.total_seconds())} SECOND"
    return column


def make_stores(template: Path, workdir: Path, n_stores: int, hosts: int) -> list[Path]:
    """`n_stores` copies of `template` in `workdir/stores/`, spread over `hosts` hosts."""
    out = workdir / "stores"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for copy in range(n_stores):
        host, release = copy % hosts, copy // hosts + 1
        path = out / f"host{host}-r{release}.duckdb"
        path.unlink(missing_ok=True)
        stamp(template, path, copy, host, f"fleet-r{release}")
        paths.append(path)
    return paths


def _synthetic_template(workdir: Path) -> Path:
    from benchmarks.synthetic import SyntheticSpec, generate

    path = workdir / "template.duckdb"
    path.unlink(missing_ok=True)
    generate(path, SyntheticSpec.quick())
    return path


def _timed_build(db: Path, project: Path) -> tuple[float, dict[str, float]]:
    from report.build import BuildOptions, build_site, stage_project

    root = stage_project(ROOT, project)
    started = time.perf_counter()
    result = build_site(BuildOptions(db=db, root=root, all_campaigns=True))
    return time.perf_counter() - started, dict(result.timings)


def measure_fleet(
    workdir: Path, n_stores: int, hosts: int = 10, template: Path | None = None
) -> list[Measurement]:
    """Make `n_stores` stores, merge them, export them as a fleet directory, and
    build the site (every campaign shown) from the merged store and from the
    directory; return the timings as figures."""
    from evidence.bundle import export_bundle
    from evidence.merge import merge_store
    from evidence.store import open_store

    hosts = max(1, min(hosts, n_stores))
    started = time.perf_counter()
    source = template or _synthetic_template(workdir)
    stores = make_stores(source, workdir, n_stores, hosts)
    made = time.perf_counter() - started
    kind = "real store " + source.name if template else "synthetic quick store"
    common = {"stores": n_stores, "hosts": hosts, "template": kind}
    figures = [
        reference(
            f"fleet: make {n_stores} stores",
            made,
            "s",
            **common,
            note=f"copies of a {kind}, ids rewritten",
        ),
    ]

    merged = workdir / "merged.duckdb"
    merged.unlink(missing_ok=True)
    with open_store(merged) as con:
        started = time.perf_counter()
        added = sum(merge_store(con, s).total_added for s in stores)
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = sum(merge_store(con, s).total_added for s in stores)
        second = time.perf_counter() - started
        campaigns = con.execute("SELECT count(*) FROM campaigns").fetchone()
    figures.append(
        reference(
            f"fleet: merge {n_stores} stores",
            first,
            "s",
            **common,
            rows_added=added,
            campaigns=campaigns[0] if campaigns else 0,
            note=f"{added:,} rows into one store, one transaction per store",
        )
    )
    figures.append(
        reference(
            f"fleet: merge the {n_stores} again",
            second,
            "s",
            **common,
            rows_added=again,
            note=f"idempotent: {again} rows added",
        )
    )

    fleet = workdir / "fleet"
    shutil.rmtree(fleet, ignore_errors=True)  # a bundle left from an earlier run would count twice
    started = time.perf_counter()
    for s in stores:
        host, release = s.stem.split("-")
        with open_store(s, read_only=True) as con:
            export_bundle(con, fleet / f"host={host}" / f"release=fleet-{release}", str(s))
    exported = time.perf_counter() - started
    figures.append(
        reference(
            f"fleet: export {n_stores} bundles",
            exported,
            "s",
            **common,
            note="one Parquet bundle per store, host=/release=/ tree",
        )
    )

    for name, db, project in (
        ("merged store", merged, workdir / "project-merged"),
        ("fleet directory (in place)", fleet, workdir / "project-fleet"),
    ):
        seconds, steps = _timed_build(db, project)
        slowest = sorted(steps.items(), key=lambda kv: -kv[1])[:3]
        figures.append(
            reference(
                f"fleet: site build from the {name}",
                seconds,
                "s",
                **common,
                steps=steps,
                note=f"all {n_stores} campaigns shown; slowest steps: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in slowest),
            )
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--stores", type=int, default=100, help="how many stores (default 100)")
    parser.add_argument("--hosts", type=int, default=10, help="spread over this many hosts")
    parser.add_argument(
        "--template",
        type=Path,
        default=None,
        help="a quick campaign's store to copy (default: a synthetic one)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the stores, bundles and sites here (default: a temp folder)",
    )
    args = parser.parse_args(argv)
    if args.stores < 1 or args.hosts < 1:
        parser.error("--stores and --hosts must be at least 1")
    from rich.console import Console

    from benchmarks.results import print_table

    with tempfile.TemporaryDirectory(prefix="moe-perf-fleet-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        figures = measure_fleet(workdir, args.stores, args.hosts, args.template)
    print_table(figures, Console(), f"Fleet: {args.stores} stores on {args.hosts} hosts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
