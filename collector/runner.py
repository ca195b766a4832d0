"""`collector run`: turn flags into a config, prepare engine and models, run.

This is the only place that decides between the embedded default, a config
file and attach mode; everything after it sees one validated `Config`.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

import duckdb
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from collector import device_limit
from collector.campaign import (
    StoredDefinition,
    campaign_secrets,
    check_same_definition,
    config_of,
    run_campaign,
    stored_definition,
)
from collector.config import (
    CampaignSection,
    Config,
    Configuration,
    DeviceSection,
    ModelEntry,
    ServerSection,
    check_test_ids,
    endpoint_problem,
    load_config,
    validation_message,
)
from collector.defaults import EMBEDDED_MODEL_LABEL, embedded_config, quick_profile
from collector.engine import EngineBuild, cached_engine, ensure_engine
from collector.leftovers import close_left_runs
from collector.progress import CampaignProgress, visible
from common.controls import control_problem
from common.errors import ConfigError, DiskFull, EvidenceError, ModelError, StoreError
from common.secrets import launched_server_key, redact_url
from common.sizes import parse_size
from evidence.store import disk_full, open_store

# The `collect` flags that define a campaign: all but where it is stored (--db)
# and --resume. Unset, each is None or False.
DEFINITION_FLAGS = (
    "config",
    "endpoint",
    "api",
    "device",
    "device_memory",
    "model",
    "label",
    "quick",
    "repeats",
    "pause",
    "tests",
    "release",
    "no_non_streaming",
    "no_sweep",
)

# Profiles of the embedded default campaign (no --config, no --endpoint).
EMBEDDED_PROFILES = ("default", "quick")


def engine_with_progress() -> EngineBuild:
    """The embedded engine; builds it with a progress display on first use (~6-10 min on
    2 cores). On a terminal a bar; elsewhere (CI logs) a line per 10%."""
    found = cached_engine()
    if found is not None:
        return found
    console = Console(stderr=True)
    console.print(
        "building llama.cpp b11434 (llama-server, llama-bench, ggml-rpc-server, "
        "llama-tokenize) once for this machine; this takes several minutes"
    )
    started = time.monotonic()
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("preparing", total=1.0)

            def report(message: str, fraction: float | None) -> None:
                bar.update(task, description=message, completed=fraction or 0.0)

            build = ensure_engine(report)
    else:
        last: list[tuple[str, int]] = [("", -1)]

        def report(message: str, fraction: float | None) -> None:
            step = int((fraction or 0.0) * 10)
            if (message, step) != last[0]:
                last[0] = (message, step)
                elapsed = time.monotonic() - started
                console.print(f"  {message} {step * 10}% ({elapsed:.0f} s)")

        build = ensure_engine(report)
    console.print(f"engine built in {time.monotonic() - started:.0f} s: {build.server}")
    return build


def _check_label_flags(args: argparse.Namespace) -> None:
    """The flags that name things, refused (naming the flag) where they hold a control
    character, as the same keys are in a config file (collector.config.Label)."""
    for flag, value in (
        ("--model", args.model),
        ("--label", args.label),
        ("--release", args.release),
    ):
        problem = control_problem(value) if value else None
        if problem:
            raise ConfigError(f"{flag}: {problem}")


def _attach_config(args: argparse.Namespace) -> Config:
    if not args.model:
        raise ConfigError("--endpoint needs --model NAME (the model name the server knows)")
    problem = endpoint_problem(args.endpoint)
    if problem:
        raise ConfigError(f"--endpoint {problem}")
    try:
        return Config(
            # Named without the endpoint's credentials: the store redacts a bare URL's
            # structurally, but only a secret long enough for free text in a name.
            campaign=CampaignSection(name=f"Attached: {args.model} at {redact_url(args.endpoint)}"),
            server=ServerSection(
                mode="attach", endpoint=args.endpoint, api=args.api or "openai-chat"
            ),
            models=[ModelEntry(label=args.model, name=args.model)],
            configurations=[Configuration(label=args.label or "attached")],
        )
    except ValidationError as exc:
        raise ConfigError(validation_message("--endpoint", exc)) from exc


def _with_device(config: Config, kind: str | None, memory: str | None) -> Config:
    """`config` with the device the flags name: its kind, and the memory it is held to."""
    updates: dict[str, Any] = {}
    if kind is not None:
        updates["kind"] = kind
    if memory is not None:
        try:
            updates["memory"] = parse_size(memory)
        except ValueError as exc:
            raise ConfigError(f"--device-memory: {exc}") from exc
        unsupported = device_limit.supported()
        if unsupported:
            raise ConfigError(f"--device-memory: {unsupported}")
    try:
        device = DeviceSection.model_validate({**config.device.model_dump(), **updates})
    except ValidationError as exc:
        raise ConfigError(validation_message("--device-memory", exc)) from exc
    return config.model_copy(update={"device": device})


def _test_ids(flag: str) -> list[str]:
    """`--tests a,b`: the ids, each a protocol test (one line naming a bad one)."""
    try:
        ids = check_test_ids([t.strip() for t in flag.split(",") if t.strip()])
    except ValueError as exc:
        raise ConfigError(f"--tests: {exc}") from exc
    assert ids is not None
    return ids


def build_config(args: argparse.Namespace) -> tuple[Config, str]:
    """The config the flags ask for, and its profile name."""
    _check_label_flags(args)
    device = args.device
    if args.config is not None:
        config, profile = load_config(args.config), "config"
    elif args.endpoint is not None:
        config, profile = _attach_config(args), "attach"
    else:
        config, profile = embedded_config(device=device or "rpc"), "default"
        device = None  # applied
    memory = getattr(args, "device_memory", None)
    if device is not None or memory is not None:
        config = _with_device(config, device, memory)
    if args.quick:
        # The profile first, then the flags typed with it: `--quick --repeats 3` is
        # the smoke profile with three repeats (the --quick help says so).
        config = quick_profile(config)
        profile = "quick" if profile == "default" else f"{profile}-quick"
    updates: dict[str, Any] = {}
    if args.repeats is not None:
        if args.repeats < 1:
            raise ConfigError("--repeats must be at least 1")
        updates["repeats"] = args.repeats
    if args.pause is not None:
        if not math.isfinite(args.pause):
            raise ConfigError("--pause must be a finite number of seconds (0 for none)")
        updates["pause_s"] = max(0.0, args.pause)
    if args.tests is not None:
        updates["tests"] = _test_ids(args.tests)
    if args.release:
        updates["release"] = args.release
    if args.no_non_streaming:
        updates["non_streaming"] = False
    if updates:
        try:
            campaign = CampaignSection.model_validate({**config.campaign.model_dump(), **updates})
        except ValidationError as exc:
            raise ConfigError(validation_message("flags", exc)) from exc
        config = config.model_copy(update={"campaign": campaign})
    if args.no_sweep:
        config = config.model_copy(update={"sweep": None})
    return config, profile


def _model_paths(config: Config, embedded: bool) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    if embedded:
        from collector.embedded import ensure_embedded_model

        paths[EMBEDDED_MODEL_LABEL] = ensure_embedded_model()
        return paths
    if config.server.mode == "attach":
        return paths
    for model in config.models:
        if model.path is None:
            raise ConfigError(
                f"models: {model.label!r} has no path; the tool launches the "
                f"server, so it needs the model file"
            )
        _check_model_file(model.path, model.label)
        paths[model.label] = model.path
    return paths


def _check_model_file(path: Path, label: str) -> None:
    """Refuse, before any row is stored, a model path that is not a GGUF file: a
    campaign begun on it would stop at the inspection and be left half made."""
    if path.is_dir():
        raise ModelError(
            f"models: {label!r}: {path} is a directory; give the .gguf model file in it "
            f"(models.path)"
        )
    if not path.exists():
        raise ModelError(
            f"model file {path} for {label!r} does not exist; fix models.path in the config"
        )
    try:
        with path.open("rb") as model:
            magic = model.read(4)
    except OSError as exc:
        raise ModelError(
            f"cannot read model file {path} for {label!r} ({exc.strerror or exc}); check its "
            f"permissions"
        ) from exc
    if magic != b"GGUF":
        raise ModelError(
            f"model file {path} for {label!r} is not a GGUF model (it does not begin with "
            f"the GGUF magic); give the .gguf file (models.path)"
        )


def _inspect(path: Path) -> dict[str, Any]:
    from collector.gguf_inspect import inspect_model

    spec: dict[str, Any] = inspect_model(path).to_json()
    return spec


def _launched_key(config: Config) -> str | None:
    """The key a server the tool launches is told to require (`--api-key`,
    `--api-key-file`, their variables): sent with every request, since it is the
    user's own setting for this very server (else every request would get a 401)."""
    if config.server.mode != "launch" or not config.server.command:
        return None
    return launched_server_key(config.server.command, {**os.environ, **config.server.env})


