"""A server at 2 tokens/s, the speed the protocol is written for, is waited for.

The protocol expects local hardware at 1-3 tokens/s. A non-streamed request sends
nothing until its answer is whole, so the stall timeout used to cut any such answer
longer than a few hundred tokens ("timeout: no data for 120 s"), and the fixed
900 s request limit cut a 1000-token stream at 1 token/s. Now a request's deadline
comes from its token budget (collector.client.request_deadline) and a non-streamed
one is held to that alone.

Time is scaled down 200 times so that the tests take seconds, not 500 s: the
scenario's timeline and every rate and timeout in the config alike. At that scale
2 tokens/s is 400, the 120 s stall timeout 0.6 s, 1 token/s (the default minimum
rate) 200.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from collector.apis import GenerationParams
from collector.client import Timeouts, generate
from tests.support.cli import collect, query

# Timing or CPU-share asserts: run alone (the serial pass), never beside other tests.
pytestmark = pytest.mark.serial

SCALE = 200.0
TEST = "technical-documentation"  # the protocol's largest budget: 1000 tokens
TOKENS = 1000
RATE = 2.0  # tokens/s, unscaled
STALL_S = 120.0 / SCALE
MIN_RATE = 1.0 * SCALE


@pytest.fixture(scope="module")
def slow_server() -> Iterator[CalibratedServer]:
    # 1000 tokens at 2 tokens/s: 500 s unscaled, 2.5 s here. Not streamed, the answer
    # comes in one piece at the end, after 4 stall timeouts of silence.
    scenario = Scenario(tokens=TOKENS, gap_s=1 / (RATE * SCALE), first_token_delay_s=0.01)
    with CalibratedServer(scenario, spin_s=0) as server:
        yield server


def _config(tmp_path: Path, endpoint: str, *extra: str) -> Path:
    config = tmp_path / "slow.toml"
    lines = [
        "[campaign]",
        "repeats = 1",
        "pause_s = 0.0",
        "idle_window_s = 0.0",
        "warmup = false",
        f'tests = ["{TEST}"]',
        f"stall_timeout_s = {STALL_S}",
        f"min_tokens_per_s = {MIN_RATE}",
        *extra,
        "[server]",
        'mode = "attach"',
        f'endpoint = "{endpoint}"',
        "[[models]]",
        'label = "calibration"',
        "[[configurations]]",
        'label = "attached"',
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def test_a_1000_token_answer_at_2_tokens_per_s_completes(
    tmp_path: Path, slow_server: CalibratedServer
) -> None:
    db = tmp_path / "e.duckdb"
    done = collect("--config", str(_config(tmp_path, slow_server.base_url)), "--db", str(db))
    assert done.returncode == 0, done.stderr[-3000:]
    requests = query(
        db,
        "SELECT stream, status, error, max_tokens, length(output_text) FROM requests "
        "ORDER BY stream",
    )
    text = len(Scenario(tokens=TOKENS).text())
    # Not streamed: 2.5 s (500 s unscaled) of silence, then the whole answer.
    assert requests[0] == (False, "ok", None, TOKENS, text)
    assert requests[1] == (True, "ok", None, TOKENS, text)


def test_a_non_streamed_answer_is_not_cut_by_the_stall_timeout() -> None:
    # Silent for 1 s, six stall timeouts, then the whole answer: well within the deadline.
    scenario = Scenario(tokens=4, first_token_delay_s=1.0)
    params = GenerationParams(
        prompt="p", max_tokens=4, temperature=0.3, seed=1, stream=False, model="calibration"
    )
    with CalibratedServer(scenario) as server:
        result = generate(
            server.base_url, "openai-chat", params, timeouts=Timeouts(stall_s=0.15, request_s=5.0)
        )
    assert (result.status, result.error, result.output_text) == ("ok", None, scenario.text())
