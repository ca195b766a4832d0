"""Shared fixtures, and the two tiers.

* tests/engine/: tests that need the real llama.cpp engine (built on first use: several
  minutes on 2 cores), the real embedded model, or the headless browser. Marked `engine`
  here, by folder.
* everything else: fast tests on hand-made stores, the calibrated fake server and
  in-process code. `nox -s tests -- -m "not engine"` runs only these.

A test outside tests/engine/ that asks for the engine, the model or a real campaign's
store is refused at collection, so the fast tier stays fast."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.engine import EngineBuild
from evidence.metrics import create_views
from evidence.store import open_store
from tests.support import cli
from tests.support.charts import svgs_remembered
from tests.support.stores import StoreFactory

ENGINE_TIER = Path(__file__).parent / "engine"
# The fixtures that need the engine tier (defined below).
ENGINE_FIXTURES = frozenset({"engine", "moe_model", "quick_store"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_TIER in item.path.parents:
            item.add_marker(pytest.mark.engine)
            continue
        needs = ENGINE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if needs:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(needs))}: move it to tests/engine/ "
                f"(the fast tier runs without the engine)"
            )


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


# A campaign run in a test process (run_in_process, tests.support.cli.collect_here)
# measures the host's memory bandwidth on this buffer, not the collector's 256 MiB: the
# measurement copies 2.5 GB, half a second to a second of CPU per campaign, and no test
# here reads the figure it stores. The engine tier checks the real one, from a campaign
# run as a process of its own (quick_store), which this does not reach.
BANDWIDTH_BUFFER = 8 << 20


@pytest.fixture(scope="session", autouse=True)
def small_bandwidth_buffer() -> Iterator[None]:
    from collector import inventory, recording

    measure = functools.partial(inventory.measure_memory_bandwidth, BANDWIDTH_BUFFER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recording, "measure_memory_bandwidth", measure)
        yield


@pytest.fixture(scope="session", autouse=True)
def remembered_svgs() -> Iterator[None]:
    """Every site build of the run draws a chart's SVG once per spec (see
    tests.support.charts)."""
    with svgs_remembered():
        yield


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running `moe-evidence` in a subprocess (see tests.support.cli)."""
    return cli.cli_env()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreFactory]:
    """A hand-made store: one campaign, one `baseline` server run, views created."""
    with open_store(tmp_path / "m.duckdb") as con:
        factory = StoreFactory(con).campaign()
        factory.server_run("baseline")
        create_views(con)
        yield factory


@pytest.fixture(scope="session")
def quick_store(
    tmp_path_factory: pytest.TempPathFactory, engine: EngineBuild, moe_model: Path
) -> Path:
    """A real quick campaign (`moe-evidence collect --quick`), run once per session and
    only read by the tests that share it."""
    import subprocess

    db = tmp_path_factory.mktemp("quick") / "evidence.duckdb"
    done = subprocess.run(
        cli.collect_argv("--quick", "--db", str(db)),
        capture_output=True,
        text=True,
        env=cli.cli_env(),
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return db
