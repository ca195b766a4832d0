"""Failures told as failures (issue 23): a configuration that never answered, a model
file that is not one, a server that wants the key it was launched with, and the small
ways a success was recorded where there was none.

Each test is a hostile case that held wrong before its fix: the real command line,
a launched server that misbehaves on purpose, the store and the site read back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.engine import EngineBuild
from evidence.store import open_store
from report.build import BuildOptions, build_site, stage_project
from tests.support.cli import CALIBRATION_COMMAND, ROOT, campaign_toml, collect, query
from tests.support.engine import server_command


@pytest.fixture(scope="module")
def half_broken(tmp_path_factory: pytest.TempPathFactory, moe_model: Path) -> tuple[Path, str]:
    """Launch mode: `baseline` healthy, `cpu-moe` answering HTTP 500 to every request."""
    tmp = tmp_path_factory.mktemp("half-broken")
    failing = tmp / "500.json"
    failing.write_text('{"http_status": 500, "error_message": "backend exploded"}')
    config = campaign_toml(
        tmp,
        moe_model,
        CALIBRATION_COMMAND,
        '[[configurations]]\nlabel = "baseline"\n'
        f'[[configurations]]\nlabel = "cpu-moe"\nargs = ["--scenario", "{failing}"]\n'
        "n_cpu_moe = -1\n",
    )
    db = tmp / "evidence.duckdb"
    done = collect("--config", str(config), "--db", str(db), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and done.stderr.rstrip().endswith(errors[0]), done.stderr
    return db, errors[0]


def test_a_configuration_that_never_answered_fails_the_campaign(
    half_broken: tuple[Path, str],
) -> None:
    db, line = half_broken
    assert "configuration m / cpu-moe: none of its 6 requests succeeded" in line
    assert "HTTP 500" in line and "stored as failed" in line
    assert query(db, "SELECT status FROM campaigns") == [("failed",)]


def test_a_site_built_from_it_says_so_first_and_scores_nothing_it_did_not_answer(
    half_broken: tuple[Path, str], tmp_path: Path
) -> None:
    db, _ = half_broken
    root = stage_project(ROOT, tmp_path / "project")
    build_site(BuildOptions(db=db, root=root))
    index = (root / "docs" / "index.md").read_text(encoding="utf-8")
    first = index[: index.index('<div class="answer"')]
    assert '!!! danger "m / cpu-moe failed"' in first
    answer = index[index.index('<div class="answer"') : index.index('<div class="scope"')]
    # Not a saving, not the host's load, not a verdict that passes it by.
    assert "this configuration failed: not one of its 6 requests succeeded" in answer
    assert "starve" not in answer.split("Release verdict")[0]
    assert "**NOT READY**" in answer
    (row,) = [r for r in index.splitlines() if r.startswith("| m | cpu-moe |")]
    assert "1.00" not in row and "no answer to judge" in row


@pytest.mark.engine
def test_a_launched_server_is_sent_the_key_its_key_file_holds(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# the server's keys\nsk-in-the-file-only-0123456789\n")
    server = server_command(engine, "-t", "1", "--api-key-file", str(keys))
    config = campaign_toml(
        tmp_path,
        moe_model,
        server,
        '[[configurations]]\nlabel = "baseline"\n',
        repeats="1",
        non_streaming="false",
        tests='["simple-response"]',
    )
    db = tmp_path / "evidence.duckdb"
    done = collect("--config", str(config), "--db", str(db), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert query(db, "SELECT status FROM requests") == [("ok",)]
    assert "sk-in-the-file-only" not in done.stdout + done.stderr


@pytest.mark.engine
def test_ctrl_c_inside_a_query_is_an_interruption_not_a_failure(
    tmp_path: Path, engine: EngineBuild, moe_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DuckDB stops a query that Ctrl-C reaches and raises RuntimeError("Query
    # interrupted") in place of the KeyboardInterrupt: the campaign was stored `failed`
    # with a traceback (seen in CI-like runs: the per-request load-allowance query).
    import collector.campaign
    from collector.campaign import CampaignInterrupted
    from collector.progress import CampaignProgress
    from tests.support.engine import engine_config, run_in_process

    real = collector.campaign._load_allowance_s
    calls = []

    def interrupted(*args: object) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("Query interrupted")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(collector.campaign, "_load_allowance_s", interrupted)
    config = engine_config(
        moe_model, engine, tests=["simple-response"], repeats=3, max_tokens_cap=4, warmup=False
    )
    db = tmp_path / "evidence.duckdb"
    with (
        open_store(db) as con,
        CampaignProgress() as progress,
        pytest.raises(CampaignInterrupted),
    ):
        run_in_process(con, config, progress, tmp_path, engine=engine, model=moe_model)
    assert query(db, "SELECT status FROM campaigns") == [("interrupted",)]
    assert query(db, "SELECT status, error FROM server_runs") == [
        ("stopped", "campaign interrupted (Ctrl-C)")
    ]
