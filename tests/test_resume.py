"""`--resume` continues the campaign that was interrupted, and only that campaign.

A campaign is defined by what it measures: the server (endpoint, API, the
command that launches it), the models, the configurations, the protocol
settings and the profile. Resuming with any of those changed would mix two
different measurements under one campaign id, so it is refused with one line
naming the field. `--resume` alone reuses the stored definition, which is what
the Ctrl-C hint tells the user to run.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from common.files import file_sha256
from tests.support.cli import cli_env, collect_here, query

ROOT = Path(__file__).resolve().parents[1]
MODEL = "calibration"
TESTS = "simple-response,code-generation"
FAST = Scenario(tokens=4, gap_s=0.001)


@pytest.fixture(scope="module")
def server() -> Iterator[CalibratedServer]:
    with CalibratedServer(FAST) as calibrated:
        yield calibrated


def _flags(server: CalibratedServer) -> list[str]:
    return ["--endpoint", server.base_url, "--model", MODEL, "--quick", "--tests", TESTS]


def _interrupted(db: Path, *flags: str) -> str:
    """A campaign run with `flags` (in this process: what it stores is what counts), then
    marked interrupted (as if Ctrl-C had stopped it)."""
    done = collect_here(*flags, "--db", str(db))
    assert done.returncode == 0, done.stderr
    ((campaign_id,),) = query(db, "SELECT campaign_id FROM campaigns")
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE campaigns SET status = 'interrupted'")
    finally:
        con.close()
    return str(campaign_id)


@pytest.fixture(scope="module")
def interrupted_store(
    tmp_path_factory: pytest.TempPathFactory, server: CalibratedServer
) -> tuple[Path, str]:
    """A campaign run without its non-streamed pass, then interrupted; each test that
    resumes it differently gets its own copy of the file."""
    db = tmp_path_factory.mktemp("interrupted") / "e.duckdb"
    return db, _interrupted(db, *_flags(server), "--no-non-streaming")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda f: [x for x in f if x != "--quick"],
            "this campaign ran with profile attach-quick; you asked for attach",
        ),
        (
            lambda f: [*f, "--api", "openai-completions"],
            "this campaign ran with server.api openai-chat; you asked for openai-completions",
        ),
        (
            lambda f: [x if x != MODEL else "other-model" for x in f],
            "this campaign ran with models[0].label calibration; you asked for other-model",
        ),
        (
            lambda f: [x if x != TESTS else "simple-response" for x in f],
            'campaign.tests ["simple-response", "code-generation"]; '
            'you asked for ["simple-response"]',
        ),
        (
            lambda f: [x.replace("127.0.0.1", "localhost") for x in f],
            "this campaign ran with server.endpoint http://127.0.0.1:",
        ),
    ],
    ids=["profile", "api", "model", "tests", "endpoint"],
)
def test_resume_refuses_a_different_campaign(
    tmp_path: Path,
    server: CalibratedServer,
    interrupted_store: tuple[Path, str],
    change: Any,
    says: str,
) -> None:
    db = tmp_path / "e.duckdb"
    shutil.copyfile(interrupted_store[0], db)
    campaign_id = interrupted_store[1]
    before = file_sha256(db)
    flags = change([*_flags(server), "--no-non-streaming"])
    done = collect_here(*flags, "--db", str(db), "--resume", campaign_id)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: --resume: ") and says in line, line
    assert line.endswith(
        "; rerun with the same flags (or --resume alone), or without --resume for a new campaign"
    )
    assert file_sha256(db) == before


def test_resume_with_the_same_flags_continues(tmp_path: Path, server: CalibratedServer) -> None:
    db = tmp_path / "e.duckdb"
    campaign_id = _interrupted(db, *_flags(server))
    done = collect_here(*_flags(server), "--db", str(db), "--resume")
    assert done.returncode == 0, done.stderr
    assert f"resuming campaign {campaign_id}: 4 cells already stored" in done.stderr
    assert query(db, "SELECT campaign_id, status FROM campaigns") == [(campaign_id, "complete")]


def test_resume_alone_refuses_a_definition_it_cannot_rebuild(
    tmp_path: Path, server: CalibratedServer
) -> None:
    # The config passed a value to the server's environment; the store keeps it
    # redacted, so the stored definition cannot be rerun as it is.
    config = tmp_path / "c.toml"
    config.write_text(
        "[campaign]\nrepeats = 1\npause_s = 0.0\nnon_streaming = false\nidle_window_s = 0.0\n"
        'tests = ["simple-response"]\n'
        f'[server]\nmode = "attach"\nendpoint = "{server.base_url}"\n'
        'env = { SOME_TOKEN = "x" }\n'
        f'[[models]]\nlabel = "{MODEL}"\n[[configurations]]\nlabel = "attached"\n',
        encoding="utf-8",
    )
    db = tmp_path / "e.duckdb"
    campaign_id = _interrupted(db, "--config", str(config))
    before = file_sha256(db)
    done = collect_here("--db", str(db), "--resume")
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert "server.env.SOME_TOKEN" in line and f"--config {config}" in line, line
    assert file_sha256(db) == before
    # With its flags given again, it resumes.
    done = collect_here("--config", str(config), "--db", str(db), "--resume", campaign_id)
    assert done.returncode == 0, done.stderr
    assert query(db, "SELECT status FROM campaigns") == [("complete",)]


def test_interrupt_then_follow_the_hint(tmp_path: Path) -> None:
    """Stop a campaign mid-stream; the hint's command, run as printed, finishes it
    (the same campaign, every cell once), with no flag to remember."""
    db = tmp_path / "e.duckdb"
    with CalibratedServer(Scenario(tokens=400, gap_s=0.05)) as server:
        flags = [*_flags(server), "--no-non-streaming", "--db", str(db)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "moe_evidence", "collect", *flags],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=cli_env(),
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if "starting server" in line:
                break
        time.sleep(1.5)  # past the idle window: a 20 s stream is under way
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        proc.stderr.close()
        assert proc.wait(timeout=60) == 130, rest
        ((campaign_id, status),) = query(db, "SELECT campaign_id, status FROM campaigns")
        assert status == "interrupted"
        hint = re.search(r"`moe-evidence (collect [^`]*)`", rest)
        assert hint is not None, rest
        assert hint.group(1) == f"collect --resume {campaign_id} --db {db}"
        server.scenario = FAST
        done = subprocess.run(
            [sys.executable, "-m", "moe_evidence", *hint.group(1).split()],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=cli_env(),
        )
    assert done.returncode == 0, done.stderr
    assert query(db, "SELECT campaign_id, status FROM campaigns") == [(campaign_id, "complete")]
    cells = query(db, "SELECT test_id, count(*) FROM requests GROUP BY ALL ORDER BY ALL")
    assert cells == [("code-generation", 1), ("simple-response", 1)]
