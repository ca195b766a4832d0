"""`moe-evidence COMMAND`: the tool's one command line.

Every command a user runs is a subcommand here, with its arguments; the work is
done by the package the command belongs to, imported only when the command
runs, so `--help` is instant. One error policy for all of them:

    exit 0   done
    exit 1   failed: one line on stderr, `error: ...`, that says what to do
    exit 2   usage: argparse's message (a wrong flag, a missing argument)
    exit 130 interrupted (Ctrl-C or SIGTERM): everything finished is stored

`python -m moe_evidence` is the same command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from common import interrupts
from common.controls import one_line
from common.errors import EvidenceError
from common.secrets import redact_url
from common.server_apis import API_NAMES, DEFAULT_API

if TYPE_CHECKING:
    from collector.collect_request import CollectRequest

Handler = Callable[[argparse.Namespace], int]
# Adds a command's arguments to its parser.
Configure = Callable[[argparse.ArgumentParser], None]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _db(p: argparse.ArgumentParser, help_: str = "evidence store (DuckDB file)") -> None:
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        help=f"{help_} (default: $EVIDENCE_DB or data/evidence.duckdb)",
    )


def _store(args: argparse.Namespace) -> Path:
    from evidence.store import default_db_path

    db: Path = args.db or default_db_path()
    return db


# --- collect -------------------------------------------------------------------------


def _collect_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="TOML campaign config (default: embedded)")
    source.add_argument("--endpoint", help="attach to a running server at this URL")
    # Each flag is the field of the same name of collector.collect_request.CollectRequest,
    # which declares the flags that define the campaign: they default to None (or
    # False), so that unset, `--resume` takes them from the stored campaign.
    p.add_argument(
        "--api",
        default=None,
        choices=API_NAMES,
        help=f"API of --endpoint (default: {DEFAULT_API})",
    )
    p.add_argument(
        "--device",
        choices=["rpc", "none"],
        default=None,
        help="offload device: llama.cpp's RPC device (a second process standing in for "
        "the GPU; the embedded default) or none (the server's CPU only)",
    )
    p.add_argument(
        "--device-memory",
        metavar="SIZE",
        default=None,
        help="hold the RPC device to this much memory (e.g. 160MiB, 8GiB), as a GPU of that "
        "size: a configuration that does not fit is stored as such and the campaign goes on",
    )
    p.add_argument("--model", help="model name to send to --endpoint")
    p.add_argument(
        "--label",
        default=None,
        help="configuration label for --endpoint runs (e.g. cpu-moe; default: attached)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke profile: 1 repeat, 32-token cap, no pauses (--repeats/--pause given "
        "with it apply on top)",
    )
    p.add_argument("--repeats", type=int, help="override the number of repeats")
    p.add_argument("--pause", type=float, help="override the pause between tests (s)")
    p.add_argument("--tests", help="comma-separated subset of test ids")
    p.add_argument("--release", help="release label, e.g. 'shimmy 1.7.0'")
    p.add_argument("--no-non-streaming", action="store_true", help="skip the non-streamed pass")
    p.add_argument(
        "--no-sweep", action="store_true", help="skip the --n-cpu-moe sweep configurations"
    )
    _db(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CAMPAIGN_ID",
        help="continue an interrupted campaign (default: the latest unfinished one) with "
        "the flags it ran with; flags given must be the same",
    )


def collect_request(args: argparse.Namespace) -> CollectRequest:
    """The typed request of a parsed `collect` command line: its flags, field by field,
    and the command line itself (stored with the campaign)."""
    from collector.collect_request import CollectRequest

    flags = {name: getattr(args, name) for name in CollectRequest.flag_fields()}
    return CollectRequest(command=("moe-evidence", *args.argv), **flags)


def _collect(args: argparse.Namespace) -> int:
    from moe_evidence.pipeline import collect_and_score

    return collect_and_score(collect_request(args))


# --- the site --------------------------------------------------------------------------


def _site_args(p: argparse.ArgumentParser) -> None:
    _db(p, "evidence store, or a fleet directory of Parquet bundles read in place")
    p.add_argument(
        "--campaign",
        action="append",
        default=[],
        metavar="ID",
        help="campaign to show (repeatable; default: the latest with a successful request, "
        "complete ones first)",
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


def _build_args(p: argparse.ArgumentParser) -> None:
    _site_args(p)
    p.add_argument("--site-dir", type=Path, default=None, help="output folder (default: site/)")
    p.add_argument(
        "--include-starved",
        action="store_true",
        help="count requests that other processes starved of CPU in the headline figures "
        "and gates (default: left out, and counted beside the headline)",
    )


def _build(args: argparse.Namespace) -> int:
    from report.build import BuildOptions, build_site

    result = build_site(
        BuildOptions(
            db=_store(args),
            campaigns=tuple(args.campaign),
            all_campaigns=args.all_campaigns,
            root=args.root,
            site_dir=args.site_dir,
            include_starved=args.include_starved,
        )
    )
    total = sum(result.timings.values())
    ids = result.campaign_ids
    shown = ", ".join(ids) if len(ids) <= 6 else f"{len(ids)} campaigns"
    print(
        one_line(f"site built in {result.site_dir} ({total:.1f} s); campaigns: {shown or 'none'}")
    )
    return EXIT_OK


def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", help="the version label, e.g. 1.7.0")
    _site_args(p)
    p.add_argument("--alias", default="latest", help="alias to move to this version")
    p.add_argument("--push", action="store_true", help="also push gh-pages to the remote")


def _publish(args: argparse.Namespace) -> int:
    from report.publish import publish

    publish(
        args.version,
        db=_store(args),
        campaigns=tuple(args.campaign),
        all_campaigns=args.all_campaigns,
        root=args.root,
        alias=args.alias,
        push=args.push,
    )
    return EXIT_OK


# --- the store -------------------------------------------------------------------------


def _campaigns_args(p: argparse.ArgumentParser) -> None:
    _db(p)


def _campaigns(args: argparse.Namespace) -> int:
    from evidence.store import list_campaigns

    found = list_campaigns(_store(args))
    if not found:
        print("no campaigns in this store")
    for c in found:
        # One line per campaign, whatever its name holds: a newline in a name (stored by
        # an older version, or merged from elsewhere) would print a line of its own.
        print(
            one_line(
                f"{c.campaign_id}  {c.status:<11} {c.profile:<7} {c.started_utc:%Y-%m-%d %H:%M}"
                f"  {c.requests:>5} requests  {c.name}"
            )
        )
    return EXIT_OK


def _rescore_args(p: argparse.ArgumentParser) -> None:
    _db(p)
    p.add_argument("--campaign", help="one campaign (default: all)")


def _rescore(args: argparse.Namespace) -> int:
    from scoring.store import rescore_store

    for line in rescore_store(_store(args), args.campaign):
        print(one_line(line))
    return EXIT_OK


def _review_args(p: argparse.ArgumentParser) -> None:
    _db(p)
    p.add_argument("--campaign", help="only this campaign's requests")
    p.add_argument("--request", help="review one request (non-interactive)")
    p.add_argument("--score", type=int, choices=range(1, 6), help="1-5, with --request")
    p.add_argument("--note", help="free text, with --request")
    p.add_argument("--reviewer", default=None, help="name to record (default: login)")


def _review(args: argparse.Namespace) -> int:
    from scoring.review import review

    return review(
        _store(args),
        campaign=args.campaign,
        request=args.request,
        score=args.score,
        note=args.note,
        reviewer=args.reviewer,
    )


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stores", nargs="+", type=Path)
    p.add_argument("--into", type=Path, default=None, help="target store (default: --db)")
    _db(p)


def _merge(args: argparse.Namespace) -> int:
    from evidence.exchange import merge_stores

    return EXIT_FAILED if merge_stores(args.into or _store(args), args.stores) else EXIT_OK


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parquet", type=Path, required=True, metavar="DIR")
    _db(p)


def _export(args: argparse.Namespace) -> int:
    from evidence.exchange import export_store

    export_store(_store(args), args.parquet)
    return EXIT_OK


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", nargs="+", type=Path)
    _db(p)


def _import(args: argparse.Namespace) -> int:
    from evidence.exchange import import_bundles

    return EXIT_FAILED if import_bundles(_store(args), args.bundles) else EXIT_OK


# --- models, logs, texts, the engine, the instrument -----------------------------------


def _inspect_file(path_help: str, target: str) -> tuple[Configure, Handler]:
    """A command that reads one file and prints what it finds (a table, or JSON with
    --json) by `target`, "module:function", imported only when the command runs."""

    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("path", type=Path, help=path_help)
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handler(args: argparse.Namespace) -> int:
        module, function = target.split(":")
        show: Callable[..., None] = getattr(importlib.import_module(module), function)
        show(args.path, as_json=args.json)
        return EXIT_OK

    return configure, handler


def _score_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--test", metavar="TEST_ID", help="also run this protocol test's automated check"
    )


def _score_text(args: argparse.Namespace) -> int:
    from scoring.text_cli import score_text

    print(score_text(sys.stdin.read(), test_id=args.test, as_json=args.json))
    return EXIT_OK


def _advise_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the .gguf model file (default: the embedded model, on the RPC device)",
    )
    p.add_argument(
        "--device-memory",
        required=True,
        metavar="SIZE",
        help="the device's memory, e.g. 8GiB, 24GB, 160MiB",
    )
    p.add_argument(
        "--ctx",
        type=int,
        default=None,
        help="context size in tokens (default: the model's trained context; 2048 for the "
        "embedded model)",
    )
    p.add_argument(
        "--device",
        choices=["gpu", "rpc"],
        default=None,
        help="a CUDA GPU (default for --model) or llama.cpp's RPC device (the embedded "
        "default's): they differ in the compute buffer and the margin",
    )
    p.add_argument(
        "--margin",
        metavar="SIZE",
        default=None,
        help="memory a fitting K must leave free (default: 1024MiB on a GPU, as llama.cpp's "
        "--fit; 2%% of the device, at least 2.5MiB, on the RPC device)",
    )
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="STORE",
        help="an evidence store (DuckDB file) to read a speed calibration from: a campaign of "
        "the same model file on this host and device whose sweep ran speed probes at K = 0 "
        "and K = all; adds predicted decode and prefill tokens/s per K and recommends the "
        "fastest K that fits (default: no store, memory only)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _advise(args: argparse.Namespace) -> int:
    from collector.advisor import advise_command

    print(
        advise_command(
            args.model,
            args.device_memory,
            device=args.device,
            n_ctx=args.ctx,
            margin=args.margin,
            as_json=args.json,
            db=args.db,
        )
    )
    return EXIT_OK


def _engine_args(p: argparse.ArgumentParser) -> None:
    del p  # no options: it builds the embedded engine once and shows it


def _engine(args: argparse.Namespace) -> int:
    from collector.runner import engine_with_progress

    for key, value in engine_with_progress().identity().items():
        print(f"{key:<16} {value}")
    return EXIT_OK


def _perf_args(p: argparse.ArgumentParser) -> None:
    # Its options are the benchmarks' own (--only, --quick, --db, ...): passed through.
    p.set_defaults(options=[])
    p.epilog = "Options pass through to the benchmarks: moe-evidence perf --only accuracy"


def _perf(args: argparse.Namespace) -> int:
    # The benchmarks are not shipped with the tool: they run from a checkout.
    if (Path.cwd() / "benchmarks" / "__main__.py").is_file():
        sys.path.insert(0, str(Path.cwd()))
    try:
        from benchmarks.__main__ import main as benchmarks
    except ImportError as exc:
        raise EvidenceError(
            "the instrument benchmarks live in the source checkout (benchmarks/); run "
            "`moe-evidence perf` from there, or `nox -s perf`"
        ) from exc
    return benchmarks(args.options)


COMMANDS: dict[str, tuple[str, Configure, Handler]] = {
    "collect": (
        "run the protocol against a server and store every token and sample, then score",
        _collect_args,
        _collect,
    ),
    "build": ("render the whitepaper site from the evidence store", _build_args, _build),
    "publish": ("build, then deploy as VERSION with mike (gh-pages)", _publish_args, _publish),
    "rescore": ("recompute scores and gates from stored rows", _rescore_args, _rescore),
    "review": ("record human 1-5 quality scores for stored outputs", _review_args, _review),
    "campaigns": ("list the campaigns in a store", _campaigns_args, _campaigns),
    "inspect-model": (
        "model specs and the weights --cpu-moe keeps off the device, from a GGUF file",
        *_inspect_file("the .gguf model file", "collector.gguf_inspect:print_spec"),
    ),
    "inspect-log": (
        "buffers and expert-tensor overrides from a llama.cpp loader log",
        *_inspect_file("a saved stdout/stderr log", "collector.loader_log:print_log_summary"),
    ),
    "advise": (
        "which --n-cpu-moe K fits a device: device memory per K, predicted from the GGUF file "
        "(and speed per K, from a calibration in --db)",
        _advise_args,
        _advise,
    ),
    "score-text": (
        "repetition score and loop detection (and a test's check) for a text on stdin",
        _score_text_args,
        _score_text,
    ),
    "merge": (
        "merge other stores into one (idempotent, read-only on the sources)",
        _merge_args,
        _merge,
    ),
    "export": ("write the store as a Parquet bundle with a manifest", _export_args, _export),
    "import": ("verify and merge Parquet bundles", _import_args, _import),
    "engine": (
        "build (once per machine) and show the embedded llama.cpp engine",
        _engine_args,
        _engine,
    ),
    "perf": ("instrument benchmarks (what `nox -s perf` runs)", _perf_args, _perf),
}


def parser() -> argparse.ArgumentParser:
    """The whole command line, every subcommand with its arguments."""
    top = argparse.ArgumentParser(
        prog="moe-evidence",
        description="Reproducible evidence for MoE CPU offloading: capture a fixed benchmark "
        "protocol into DuckDB and render a versioned whitepaper from it.",
        epilog="Exit codes: 0 done, 1 failed (one line says why), 2 usage, 130 interrupted.",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, configure, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(handler=handler)
    return top


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> str:
    """The line for an interrupt: for a campaign, the exact command that continues it
    (`--resume ID` alone reuses the flags the campaign ran with)."""
    line = "interrupted: everything finished so far is stored"
    campaign_id = getattr(exc, "campaign_id", None)
    if campaign_id is None:
        return line
    from collector.resume import continue_hint

    return f"{line}; {continue_hint(campaign_id, getattr(args, 'db', None))}"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (`argv`, else the process's) parsed as every handler gets it:
    with `options` (what `perf` passes through) and `argv` (the command line as given,
    stored with a campaign). A usage error exits 2, with argparse's message."""
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra and args.command != "perf":
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = [*getattr(args, "options", []), *extra]
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (see the module docstring)."""
    args = parse(argv)
    interrupts.install()
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        print(one_line(_interrupted(args, exc)), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from evidence.store import query_interrupted

        if query_interrupted(exc):
            # Ctrl-C that a DuckDB call turned into an error of its own (outside a
            # campaign, which says it itself: a build, an export).
            print(one_line(_interrupted(args, KeyboardInterrupt())), file=sys.stderr)
            return EXIT_INTERRUPTED
        if not isinstance(exc, EvidenceError):
            raise
        # One line, always: a message may quote a label, a path or a server's words;
        # and never a URL's credentials (an endpoint refused for its scheme or port).
        print(one_line(redact_url(f"error: {exc}")), file=sys.stderr)
        return EXIT_FAILED
