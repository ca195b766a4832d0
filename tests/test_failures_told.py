"""Failures told as failures (issue 23): a configuration that never answered, a model
file that is not one, a server that wants the key it was launched with, and the small
ways a success was recorded where there was none.

Each test is a hostile case that held wrong before its fix: the real command line,
a launched server that misbehaves on purpose, the store and the site read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from collector.apis import GenerationParams, decode_event
from collector.client import Timeouts, generate, response_cap
from common.files import file_sha256
from evidence.store import open_store
from scoring.store import rescore_campaign
from tests.support.cli import CALIBRATION_COMMAND, campaign_toml, collect_here
from tests.support.stores import StoreFactory


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# -- 1. a configuration whose every request failed ------------------------------------


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
    config = campaign_toml(
        tmp_path, model, CALIBRATION_COMMAND, '[[configurations]]\nlabel = "baseline"\n'
    )
    done = collect_here("--config", str(config), "--db", str(db))
    assert done.returncode == 1
    line = _one_line(done.stderr)
    said = (
        "is a directory; give the .gguf model file in it" if what == "folder" else "is not a GGUF"
    )
    assert said in line and "does not exist" not in line
    assert file_sha256(db) == before  # no campaign row left `running`


# -- 7. a server launched to want a key --------------------------------------------------


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
