"""Reproduce page: versions, engine build, checksums, and the commands that
produced this evidence and this site."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from report.context.common import as_dict, as_list
from report.machine_paths import user_command
from report.queries import Selection, record, rows, scalar
from report.values import Figure, Missing, Quantity


@dataclass(frozen=True)
class Checksum:
    model: str
    path: str
    sha256: str | None
    size: Figure


@dataclass(frozen=True)
class CampaignRecipe:
    name: str
    campaign_id: str
    protocol_version: str
    tool_version: str
    engine: tuple[tuple[str, str], ...]
    server_versions: tuple[tuple[str, str], ...]  # (config, version)
    command: tuple[str, ...]
    python: str | None
    packages: int  # installed distributions recorded
    lock: str  # what the store says of the lock file the packages came from


@dataclass(frozen=True)
class StoreFacts:
    file_name: str
    sha256: str
    size: Quantity
    store_ids: tuple[str, ...]  # one for a store file; a fleet has one per source store
    schema_version: int
    bundles: int  # 0: a store file; else the fleet directory's bundle count


@dataclass(frozen=True)
class ReproduceContext:
    """The reproduce page: versions, checksums, commands."""

    store: StoreFacts
    campaigns: tuple[CampaignRecipe, ...]
    checksums: tuple[Checksum, ...]
    campaign_ids: tuple[str, ...]
    rebuild: tuple[str, ...]  # the command that rebuilds this site


def build(
    con: duckdb.DuckDBPyConnection,
    sel: Selection,
    store_name: str,
    store_sha256: str,
    store_bytes: int,
    bundles: int = 0,
) -> ReproduceContext:
    """The reproduce page's context; the source's name and digest come from the build
    (`bundles` > 0: the source is a fleet directory of that many bundles)."""
    campaigns = []
    for c in rows(
        con,
        "SELECT * FROM campaigns WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns) "
        "ORDER BY started_utc",
    ):
        engine = as_dict(c["engine"])
        versions = rows(
            con,
            "SELECT DISTINCT config_label, coalesce(version, 'not recorded (attached server)') "
            "AS version, min(config_order) AS o FROM sel_runs WHERE campaign_id = ? "
            "GROUP BY ALL ORDER BY o",
            [c["campaign_id"]],
        )
        packages: dict[str, Any] = as_dict(c["packages"])
        campaigns.append(
            record(
                CampaignRecipe,
                c,
                engine=tuple(
                    (str(k), ", ".join(map(str, v)) if isinstance(v, list) else str(v))
                    for k, v in sorted(engine.items())
                ),
                server_versions=tuple((v["config_label"], v["version"]) for v in versions),
                command=tuple(user_command(as_list(c["command"]))),
                python=str(packages["python"]) if "python" in packages else None,
                packages=len(packages) - ("python" in packages),
                lock=_lock_text(as_dict(c["lock"]) if "lock" in c else {}),
            )
        )
    checksums = tuple(
        Checksum(
            m["display"],
            m["path"],
            m["sha256"],
            Quantity(m["file_bytes"], "bytes", None)
            if m["file_bytes"] is not None
            else Missing("the model file was not inspected"),
        )
        for m in rows(con, "SELECT * FROM sel_models ORDER BY model_order")
    )
    store_ids = tuple(
        str(r["value"])
        for r in rows(
            con,
            "SELECT DISTINCT value FROM store_meta WHERE key = 'store_id' ORDER BY value",
        )
    )
    version = scalar(con, "SELECT max(version) FROM schema_migrations")
    return ReproduceContext(
        store=StoreFacts(
            store_name,
            store_sha256,
            Quantity(store_bytes, "bytes", None),
            store_ids,
            int(version or 0),
            bundles,
        ),
        campaigns=tuple(campaigns),
        checksums=checksums,
        campaign_ids=tuple(sel.ids),
        rebuild=(
            "nox",
            "-s",
            "build",
            "--",
            "--db",
            store_name,
            *(arg for cid in sel.ids for arg in ("--campaign", cid)),
        ),
    )


def _lock_text(lock: dict[str, Any]) -> str:
    """One line on the lock file the campaign's packages were installed from."""
    if not lock:
        return "not recorded (the collector ran outside a checkout with constraints.txt)"
    differs = as_dict(lock.get("differs"))
    text = f"{lock.get('file')} (sha256 {str(lock.get('sha256'))[:16]}…, {lock.get('pinned')} pins)"
    if not differs:
        return text + ": every installed package as locked"
    names = ", ".join(
        f"{name} {as_dict(v).get('installed')} (locked {as_dict(v).get('locked')})"
        for name, v in sorted(differs.items())
    )
    return f"{text}: differs for {names}"
