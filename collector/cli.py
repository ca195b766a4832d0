"""`python -m collector COMMAND`: the tool's command line.

Every EvidenceError ends the program with one line, `error: ...`, that says
what to do, and exit code 2; Ctrl-C ends it with exit code 130 after the store
has been left consistent.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from evidence.errors import EvidenceError
from evidence.store import default_db_path

Handler = Callable[[list[str]], int]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector run",
        description="Run the benchmark protocol and store every token and sample.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="TOML campaign config (default: embedded)")
    source.add_argument("--endpoint", help="attach to a running server at this URL")
    parser.add_argument(
        "--api",
        default="openai-chat",
        choices=["openai-chat", "openai-completions", "shimmy"],
        help="API of --endpoint (default: openai-chat)",
    )
    parser.add_argument(
        "--device",
        choices=["rpc", "none"],
        default=None,
        help="offload device: llama.cpp's RPC device (a second process standing in for "
        "the GPU; the embedded default) or none (the server's CPU only)",
    )
    parser.add_argument("--model", help="model name to send to --endpoint")
    parser.add_argument(
        "--label", default="attached", help="configuration label for --endpoint runs (e.g. cpu-moe)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke profile: 1 repeat, 32-token cap, no pauses"
    )
    parser.add_argument("--repeats", type=int, help="override the number of repeats")
    parser.add_argument("--pause", type=float, help="override the pause between tests (s)")
    parser.add_argument("--tests", help="comma-separated subset of test ids")
    parser.add_argument("--release", help="release label, e.g. 'shimmy 1.7.0'")
    parser.add_argument(
        "--no-non-streaming", action="store_true", help="skip the non-streamed pass"
    )
    parser.add_argument(
        "--no-sweep", action="store_true", help="skip the --n-cpu-moe sweep configurations"
    )
    parser.add_argument("--db", type=Path, default=None, help="evidence store (DuckDB file)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CAMPAIGN_ID",
        help="continue an interrupted campaign (default: the latest)",
    )
    args = parser.parse_args(argv)
    from collector.runner import run_command

    return run_command(args, command=[sys.executable, "-m", "collector", "run", *argv])


def _engine(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector engine", description="Build (once) and show the embedded engine."
    )
    parser.parse_args(argv)
    from collector.runner import engine_with_progress

    build = engine_with_progress()
    for key, value in build.identity().items():
        print(f"{key:<16} {value}")
    return 0


def _campaigns(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector campaigns", description="List the campaigns in a store."
    )
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args(argv)
    from evidence.store import open_store

    with open_store(args.db or default_db_path(), read_only=True) as con:
        rows = con.execute(
            "SELECT c.campaign_id, c.status, c.profile, c.started_utc, c.name,"
            " (SELECT count(*) FROM requests r WHERE r.campaign_id = c.campaign_id)"
            " FROM campaigns c ORDER BY c.started_utc"
        ).fetchall()
    if not rows:
        print("no campaigns in this store")
    for cid, status, profile, started, name, n in rows:
        print(f"{cid}  {status:<11} {profile:<7} {started:%Y-%m-%d %H:%M}  {n:>5} requests  {name}")
    return 0


def _lazy(module: str, function: str) -> Handler:
    def handler(argv: list[str]) -> int:
        mod = __import__(module, fromlist=[function])
        result: int = getattr(mod, function)(argv)
        return result

    return handler


COMMANDS: dict[str, tuple[Handler, str]] = {
    "run": (_run, "run the protocol against a server and store the evidence"),
    "engine": (_engine, "build (once per machine) and show the embedded llama.cpp engine"),
    "campaigns": (_campaigns, "list the campaigns in a store"),
    "inspect-model": (
        _lazy("collector.gguf_inspect", "main_inspect_model"),
        "model specs and the offload estimate from a GGUF file",
    ),
    "inspect-log": (
        _lazy("collector.loader_log", "main_inspect_log"),
        "buffers and expert-tensor overrides from a llama.cpp loader log",
    ),
    "score-text": (
        _lazy("scoring.text_cli", "main_score_text"),
        "repetition score and loop detection for a text on stdin",
    ),
    "rescore": (
        _lazy("scoring.store", "main_rescore"),
        "recompute scores and gates from stored rows",
    ),
    "review": (
        _lazy("collector.review", "main_review"),
        "record human 1-5 quality scores for stored outputs",
    ),
    "merge": (
        _lazy("collector.exchange", "main_merge"),
        "merge other stores into one (idempotent, read-only on the sources)",
    ),
    "export": (
        _lazy("collector.exchange", "main_export"),
        "write the store as a Parquet bundle with a checksummed manifest",
    ),
    "import": (_lazy("collector.exchange", "main_import"), "verify and merge Parquet bundles"),
}


def _usage() -> str:
    lines = ["usage: python -m collector COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `python -m collector COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _interrupt_on_termination() -> None:
    """Treat SIGTERM (and SIGHUP where it exists) like Ctrl-C, so a campaign
    killed by a job runner still stops its server and marks itself interrupted
    instead of leaving an orphaned server behind (servers run in their own
    process group and would not get the signal)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    handler = COMMANDS[name][0]
    _interrupt_on_termination()
    try:
        return handler(rest)
    except EvidenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: everything finished so far is stored; continue with "
            "`nox -s collect -- --resume`",
            file=sys.stderr,
        )
        return 130
