"""The RPC device on the real engine: expert tensors really leave the device, its
memory is measured per process, and a device that fails says so in one line.

Each test starts real ggml-rpc-server and llama-server processes on loopback.
Faults are injected at the narrowest seam: a wrapper command that limits the
device's memory, or a kill of the real process at a chosen moment.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest

import collector.device
import collector.session
from collector.config import (
    Config,
    Configuration,
    DeviceSection,
)
from collector.engine import EngineBuild
from collector.progress import CampaignProgress
from common.errors import EngineError, ServerError
from evidence.metrics import create_views
from evidence.store import open_store
from scoring.store import rescore_campaign
from tests.support.engine import CPU_MOE, KillOnce, engine_config, run_in_process

pytestmark = pytest.mark.engine


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        create_views(con)
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _config(
    model: Path,
    engine: EngineBuild,
    *,
    device: DeviceSection | None = None,
    tests: tuple[str, ...] = ("technical-explanation",),
    repeats: int = 1,
    configurations: tuple[Configuration, ...] = (CPU_MOE,),
) -> Config:
    return engine_config(
        model,
        engine,
        configurations=configurations,
        server_args=("-t", "1"),
        device=device or DeviceSection(kind="rpc", threads=1),
        name="device test",
        repeats=repeats,
        max_tokens_cap=48,
        tests=list(tests),
        warmup=False,
    )


def _run(
    db: Path,
    config: Config,
    engine: EngineBuild,
    model: Path,
    progress: CampaignProgress | None = None,
) -> str:
    with open_store(db) as con, progress or CampaignProgress() as shown:
        campaign_id = run_in_process(con, config, shown, db.parent, engine=engine, model=model)
        rescore_campaign(con, campaign_id)
        return campaign_id


def _rpc_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "rpc-server" in p.name()]


def test_baseline_and_cpu_moe_move_expert_tensors_off_the_device(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    db = tmp_path / "rpc.duckdb"
    config = _config(
        moe_model,
        engine,
        configurations=(
            Configuration(label="baseline"),
            CPU_MOE,
        ),
    )
    _run(db, config, engine, moe_model)

    runs = _query(
        db,
        "SELECT s.config_label, s.status, s.argv, s.device, s.device_log_text, "
        "json_extract(s.log_summary, '$.buffers'), m.device_source, "
        "m.device_idle_delta_bytes, m.device_before_bytes "
        "FROM server_runs s JOIN server_run_memory m USING (server_run_id) "
        "ORDER BY s.started_utc",
    )
    by_label = {r[0]: r for r in runs}
    for (
        label,
        status,
        argv_json,
        device_json,
        device_log,
        buffers_json,
        source,
        idle,
        before,
    ) in runs:
        argv = json.loads(argv_json)
        device = json.loads(device_json)
        (rpc,) = device["rpc_servers"]
        assert status == "stopped", label
        # llama-server was pointed at this run's own, fresh rpc-server
        assert argv[argv.index("--rpc") + 1] == rpc["endpoint"]
        assert {"-fit", "off", "-ngl", "99", "-c", "2048"} <= set(argv)
        assert rpc["launched"] and rpc["threads"] == 1 and rpc["endpoint"].startswith("127.0.0.1:")
        # both logs kept: the server's (RPC0 buffers) and the device's own
        assert "Starting RPC server" in device_log and rpc["endpoint"] in device_log
        devices = {d for d in json.loads(buffers_json) if d.startswith("RPC0[")}
        assert devices == {f"RPC0[{rpc['endpoint']}]"}
        assert source == "RPC device process"
        assert 0 < before < 64 << 20 < idle
    base = json.loads(by_label["baseline"][5])
    off = json.loads(by_label["cpu-moe"][5])
    (b_dev,) = (v for k, v in base.items() if k.startswith("RPC0["))
    (o_dev,) = (v for k, v in off.items() if k.startswith("RPC0["))
    # --cpu-moe takes the 90 expert tensors (180 MiB of 234.75) off the device
    assert b_dev["model"] == pytest.approx(234.75, abs=0.01)
    assert o_dev["model"] == pytest.approx(44.91, abs=0.01)
    # measured on the device process, the saving follows: about two thirds
    b_idle, o_idle = by_label["baseline"][7], by_label["cpu-moe"][7]
    assert 0.55 < 1 - o_idle / b_idle < 0.80
    ((source, pct, estimated),) = _query(
        db, "SELECT source, measured_pct, estimated_pct FROM vram_saved"
    )
    assert source == "measured" and abs(pct - estimated) < 5
    ((status, measured),) = _query(
        db, "SELECT status, measured FROM gates WHERE gate_id = 'memory-savings'"
    )
    assert status == "PASS" and "RPC device process" in measured
    assert not _rpc_children()


def test_device_killed_mid_stream_restarts_both_processes(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    db = tmp_path / "kill.duckdb"
    progress = KillOnce("rpc-server")
    _run(db, _config(moe_model, engine, repeats=2), engine, moe_model, progress)

    assert progress.killed_pid is not None
    runs = _query(
        db,
        "SELECT server_run_id, status, restart_of, error, "
        "json_extract(device, '$.rpc_servers[0].pid')::INT FROM server_runs "
        "ORDER BY started_utc",
    )
    first, second = runs
    assert first[1] == "crashed" and first[4] == progress.killed_pid
    assert "RPC device" in first[3]
    assert second[1] == "stopped" and second[2] == first[0] and second[4] != first[4]
    reqs = _query(db, "SELECT status, server_run_id FROM requests ORDER BY started_utc")
    assert [r[0] for r in reqs] == ["disconnected", "ok"]
    assert (reqs[0][1], reqs[1][1]) == (first[0], second[0])
    assert _query(db, "SELECT status FROM campaigns") == [("complete",)]
    assert not _rpc_children()


def test_a_device_out_of_memory_is_stored_as_does_not_fit(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    # The device gets 200 MB of address space, less than the model's 235 MiB buffer,
    # through the config's own [device] command (as a user limits it by hand).
    limited = DeviceSection(
        kind="rpc",
        threads=1,
        command=[
            "sh",
            "-c",
            'ulimit -v 200000; exec "$0" -H "$1" -p "$2" -t "$3"',
            "{rpc_server}",
            "{host}",
            "{port}",
            "{threads}",
        ],
    )
    db = tmp_path / "oom.duckdb"
    baseline = _config(
        moe_model, engine, device=limited, configurations=(Configuration(label="baseline"),)
    )
    # Its only configuration did not fit: nothing was measured, so the campaign fails,
    # saying so and what to do; the server run is stored as the finding it is.
    with pytest.raises(ServerError) as caught:
        _run(db, baseline, engine, moe_model)
    message = str(caught.value)
    assert "no configuration fit the device" in message and "moe-evidence advise" in message
    assert "\n" not in message
    ((status, error, device_log),) = _query(
        db, "SELECT status, error, device_log_text FROM server_runs"
    )
    assert status == "does_not_fit"
    assert error == "does not fit: the server could not allocate 234.7 MiB (model buffer) on RPC0"
    assert "insufficient memory" in device_log
    assert _query(db, "SELECT status FROM campaigns") == [("failed",)]
    assert not _rpc_children()


def test_a_missing_device_binary_is_one_clear_error(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    missing = DeviceSection(kind="rpc", command=[str(tmp_path / "no-such-rpc-server")])
    db = tmp_path / "missing.duckdb"
    with pytest.raises(EngineError, match=r"cannot start the RPC device .*no-such-rpc-server"):
        _run(db, _config(moe_model, engine, device=missing), engine, moe_model)
    assert _query(db, "SELECT status FROM server_runs") == [("failed_start",)]
    assert _query(db, "SELECT status FROM campaigns") == [("failed",)]


def test_a_device_that_dies_during_load_is_reported(
    tmp_path: Path, engine: EngineBuild, moe_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kill the device the moment llama-server exists, before it has loaded.
    real_launch = collector.session.launch

    def launch_and_kill_device(*args: Any, **kwargs: Any) -> Any:
        started = kwargs["on_started"]

        def on_started(server: Any) -> None:
            started(server)
            for device in _rpc_children():
                device.kill()

        kwargs["on_started"] = on_started
        return real_launch(*args, **kwargs)

    monkeypatch.setattr(collector.session, "launch", launch_and_kill_device)
    db = tmp_path / "load.duckdb"
    with pytest.raises(ServerError) as caught:
        _run(db, _config(moe_model, engine), engine, moe_model)
    assert "RPC device" in str(caught.value) and "exited" in str(caught.value)
    ((status, error),) = _query(db, "SELECT status, error FROM server_runs")
    assert status == "failed_start" and "RPC device" in error
    assert not _rpc_children()


def test_a_taken_device_port_is_named(
    tmp_path: Path, engine: EngineBuild, moe_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process takes the port between our pick and the device's bind.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    monkeypatch.setattr(collector.device, "free_port", lambda host: taken)
    db = tmp_path / "port.duckdb"
    try:
        with pytest.raises(ServerError, match=f"port {taken} on 127.0.0.1 is already in use"):
            _run(db, _config(moe_model, engine), engine, moe_model)
    finally:
        holder.close()
    assert not _rpc_children()
