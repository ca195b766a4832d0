"""Failures told as failures (issue 23): a configuration that never answered, a model
file that is not one, a server that wants the key it was launched with, and the small
ways a success was recorded where there was none.

Each test is a hostile case that held wrong before its fix: the real command line,
a launched server that misbehaves on purpose, the store and the site read back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from collector.apis import GenerationParams, decode_event
from collector.client import Timeouts, generate, response_cap
from collector.engine import EngineBuild
from common.files import file_sha256
from evidence.store import open_store
from report.build import BuildOptions, build_site, stage_project
from scoring.store import rescore_campaign
from tests.cli_helpers import ROOT, collect, query
from tests.engine_helpers import server_command
from tests.storefactory import StoreFactory


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _config(
    tmp: Path, model: Path, server: list[str], configurations: str, **campaign: str
) -> Path:
    settings = {
        "repeats": "2",
        "pause_s": "0",
        "warmup": "false",
        "idle_window_s": "0",
        "tests": '["simple-response", "code-generation"]',
        "max_tokens_cap": "16",
        **campaign,
    }
    text = "[campaign]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    text += f"[server]\ncommand = {json.dumps(server)}\n"
    text += f'[[models]]\nlabel = "m"\npath = {json.dumps(str(model))}\n{configurations}'
    path = tmp / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- 1. a configuration whose every request failed ------------------------------------

CALIBRATION = [sys.executable, "-m", "calibration.server", "--host", "{host}", "--port", "{port}"]


@pytest.fixture(scope="module")
def half_broken(tmp_path_factory: pytest.TempPathFactory, moe_model: Path) -> tuple[Path, str]:
    """Launch mode: `baseline` healthy, `cpu-moe` answering HTTP 500 to every request."""
    tmp = tmp_path_factory.mktemp("half-broken")
    failing = tmp / "500.json"
    failing.write_text('{"http_status": 500, "error_message": "backend exploded"}')
    config = _config(
        tmp,
        moe_model,
        CALIBRATION,
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


# -- 6. a model that is not one ---------------------------------------------------------


@pytest.mark.parametrize("what", ["text", "folder"])
def test_a_model_that_is_not_a_gguf_file_stores_no_campaign(tmp_path: Path, what: str) -> None:
    model = tmp_path / ("notes.gguf" if what == "text" else "models")
    if what == "text":
        model.write_text("not a model\n")
    else:
        model.mkdir()
    db = tmp_path / "evidence.duckdb"
    with open_store(db) as con:
        StoreFactory(con).campaign()
    before = file_sha256(db)
    config = _config(tmp_path, model, CALIBRATION, '[[configurations]]\nlabel = "baseline"\n')
    done = collect("--config", str(config), "--db", str(db), timeout=120)
    assert done.returncode == 1
    line = _one_line(done.stderr)
    said = (
        "is a directory; give the .gguf model file in it" if what == "folder" else "is not a GGUF"
    )
    assert said in line and "does not exist" not in line
    assert file_sha256(db) == before  # no campaign row left `running`


# -- 7. a server launched to want a key --------------------------------------------------


@pytest.mark.engine
def test_a_launched_server_is_sent_the_key_its_key_file_holds(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# the server's keys\nsk-in-the-file-only-0123456789\n")
    server = server_command(engine, "-t", "1", "--api-key-file", str(keys))
    config = _config(
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


# -- 9. small ways a success was recorded where there was none ---------------------------


@pytest.mark.parametrize("token", ['{"choices": 5}', '{"error": 1}', '{"choices": []}'])
def test_a_shimmy_token_that_reads_as_json_is_text(token: str) -> None:
    decoded = decode_event("shimmy", token)
    assert (decoded.kind, decoded.text) == ("content", token)


def test_a_shimmy_error_event_is_still_an_error() -> None:
    assert decode_event("shimmy", '{"error": {"message": "boom"}}').error == "boom"


def test_an_answer_that_stopped_at_its_budget_hit_it(tmp_path: Path) -> None:
    # Shimmy 1.7.0 says `stop` at max_tokens; the store infers `length` from the count.
    db = tmp_path / "evidence.duckdb"
    with open_store(db) as con:
        factory = StoreFactory(con).campaign()
        factory.server_run("baseline")
        factory.request(
            "baseline",
            [(10, "a"), (20, "b"), (30, "c")],
            max_tokens=3,
            finish_reason="stop",
            tokenized=3,
            api="shimmy",
        )
        rescore_campaign(con, factory.campaign_id)
    with duckdb.connect(str(db), read_only=True) as con:
        (detail,) = con.execute(
            "SELECT detail FROM scores WHERE name = 'completed'"
        ).fetchone() or (None,)
    facts = json.loads(detail)
    assert facts["finish_reason"] == "stop" and facts["finish_reason_inferred"] == "length"
    assert facts["hit_token_budget"] is True


@pytest.mark.parametrize("stream", [True, False])
def test_a_body_far_beyond_its_token_budget_is_refused_early(stream: bool) -> None:
    # 24 MiB of "answer" to a 50-token request: accepted whole before (the only cap was
    # 256 MiB; a 100 MB body took the collector's peak RSS from 0.66 to 1.0 GB).
    scenario = Scenario(tokens=24, gap_s=0.0, words=("x" * (1 << 20),))
    with CalibratedServer(scenario) as server:
        params = GenerationParams(
            prompt="p", max_tokens=50, temperature=0.3, seed=1, stream=stream, model="m"
        )
        result = generate(server.base_url, "openai-chat", params, timeouts=Timeouts())
    cap = response_cap(50)
    assert cap == (1 << 20) + 50 * 4096
    assert result.status == "error" and result.error is not None
    assert f"larger than {cap:,} bytes, more than an answer of 50 tokens" in result.error


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
    from tests.engine_helpers import engine_config, run_in_process

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
