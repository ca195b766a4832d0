"""Bad input to `moe-evidence collect`: one line, a non-zero exit, nothing stored touched.

Every case runs the real command line against a store that already holds a
campaign, with a live calibrated server to attach to, so the only thing wrong is
the input under test. The command must exit 1 with exactly one line on stderr,
`error: ...`, that says what to do, and leave the store's file byte for byte as it
was: a refused campaign stores nothing, not even an empty campaign that a later
build would show instead of the good one. The scheme-less endpoints and the store
folder that cannot be made run `python -m moe_evidence` in a process of its own;
the other cases run its entry point in this one (tests.support.cli.collect_here),
which gives the same exit code and the same stderr for a fraction of the CPU.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from common.files import file_sha256
from evidence.store import open_store
from tests.support.cli import collect, collect_here
from tests.support.stores import StoreFactory

ROOT = Path(__file__).resolve().parents[1]
MODEL = "calibration"
# How a case runs the command: in a process of its own (collect) or in this one.
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server() -> Iterator[CalibratedServer]:
    with CalibratedServer(Scenario(tokens=4, gap_s=0.001)) as calibrated:
        yield calibrated


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store that already holds one campaign with requests."""
    db = tmp_path / "evidence.duckdb"
    with open_store(db) as con:
        factory = StoreFactory(con).campaign()
        factory.server_run("baseline")
        factory.request("baseline", [(10, "a"), (20, "b")])
    return db


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single `error: ...` line of a refused command (asserts there is nothing else)."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def _refused(db: Path, *args: str, run: Run = collect_here) -> str:
    """The one error line of `moe-evidence collect ARGS --db DB` (`run` in this process,
    unless given), which must leave the store's file byte for byte as it was."""
    before = file_sha256(db)
    line = _one_line(run(*args, "--db", str(db)))
    assert file_sha256(db) == before
    return line


def _attached(server: CalibratedServer, *extra: str) -> list[str]:
    return [
        "--endpoint",
        server.base_url,
        "--model",
        MODEL,
        "--quick",
        "--no-non-streaming",
        *extra,
    ]


# -- flags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tests", ","], ["--tests", "no test"]),
        (["--tests", " , ,"], ["--tests", "no test"]),
        (["--tests", "bogus"], ["'bogus'", "simple-response", "research-analysis"]),
        (["--tests", "simple-response,bogus"], ["'bogus'", "simple-response"]),
        (["--pause", "inf"], ["--pause", "finite"]),
        (["--pause", "nan"], ["--pause", "finite"]),
    ],
    ids=["comma", "blanks", "unknown", "one-unknown", "pause-inf", "pause-nan"],
)
def test_bad_flags_are_one_line(
    server: CalibratedServer, store: Path, flags: list[str], says: list[str]
) -> None:
    line = _refused(store, *_attached(server, *flags))
    for piece in says:
        assert piece in line


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--device-memory", "lots"], ["--device-memory", "'lots' is not a size", "160MiB"]),
        (["--device-memory", "0MiB"], ["--device-memory", "not a positive size"]),
        (["--device", "none", "--device-memory", "1GiB"], ["--device-memory", "RPC device only"]),
        (["--device-memory", "1GiB"], ["--device-memory", "RPC device only"]),
    ],
    ids=["not-a-size", "zero", "no-device", "attached"],
)
def test_a_device_memory_that_cannot_be_held_is_one_line(
    server: CalibratedServer, store: Path, flags: list[str], says: list[str]
) -> None:
    # Attached, the server's device is not this tool's to limit: refused like --device none.
    line = _refused(store, *(flags if "--device" in flags else _attached(server, *flags)))
    for piece in says:
        assert piece in line


def test_https_endpoint_is_refused_as_unsupported(server: CalibratedServer, store: Path) -> None:
    endpoint = f"https://127.0.0.1:{server.port}"
    line = _refused(store, "--endpoint", endpoint, "--model", MODEL, "--quick")
    assert "https" in line and "not supported" in line and "http://" in line


@pytest.mark.parametrize("endpoint", ["127.0.0.1:{port}", "localhost:{port}"])
def test_scheme_less_endpoint_names_the_fix(
    server: CalibratedServer, store: Path, endpoint: str
) -> None:
    endpoint = endpoint.format(port=server.port)
    line = _refused(store, "--endpoint", endpoint, "--model", MODEL, "--quick", run=collect)
    assert f"http://{endpoint}" in line


