"""Shared fixtures: the real engine and the real embedded model, built once per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector.engine import EngineBuild


@pytest.fixture(scope="session")
def engine() -> EngineBuild:
    """The embedded llama.cpp build (built on first use: several minutes on 2 cores)."""
    from collector.runner import engine_with_progress

    return engine_with_progress()


@pytest.fixture(scope="session")
def moe_model() -> Path:
    """The upcycled SmolLM2 MoE (4 experts, top-2), made on first use."""
    from collector.embedded import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running `python -m collector` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("EVIDENCE_DB", None)
    return env


@pytest.fixture(scope="session")
def quick_store(
    tmp_path_factory: pytest.TempPathFactory, engine: EngineBuild, moe_model: Path
) -> Path:
    """A real quick campaign (`moe-evidence collect --quick`), run once per session."""
    import subprocess
    import sys

    db = tmp_path_factory.mktemp("quick") / "evidence.duckdb"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-m", "moe_evidence", "collect", "--quick", "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return db
