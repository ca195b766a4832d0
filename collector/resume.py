"""`collect --resume`: what it checks, what it skips, and how a campaign goes on.

What it checks: the campaign exists (the given id, else the latest unfinished one);
run as `--resume` alone, its stored definition is rebuilt (refused where a secret
the store does not keep, or a setting that no longer validates, is needed); run
with flags, they must ask for exactly the stored definition, and the first
difference is named. Which flags define a campaign is declared once, on
`CollectRequest` (collector.collect_request).

What it skips: every cell that already has a stored request (whatever its status),
and every configuration whose load did not fit the device.

How it goes on: the campaign is marked `running` again and the run loop
(collector.campaign) serves what is missing into the same campaign.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from pydantic import ValidationError

from collector.collect_request import CollectRequest, build_config
from collector.config import CampaignSection, Config, validation_message
from collector.plan import Cell
from collector.progress import CampaignProgress
from collector.recording import campaign_secrets, reopen_campaign, stored_config
from common.errors import ConfigError, StoreError
from common.secrets import REDACTED
from evidence.store import open_store
from evidence.writer import as_stored


@dataclass(frozen=True)
class Resumed:
    """Where a campaign goes on: its id, and what the run loop skips."""

    campaign_id: str
    # Cells with a stored request (any status).
    done: set[Cell]
    # (model, configuration) labels whose load did not fit the device: they would
    # not fit now either.
    unfit: set[tuple[str, str]]


def continue_campaign(
    con: duckdb.DuckDBPyConnection, resume: str | bool, progress: CampaignProgress
) -> Resumed:
    """Mark the campaign `resume` names (an id, or True for the latest unfinished one)
    running again, and say how much of it is stored."""
    campaign_id = find_resumable(con, resume if isinstance(resume, str) else None)
    done = done_cells(con, campaign_id)
    reopen_campaign(con, campaign_id)
    progress.message(f"resuming campaign {campaign_id}: {len(done)} cells already stored")
    return Resumed(campaign_id, done, unfit_configurations(con, campaign_id))


def stored_campaign(db: Path, resume: str | bool) -> StoredDefinition:
    """The definition of the campaign `--resume` continues (read only)."""
    if not db.exists():
        raise StoreError(f"no evidence store at {db} to resume; pass the --db the campaign used")
    # Checked as a writer checks it: the campaign will write into this store.
    with open_store(db, read_only=True, verify=True) as con:
        return stored_definition(con, resume)


def resumed_definition(request: CollectRequest, stored: StoredDefinition) -> tuple[Config, str]:
    """The config and profile a resume runs: the stored campaign's for `--resume`
    alone; else the flags', refused where they change the campaign."""
    if not request.defines_campaign():
        return config_of(stored), stored.profile
    config, profile = build_config(request)
    check_same_definition(stored, config, profile)
    return config, profile


def continue_hint(campaign_id: str, db: Path | None) -> str:
    """The command that continues `campaign_id` (`--resume ID` alone reuses the flags it
    ran with), with the `--db` it was given, if any."""
    where = f" --db {shlex.quote(str(db))}" if db else ""
    return f"continue with `moe-evidence collect --resume {campaign_id}{where}`"


def done_cells(con: duckdb.DuckDBPyConnection, campaign_id: str) -> set[Cell]:
    """Cells of `campaign_id` that already have a stored request (any status)."""
    rows = con.execute(
        """
        SELECT m.label, s.config_label, r.test_id, r.repeat, r.stream
        FROM requests r
        JOIN server_runs s USING (server_run_id)
        JOIN models m ON m.model_id = s.model_id
        WHERE r.campaign_id = ?
        """,
        [campaign_id],
    ).fetchall()
    return {Cell(*row) for row in rows}


def unfit_configurations(con: duckdb.DuckDBPyConnection, campaign_id: str) -> set[tuple[str, str]]:
    """(model, configuration) labels of `campaign_id` whose load did not fit the device."""
    rows = con.execute(
        """
        SELECT DISTINCT m.label, s.config_label
        FROM server_runs s JOIN models m USING (model_id)
        WHERE s.campaign_id = ? AND s.status = 'does_not_fit'
        """,
        [campaign_id],
    ).fetchall()
    return {(str(model), str(config)) for model, config in rows}


def find_resumable(con: duckdb.DuckDBPyConnection, campaign_id: str | None) -> str:
    """The campaign to resume: the given id, else the latest unfinished one."""
    if campaign_id:
        row = con.execute(
            "SELECT campaign_id, status FROM campaigns WHERE campaign_id = ?", [campaign_id]
        ).fetchone()
        if row is None:
            raise StoreError(
                f"no campaign {campaign_id} in this store; list them with `moe-evidence campaigns`"
            )
        return str(row[0])
    row = con.execute(
        "SELECT campaign_id FROM campaigns WHERE status <> 'complete' "
        "ORDER BY started_utc DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise StoreError(
            "no unfinished campaign to resume in this store; start a new one without --resume"
        )
    return str(row[0])


