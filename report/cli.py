"""`python -m report build|publish|synthetic|timing`: the whitepaper's command line.

Errors from the project (`EvidenceError`) print as one line, `error: ...`,
and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from evidence.errors import EvidenceError
from evidence.store import default_db_path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        help="evidence store, or a fleet directory of Parquet bundles (host=.../release=.../) "
        "read in place (default: $EVIDENCE_DB or data/evidence.duckdb)",
    )
    p.add_argument(
        "--campaign",
        action="append",
        default=[],
        metavar="ID",
        help="campaign to show (repeatable; default: the latest complete one)",
    )
    p.add_argument(
        "--all-campaigns",
        action="store_true",
        help="show every complete campaign of the source (hosts side by side, history "
        "across releases)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="project root holding mkdocs.yml, templates/ and docs/ (default: .)",
    )


def parser() -> argparse.ArgumentParser:
    """The command line: build, publish, synthetic, timing."""
    p = argparse.ArgumentParser(prog="python -m report", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="render the site into site/ from the evidence store")
    _common(b)
    b.add_argument("--site-dir", type=Path, default=None, help="output folder (default: site/)")
    pub = sub.add_parser("publish", help="build, then deploy as VERSION with mike (gh-pages)")
    pub.add_argument("version", help="the version label, e.g. 1.7.0")
    _common(pub)
    pub.add_argument("--alias", default="latest", help="alias to move to this version")
    pub.add_argument("--push", action="store_true", help="also push gh-pages to the remote")
    syn = sub.add_parser("synthetic", help="write a synthetic evidence store (for timing tests)")
    syn.add_argument("path", type=Path)
    syn.add_argument("--requests", type=int, default=10_000)
    syn.add_argument("--chunks", type=int, default=1_000_000)
    syn.add_argument("--quick", action="store_true", help="a store shaped like a --quick run")
    syn.add_argument("--no-gpu", action="store_true", help="a CPU-only host")
    tim = sub.add_parser("timing", help="time the build on synthetic stores (nox -s perf)")
    tim.add_argument("--requests", type=int, default=10_000)
    tim.add_argument("--chunks", type=int, default=1_000_000)
    tim.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to keep the stores and sites (default: a temporary folder)",
    )
    tim.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="project root to copy mkdocs.yml, templates/ and docs/ from",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (2 for a reported error)."""
    args = parser().parse_args(argv)
    try:
        if args.command == "build":
            from report.build import BuildOptions, build_site

            result = build_site(
                BuildOptions(
                    db=args.db or default_db_path(),
                    campaigns=tuple(args.campaign),
                    all_campaigns=args.all_campaigns,
                    root=args.root,
                    site_dir=args.site_dir,
                )
            )
            total = sum(result.timings.values())
            ids = result.campaign_ids
            shown = ", ".join(ids) if len(ids) <= 6 else f"{len(ids)} campaigns"
            shown = shown or "none (empty store)"
            print(f"site built in {result.site_dir} ({total:.1f} s); campaigns: {shown}")
        elif args.command == "publish":
            from report.publish import publish

            publish(
                args.version,
                db=args.db or default_db_path(),
                campaigns=tuple(args.campaign),
                all_campaigns=args.all_campaigns,
                root=args.root,
                alias=args.alias,
                push=args.push,
            )
        elif args.command == "synthetic":
            from report.synthetic import SyntheticSpec, generate

            spec = (
                SyntheticSpec.quick(gpu=not args.no_gpu)
                if args.quick
                else SyntheticSpec(requests=args.requests, chunks=args.chunks, gpu=not args.no_gpu)
            )
            print(generate(args.path, spec))
        elif args.command == "timing":
            from report.timing import main_timing

            return main_timing(args.requests, args.chunks, args.workdir, args.root)
    except EvidenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