# -- config files --------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, float) and value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def _config(
    path: Path,
    endpoint: str,
    campaign: dict[str, Any] | None = None,
    configurations: list[dict[str, Any]] | None = None,
    extra: str = "",
) -> Path:
    settings = {
        "repeats": 1,
        "pause_s": 0.0,
        "non_streaming": False,
        "idle_window_s": 0.0,
        "tests": ["simple-response"],
        **(campaign or {}),
    }
    # `configurations = []` is a top-level key: it must come before the first table.
    lines = ["configurations = []"] if configurations == [] else []
    lines += ["[campaign]", *(f"{k} = {_toml(v)}" for k, v in settings.items())]
    lines += ["[server]", 'mode = "attach"', f'endpoint = "{endpoint}"']
    lines += ["[[models]]", f'label = "{MODEL}"']
    for configuration in [{"label": "attached"}] if configurations is None else configurations:
        lines.append("[[configurations]]")
        lines += [f"{k} = {_toml(v)}" for k, v in configuration.items()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


# Attached, the tool cannot pass --n-cpu-moe K: every "sweep" run would be the same
# server, recorded as K offloaded layers it never had.
SWEEP = '[sweep]\nn_cpu_moe = [0, 8]\ntests = ["simple-response"]\n'
FLAGGED = [{"label": "cpu-moe", "args": ["--cpu-moe"], "n_cpu_moe": -1}]


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"campaign": {"tests": []}}, ["campaign.tests", "at least one"]),
        ({"campaign": {"stall_timeout_s": float("inf")}}, ["campaign.stall_timeout_s", "finite"]),
        ({"campaign": {"stall_timeout_s": float("nan")}}, ["campaign.stall_timeout_s"]),
        ({"campaign": {"stall_timeout_s": -1.0}}, ["campaign.stall_timeout_s", "greater than 0"]),
        (
            {"campaign": {"request_timeout_s": float("inf")}},
            ["campaign.request_timeout_s", "finite"],
        ),
        ({"configurations": []}, ["configurations", "at least one"]),
        ({"extra": SWEEP}, ["sweep", "attach"]),
        ({"configurations": FLAGGED}, ["configurations[0].args", "attach"]),
        ({"endpoint": "127.0.0.1:{port}"}, ["server.endpoint", "http://127.0.0.1:{port}"]),
    ],
    ids=[
        "no-tests",
        "stall-inf",
        "stall-nan",
        "stall-negative",
        "request-inf",
        "no-configurations",
        "sweep-attached",
        "flags-attached",
        "scheme-less-endpoint",
    ],
)
def test_bad_config_files_are_one_line(
    tmp_path: Path,
    server: CalibratedServer,
    store: Path,
    config: dict[str, Any],
    says: list[str],
) -> None:
    endpoint = str(config.get("endpoint", server.base_url)).format(port=server.port)
    shape = {k: v for k, v in config.items() if k != "endpoint"}
    path = _config(tmp_path / "c.toml", endpoint, **shape)
    line = _refused(store, "--config", str(path))
    assert line.startswith(f"error: {path}: ")
    for piece in says:
        assert piece.format(port=server.port) in line


# -- the store -----------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1000, 0.5], ids=["first-1000-bytes", "first-half"])
def test_a_truncated_store_is_one_line_and_left_alone(
    tmp_path: Path, server: CalibratedServer, store: Path, keep: float
) -> None:
    data = store.read_bytes()
    cut = tmp_path / "truncated.duckdb"
    cut.write_bytes(data[: int(keep if keep > 1 else len(data) * keep)])
    line = _refused(cut, *_attached(server))
    assert str(cut) in line and "--db" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evidence.duckdb", "truncated.duckdb"]


def test_a_store_folder_that_cannot_be_made(tmp_path: Path, server: CalibratedServer) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be", encoding="utf-8")
    db = blocker / "evidence.duckdb"
    line = _one_line(collect(*_attached(server), "--db", str(db)))
    assert str(blocker) in line and "--db" in line
    assert blocker.read_text(encoding="utf-8") == "a file where the store's folder should be"
