"""`collect`: from the typed request to a stored campaign.

Given the `CollectRequest` the command line built, it decides the config (a new
campaign's from the flags, a resumed one's from the store: collector.resume),
checks the store, prepares the engine and the models, and runs the campaign;
everything after it sees one validated `Config`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from collector.campaign import run_campaign
from collector.collect_request import EMBEDDED_PROFILES, CollectRequest, build_config
from collector.config import Config
from collector.defaults import EMBEDDED_MODEL_LABEL
from collector.engine import EngineBuild, cached_engine, ensure_engine
from collector.leftovers import close_left_runs
from collector.progress import CampaignProgress, visible
from collector.recording import campaign_secrets
from collector.resume import StoredDefinition, continue_hint, resumed_definition, stored_campaign
from common.errors import ConfigError, DiskFull, EvidenceError, ModelError, StoreError
from common.secrets import launched_server_key
from evidence.store import disk_full, open_store


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


def _check_store(db: Path) -> None:
    """Open the store before anything slow (the engine build, a model download), so
    a store that cannot be used fails now, in one line. An existing one is only read,
    every block of it: a damaged store is refused before anything is written to it."""
    with open_store(db, read_only=db.exists(), verify=True):
        pass


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


def run_command(request: CollectRequest, db: Path) -> str:
    """Run (or resume) the campaign `request` asks for into `db`; return its id."""
    command = list(request.command)
    stored: StoredDefinition | None = None
    if request.resume:
        stored = stored_campaign(db, request.resume)
        config, profile = resumed_definition(request, stored)
    else:
        # Flags and config files first: a mistake stores nothing.
        config, profile = build_config(request)
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
                # How to go on once space is free: the campaign's own `--resume`, or a
                # rerun when not even its first row was stored.
                hint = (
                    "run the command again"
                    if campaign_id is None
                    else continue_hint(campaign_id, request.db)
                )
                raise DiskFull(str(db), hint) from exc
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