def env_api_key(name: str | None) -> str | None:
    """An API key read from the environment variable `name` (never from a file)."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ConfigError(f"server.api_key_env names {name}, which is not set; export it")
    return value


def _definition(args: argparse.Namespace, stored: StoredDefinition) -> tuple[Config, str]:
    """The config and profile a resume runs: the stored campaign's for `--resume`
    alone; else the flags', refused where they change the campaign."""
    if not any(getattr(args, name, None) not in (None, False) for name in DEFINITION_FLAGS):
        return config_of(stored), stored.profile
    config, profile = build_config(args)
    check_same_definition(stored, config, profile)
    return config, profile


def _check_store(db: Path) -> None:
    """Open the store before anything slow (the engine build, a model download), so
    a store that cannot be used fails now, in one line. An existing one is only read,
    every block of it: a damaged store is refused before anything is written to it."""
    with open_store(db, read_only=db.exists(), verify=True):
        pass


def _stored(db: Path, resume: str | bool) -> StoredDefinition:
    """The definition of the campaign `--resume` continues (read only)."""
    if not db.exists():
        raise StoreError(f"no evidence store at {db} to resume; pass the --db the campaign used")
    # Checked as a writer checks it: the campaign will write into this store.
    with open_store(db, read_only=True, verify=True) as con:
        return stored_definition(con, resume)