@dataclass(frozen=True)
class StoredDefinition:
    """What defines a stored campaign: its profile and its config (as stored, secrets
    redacted), and the command line that started it."""

    campaign_id: str
    profile: str
    config: dict[str, Any]
    command: list[str]

    def command_line(self) -> str:
        return shlex.join([*self.command, "--resume", self.campaign_id])


def stored_definition(con: duckdb.DuckDBPyConnection, resume: str | bool) -> StoredDefinition:
    """The definition of the campaign `--resume` names (an id, or True for the latest
    unfinished one)."""
    campaign_id = find_resumable(con, resume if isinstance(resume, str) else None)
    row = con.execute(
        "SELECT profile, config, command FROM campaigns WHERE campaign_id = ?", [campaign_id]
    ).fetchone()
    assert row is not None
    profile, config, command = row
    return StoredDefinition(
        campaign_id, str(profile), _with_budget_deadlines(json.loads(config)), json.loads(command)
    )


# What a collector before budget deadlines stored as `campaign.request_timeout_s`
# when the config did not set it: one fixed limit for every request.
_FIXED_DEADLINE_DEFAULT_S = 900.0


def _with_budget_deadlines(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config as this collector reads it, deadlines included.

    A campaign stored before deadlines came from token budgets has no
    `min_tokens_per_s`, and a `request_timeout_s` of 900 s that every request was
    held to: the old default, which cut slow answers it should have waited for. It
    is read with today's defaults (no cap, 1 token/s), so it resumes, with its flags
    or without, under the deadlines a new campaign gets; any other value it set
    stays, as a cap."""
    campaign = config.get("campaign")
    if not isinstance(campaign, dict) or "min_tokens_per_s" in campaign:
        return config
    defaults = CampaignSection.model_fields
    campaign = {**campaign, "min_tokens_per_s": defaults["min_tokens_per_s"].default}
    if campaign.get("request_timeout_s") == _FIXED_DEADLINE_DEFAULT_S:
        campaign["request_timeout_s"] = defaults["request_timeout_s"].default
    return {**config, "campaign": campaign}


# The order in which a changed definition is reported: what is measured first (a
# different endpoint also changes the derived campaign name, which says less).
_DEFINITION_ORDER = ("server", "models", "configurations", "sweep", "device", "campaign")


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _first_difference(old: Any, new: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first place where two stored configs differ: (dotted path, old, new)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in _DEFINITION_ORDER if k in old or k in new] if not path else []
        keys += sorted((old.keys() | new.keys()) - set(keys))
        for key in keys:
            where = f"{path}.{key}" if path else key
            if key not in old and new[key] is None:
                # A setting added since the campaign was stored, left unset: what the
                # older collector did (e.g. device.memory: no limit).
                continue
            if key not in old or key not in new:
                return where, old.get(key, "(absent)"), new.get(key, "(absent)")
            found = _first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and any(isinstance(x, dict) for x in old)
    ):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(old, str) and REDACTED in old:
        return None  # a secret: not stored, so not compared (and not what is measured)
    return None if old == new else (path, old, new)


def check_same_definition(stored: StoredDefinition, config: Config, profile: str) -> None:
    """Refuse to resume `stored` as anything but itself: requests measured with a
    different server, model, configuration, protocol setting or profile would be
    mixed into one campaign as if they were the same measurement."""
    redo = "rerun with the same flags (or --resume alone), or without --resume for a new campaign"
    if profile != stored.profile:
        raise ConfigError(
            f"--resume: this campaign ran with profile {stored.profile}; you asked for "
            f"{profile}; {redo}"
        )
    # Compared as the store holds it: its secrets redacted (and never printed raw).
    asked = as_stored(
        json.loads(json.dumps(stored_config(config), default=str)),
        campaign_secrets(config, [], None),
    )
    found = _first_difference(stored.config, asked, "")
    if found:
        where, old, new = found
        raise ConfigError(
            f"--resume: this campaign ran with {where} {_shown(old)}; you asked for "
            f"{_shown(new)}; {redo}"
        )


def _redacted(value: Any, path: str = "") -> str | None:
    """The first place in a stored config whose value was redacted (a secret)."""
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = [
            (f"{path}.{k}" if path else str(k), v) for k, v in value.items()
        ]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        return path if isinstance(value, str) and REDACTED in value else None
    for where, item in items:
        found = _redacted(item, where)
        if found:
            return found
    return None


def config_of(stored: StoredDefinition) -> Config:
    """The config a campaign ran with, rebuilt from the store (`--resume` alone)."""
    secret = _redacted(stored.config)
    if secret:
        raise ConfigError(
            f"--resume: this campaign's {secret} is a secret the store does not keep, so "
            f"it cannot be rerun from the store; resume with its flags: "
            f"{stored.command_line()}"
        )
    try:
        return Config.model_validate(stored.config)
    except ValidationError as exc:
        raise ConfigError(
            f"--resume: the stored definition no longer validates "
            f"({validation_message('config', exc)}); resume with its flags: "
            f"{stored.command_line()}"
        ) from exc
