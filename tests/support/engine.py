"""What the tests that run campaigns in-process share: the real engine's server
command, the campaign call itself, and progress displays that inject faults at a
chosen moment (kill a process mid-stream, script the calibrated server per test)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psutil

from calibration.scenario import Scenario
from collector import config as cfg
from collector.campaign import run_campaign
from collector.defaults import CPU_MOE, LLAMA_SERVER_COMMAND
from collector.engine import EngineBuild
from collector.progress import CampaignProgress
from collector.runner import _inspect

# Every configuration of the embedded quick campaign, in plan order (the quick
# profile thins the default sweep of K = 0, 5, ..., 30 to four K).
SWEEP_LABELS = [
    "baseline",
    "cpu-moe",
    "n-cpu-moe-0",
    "n-cpu-moe-10",
    "n-cpu-moe-20",
    "n-cpu-moe-30",
]


def server_command(engine: EngineBuild, *extra: str) -> list[str]:
    """The embedded llama-server command with the engine's binary filled in."""
    return [
        engine.server.as_posix() if part == "{llama_server}" else part
        for part in (*LLAMA_SERVER_COMMAND, *extra)
    ]


def engine_config(
    model: Path,
    engine: EngineBuild,
    *,
    configurations: Sequence[cfg.Configuration] = (CPU_MOE,),
    server_args: Sequence[str] = (),
    device: cfg.DeviceSection | None = None,
    **campaign: Any,
) -> cfg.Config:
    """A small campaign on the real engine, `model` as label "moe": no pauses, no
    non-streamed runs, the `campaign` settings given (name, tests, repeats, ...)."""
    return cfg.Config(
        campaign=cfg.CampaignSection(pause_s=0, non_streaming=False, **campaign),
        server=cfg.ServerSection(command=server_command(engine, *server_args)),
        models=[cfg.ModelEntry(label="moe", path=model)],
        configurations=list(configurations),
        device=device or cfg.DeviceSection(),
    )


class KillOnce(CampaignProgress):
    """Kills the (first) child process whose name contains `name` after the
    `after`-th network read of a stream, once."""

    def __init__(self, name: str, after: int = 8) -> None:
        super().__init__()
        self.name, self.after = name, after
        self.killed_pid: int | None = None

    def on_content(self, tokens: int, t_ns: int) -> None:
        super().on_content(tokens, t_ns)
        if self.killed_pid is None and tokens == self.after:
            for child in psutil.Process().children(recursive=True):
                if self.name in child.name():
                    self.killed_pid = child.pid
                    child.kill()
                    return


def run_in_process(
    con: duckdb.DuckDBPyConnection,
    config: cfg.Config,
    progress: CampaignProgress,
    data_dir: Path,
    *,
    engine: EngineBuild | None = None,
    model: Path | None = None,
    profile: str = "test",
    command: Sequence[str] = ("test",),
    api_key: str | None = None,
) -> str:
    """`run_campaign` as the command line calls it; the campaign's id. With `engine`
    and `model`: the real engine, the model as label "moe", inspected as `collect`
    does; without: a server the test runs itself (no model file, nothing to inspect)."""
    return run_campaign(
        con,
        config,
        profile=profile,
        command=list(command),
        model_paths={} if model is None else {"moe": model},
        engine=engine,
        inspect=_inspect if model is not None else lambda _: {},
        progress=progress,
        data_dir=data_dir,
        api_key=api_key,
    )


class ScenarioPerTest(CampaignProgress):
    """Scripts the calibrated server at `base_url` with the test's scenario just
    before its request."""

    def __init__(self, base_url: str, scenarios: Mapping[str, Scenario]) -> None:
        super().__init__()
        self.base_url, self.scenarios = base_url, scenarios

    def request(self, test: str, repeat: int, repeats: int, stream: bool) -> None:
        super().request(test, repeat, repeats, stream)
        scenario = self.scenarios[test].to_dict()
        httpx.post(f"{self.base_url}/_calibration/scenario", json=scenario, trust_env=False)
