"""The plan of a campaign: which servers start, and which cells each serves.

A cell is (model, configuration, test, repeat, stream); each becomes one row in
`requests`. Per configuration the tests run in protocol order for each
repeat, then once more without streaming; a `--n-cpu-moe` sweep adds one
server configuration per K on its chosen tests and its speed probes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from collector.config import Config, Configuration, ModelEntry
from collector.engine import EngineBuild
from collector.probes import probe_tests
from collector.progress import CampaignProgress
from collector.protocol import PROTOCOL, ProtocolTest


@dataclass(frozen=True)
class Cell:
    model: str
    config: str
    test_id: str
    repeat: int
    stream: bool


@dataclass(frozen=True)
class ServerPlan:
    """One server configuration of one model, and the cells it serves."""

    model: ModelEntry
    configuration: Configuration
    cells: tuple[Cell, ...]
    tests: tuple[ProtocolTest, ...]


@dataclass
class CampaignContext:
    con: duckdb.DuckDBPyConnection
    campaign_id: str
    config: Config
    progress: CampaignProgress
    model_ids: dict[str, str] = field(default_factory=dict)
    model_paths: dict[str, Path] = field(default_factory=dict)
    engine: EngineBuild | None = None
    data_dir: Path = Path("data")
    api_key: str | None = None
    clock: Callable[[], int] = time.perf_counter_ns


def test_max_tokens(config: Config, test: ProtocolTest) -> int:
    cap = config.campaign.max_tokens_cap
    return min(test.max_tokens, cap) if cap else test.max_tokens


def sweep_probes(config: Config) -> tuple[ProtocolTest, ...]:
    """The sweep's speed probes (collector.probes), none without a sweep."""
    sweep = config.sweep
    if sweep is None or not sweep.prompt_tokens:
        return ()
    return probe_tests(sweep.prompt_tokens, sweep.decode_tokens)


def server_plans(config: Config) -> list[ServerPlan]:
    """Every server configuration to start, in order, with its cells."""
    plans: list[ServerPlan] = []
    camp = config.campaign
    main_tests = PROTOCOL.select(camp.tests)
    configurations: list[tuple[Configuration, tuple[ProtocolTest, ...], int, bool]] = [
        (c, main_tests, camp.repeats, camp.non_streaming) for c in config.configurations
    ]
    if config.sweep is not None:
        sweep_tests = (
            main_tests if config.sweep.tests is None else PROTOCOL.select(config.sweep.tests)
        ) + sweep_probes(config)
        for k in config.sweep.n_cpu_moe:
            args = [a.replace("{k}", str(k)) for a in config.sweep.args] if k > 0 else []
            configurations.append(
                (
                    Configuration(label=f"n-cpu-moe-{k}", args=args, n_cpu_moe=k),
                    sweep_tests,
                    config.sweep.repeats,
                    False,
                )
            )
    for model in config.models:
        for configuration, tests, repeats, non_streaming in configurations:
            cells = [
                Cell(model.label, configuration.label, t.test_id, r, True)
                for r in range(1, repeats + 1)
                for t in tests
            ]
            if non_streaming:
                cells += [
                    Cell(model.label, configuration.label, t.test_id, 1, False) for t in tests
                ]
            plans.append(ServerPlan(model, configuration, tuple(cells), tests))
    return plans