def _campaign_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {str(row[0]) for row in con.execute("SELECT campaign_id FROM campaigns").fetchall()}


def _new_campaign(con: duckdb.DuckDBPyConnection, before: set[str]) -> str | None:
    """The campaign this run created, if its row was committed (the store still reads
    after a commit failed for want of space)."""
    try:
        new = _campaign_ids(con) - before
    except duckdb.Error:
        return None
    return next(iter(new)) if len(new) == 1 else None


def _resume_hint(args: argparse.Namespace, campaign_id: str | None) -> str:
    """How to go on once space is free: the campaign's own `--resume`, or a rerun when
    not even its first row was stored."""
    if campaign_id is None:
        return "run the command again"
    db = f" --db {shlex.quote(str(args.db))}" if getattr(args, "db", None) else ""
    return f"continue with `moe-evidence collect --resume {campaign_id}{db}`"


def run_command(args: argparse.Namespace, command: list[str], db: Path) -> str:
    """Run (or resume) the campaign the flags ask for into `db`; return its id."""
    stored: StoredDefinition | None = None
    if args.resume:
        stored = _stored(db, args.resume)
        config, profile = _definition(args, stored)
    else:
        # Flags and config files first: a mistake stores nothing.
        config, profile = build_config(args)
        _check_store(db)
    embedded = profile in EMBEDDED_PROFILES
    uses_engine = (
        embedded
        or any("{llama_server}" in part for part in (config.server.command or []))
        or (config.device.kind == "rpc" and config.device.launch > 0 and not config.device.command)
    )
    engine = engine_with_progress() if uses_engine else None
    model_paths = _model_paths(config, embedded)
    api_key = env_api_key(config.server.api_key_env) or _launched_key(config)
    # What the store never holds, the terminal never shows: progress lines and the
    # final error line can carry a 401 body or a log line that echoes a key.
    secrets = campaign_secrets(config, command, api_key)
    try:
        with open_store(db) as con, CampaignProgress(secrets=secrets) as progress:
            # Before anything is measured: a server a killed collector left running
            # would hold memory, a port and its key (collector.leftovers).
            close_left_runs(con, db.parent / "logs", secrets, progress.message)
            before = _campaign_ids(con)
            try:
                return run_campaign(
                    con,
                    config,
                    profile=profile,
                    command=command,
                    model_paths=model_paths,
                    engine=engine,
                    inspect=_inspect,
                    resume=stored.campaign_id if stored else False,
                    progress=progress,
                    data_dir=db.parent,
                    api_key=api_key,
                )
            except (duckdb.Error, OSError) as exc:
                if not disk_full(exc):
                    raise
                campaign_id = stored.campaign_id if stored else _new_campaign(con, before)
                raise DiskFull(str(db), _resume_hint(args, campaign_id)) from exc
    except EvidenceError as exc:
        # The one `error:` line quotes what failed (a 401 body, a log's last line).
        exc.args = tuple(visible(secrets.text(a)) if isinstance(a, str) else a for a in exc.args)
        raise
    except duckdb.IOException as exc:
        # The disk filled up, or the file went away, mid-campaign.
        message = str(exc).splitlines()[0]
        raise StoreError(
            f"evidence store {db} failed: {message}; what was written before is kept; "
            f"free space or pass another file with --db"
        ) from exc
