"""Every config we ship runs both of its arms here.

configs/shimmy-1.7.0.toml, as shipped, except two things this machine cannot have: the `shimmy`
executable (a stand-in that takes Shimmy 1.7.0's command line and serves through the embedded
llama-server, tests/fixtures/shimmy_standin.py) and its three large models (the embedded MoE
instead). Everything else is the shipped file: Shimmy's fixed port 11435 for both arms, its
command line and flags, its timeouts. Regression: the `cpu-moe` arm failed to start with "port
11435 on 127.0.0.1 is already in use" (the baseline's TIME_WAIT sockets) and the campaign still
ended `complete`, exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from collector.engine import EngineBuild

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "fixtures" / "shimmy_standin.py"

pytestmark = pytest.mark.engine


def _with_standin(shipped: str, model: Path) -> str:
    """The shipped config with the executable and the models swapped, nothing else."""
    command = re.search(r'^command = \["shimmy", (.*)\]$', shipped, re.MULTILINE)
    assert command is not None, "the shipped config no longer starts `shimmy`: update this test"
    python = sys.executable.replace("\\", "/")
    text = shipped.replace(
        command.group(0),
        f'command = ["{python}", "{STANDIN.as_posix()}", {command.group(1)}]',
    )
    models_at, gates_at = text.index("[[models]]"), text.index("[gates]")
    one_model = (
        "[[models]]\n"
        'label = "smollm2-moe-4x2"\n'
        f'path = "{model.as_posix()}"\n'
        f'name = "{model.stem}"\n\n'
    )
    return text[:models_at] + one_model + text[gates_at:]


def test_the_shimmy_config_runs_both_arms(
    engine: EngineBuild, moe_model: Path, tmp_path: Path
) -> None:
    shipped = (ROOT / "configs" / "shimmy-1.7.0.toml").read_text(encoding="utf-8")
    config = tmp_path / "shimmy.toml"
    config.write_text(_with_standin(shipped, moe_model), encoding="utf-8")
    db = tmp_path / "evidence.duckdb"
    env = dict(os.environ, PYTHONUNBUFFERED="1", SHIMMY_STANDIN_LLAMA_SERVER=str(engine.server))
    # One protocol test shows both arms start with the shipped flags and answer (the
    # shipped config runs no sweep): 4 requests, not 36.
    command = [sys.executable, "-m", "moe_evidence", "collect", "--quick", "--db", str(db)]
    command += ["--tests", "simple-response"]
    done = subprocess.run(
        [*command, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with duckdb.connect(str(db), read_only=True) as con:
        status = con.execute("SELECT status FROM campaigns").fetchall()
        runs = con.execute(
            "SELECT config_label, status, argv FROM server_runs ORDER BY started_utc"
        ).fetchall()
        per_arm = dict(
            con.execute(
                "SELECT s.config_label, count(*) FILTER (WHERE r.status = 'ok') "
                "FROM requests r JOIN server_runs s USING (server_run_id) GROUP BY 1"
            ).fetchall()
        )
    assert status == [("complete",)]
    assert [label for label, *_ in runs] == ["baseline", "cpu-moe"]
    assert all(s == "stopped" for _, s, _ in runs), runs
    assert "--cpu-moe" in runs[1][2] and "--cpu-moe" not in runs[0][2]
    assert "11435" in runs[0][2] and "11435" in runs[1][2]  # the shipped fixed port, twice
    assert per_arm["baseline"] > 0 and per_arm["cpu-moe"] == per_arm["baseline"], per_arm
