"""What the tests that drive `moe-evidence` as a user would share: the command in a fresh
process (the store named by flags, never by the caller's EVIDENCE_DB), and the store read
back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """This environment without EVIDENCE_DB, unbuffered (progress lines arrive in order)."""
    env = {k: v for k, v in os.environ.items() if k != "EVIDENCE_DB"}
    return {**env, "PYTHONUNBUFFERED": "1"}


def collect(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`moe-evidence collect ARGS` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "moe_evidence", "collect", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=cli_env(),
    )


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of `sql` over the store at `db`, opened read-only."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()
