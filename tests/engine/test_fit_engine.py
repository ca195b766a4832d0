"""A device too small for the baseline, on the real engine: the memory model against
llama.cpp's own buffers, the advisor's K proven by loading it, and the protocol's
scenario end to end (a quick campaign on a 160 MiB device, then its site).

The device is llama.cpp's RPC device held to a size by an address-space limit
(collector.device_limit): an allocation beyond it fails inside the device as a CUDA
out-of-memory does, so "does not fit" is the engine's own verdict, not ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest

from benchmarks.random_moe import MoeShape, write_random_moe
from collector.advisor import auto_k
from collector.config import Config, Configuration, DeviceSection, SweepSection
from collector.device import launch_rpc_servers
from collector.engine import EngineBuild
from collector.gguf_inspect import inspect_model
from collector.progress import CampaignProgress
from common.sizes import MIB
from evidence.metrics import create_views
from evidence.store import open_store
from report.build import BuildOptions, build_site, stage_project
from tests.support.cli import ROOT, collect, query
from tests.support.engine import engine_config, run_in_process

pytestmark = pytest.mark.engine

TOLERANCE = 0.02  # the bound: prediction within 2 % of the log's device buffers


def _campaign(db: Path, engine: EngineBuild, model: Path, config: Config) -> list[dict[str, Any]]:
    """Run `config` in-process; per configuration its status, the log's device buffers
    and the store's prediction (config_device_estimate)."""
    with open_store(db) as con, CampaignProgress() as progress:
        run_in_process(con, config, progress, db.parent, engine=engine, model=model)
    con = duckdb.connect(str(db), read_only=True)
    try:
        create_views(con)
        cursor = con.execute(
            """
            SELECT s.config_label AS config, s.n_cpu_moe AS k, s.status,
                   TRY_CAST(json_extract(s.log_summary, '$.gpu_total_mib') AS DOUBLE) * 1048576
                       AS log_bytes,
                   e.estimated_bytes AS predicted_bytes
            FROM server_runs s JOIN config_device_estimate e USING (campaign_id, config_label)
            ORDER BY s.started_utc
            """
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def _config(
    engine: EngineBuild, model: Path, sweep: SweepSection | None = None, **changes: Any
) -> Config:
    config = engine_config(
        model,
        engine,
        server_args=("-t", "1"),
        name="fit test",
        tests=["simple-response"],
        max_tokens_cap=4,
        warmup=False,
        **changes,
    )
    return config.model_copy(update={"sweep": sweep})


def _close(predicted: float, log: float) -> bool:
    return abs(predicted / log - 1) <= TOLERANCE


def test_the_memory_model_matches_the_log_at_every_k(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    config = _config(
        engine,
        moe_model,
        configurations=(Configuration(label="cpu-moe", args=["--cpu-moe"], n_cpu_moe=-1),),
        sweep=SweepSection(n_cpu_moe=[0, 5, 10, 15, 20, 25, 29, 30], tests=["simple-response"]),
        device=DeviceSection(kind="rpc", threads=1),
    )
    # K = 29 leaves only the last block's experts on the device, and the last block
    # computes its FFN for the output token alone: a compute buffer as small as with
    # none (predicted 15 % too high before the model knew it).
    runs = _campaign(tmp_path / "sweep.duckdb", engine, moe_model, config)
    assert len(runs) == 9 and all(r["status"] == "stopped" for r in runs)
    off = [r for r in runs if not _close(r["predicted_bytes"], r["log_bytes"])]
    assert not off, off


def test_the_memory_model_holds_for_another_shape(tmp_path: Path, engine: EngineBuild) -> None:
    # Different width, heads, expert count and experts used than the embedded model:
    # the compute buffer's terms are not fitted to one shape.
    shape = MoeShape(
        layers=6, embd=512, heads=8, kv_heads=2, ff=384, experts=8, experts_used=3,
        vocab=4096, context=4096,
    )  # fmt: skip
    model = write_random_moe(tmp_path / "other.gguf", shape)
    config = _config(
        engine,
        model,
        configurations=(Configuration(label="cpu-moe", args=["--cpu-moe"], n_cpu_moe=-1),),
        sweep=SweepSection(n_cpu_moe=[0, 3, 5], tests=["simple-response"]),
        device=DeviceSection(kind="rpc", threads=1),
    )
    runs = _campaign(tmp_path / "other.duckdb", engine, model, config)
    assert [r["status"] for r in runs] == ["stopped"] * 4
    assert all(_close(r["predicted_bytes"], r["log_bytes"]) for r in runs), runs


# 160 MiB is the scenario test's device (above): its offload configurations load there.
@pytest.mark.parametrize("mib", [120, 200])
def test_the_advisors_k_loads_and_k_minus_2_does_not(
    tmp_path: Path, engine: EngineBuild, moe_model: Path, mib: int
) -> None:
    device = DeviceSection(kind="rpc", threads=1, memory=mib * MIB)
    spec = inspect_model(moe_model).to_json()
    k = auto_k(spec, device, ["-c", "2048"])
    assert 0 < k <= 30
    config = _config(
        engine,
        moe_model,
        device=device,
        configurations=(
            Configuration(label="advised", n_cpu_moe="auto"),
            Configuration(label="two-fewer", args=["--n-cpu-moe", str(k - 2)], n_cpu_moe=k - 2),
        ),
    )
    advised, fewer = _campaign(tmp_path / f"fit{mib}.duckdb", engine, moe_model, config)
    assert advised["k"] == k and advised["status"] == "stopped"
    assert _close(advised["predicted_bytes"], advised["log_bytes"])
    assert fewer["status"] == "does_not_fit"
    assert query(tmp_path / f"fit{mib}.duckdb", "SELECT status FROM campaigns") == [("complete",)]


def test_a_device_too_small_for_the_baseline_is_the_protocols_scenario(
    tmp_path: Path, engine: EngineBuild, moe_model: Path
) -> None:
    db = tmp_path / "small.duckdb"
    done = collect(
        "--quick", "--device-memory", "160MiB", "--tests", "simple-response",
        "--db", str(db), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[smollm2-moe-4x2 / baseline] does not fit" in done.stderr
    assert query(db, "SELECT status FROM campaigns") == [("complete",)]
    runs = dict(query(db, "SELECT config_label, status FROM server_runs"))
    assert runs["baseline"] == "does_not_fit" and runs["cpu-moe"] == "stopped"
    ((error,),) = query(db, "SELECT error FROM server_runs WHERE config_label = 'baseline'")
    assert error.startswith("does not fit: the server could not allocate 234.7 MiB (model buffer)")
    assert error.endswith("on a 160 MiB device")
    gates = dict(query(db, "SELECT gate_id, status FROM gates"))
    assert gates["models-load"] == "PASS" and gates["memory-savings"] == "PASS"

    root = stage_project(ROOT, tmp_path / "project")
    build_site(BuildOptions(db=db, root=root))
    index = (root / "docs" / "index.md").read_text(encoding="utf-8")
    answer = index[index.index('<div class="answer"') : index.index('<div class="scope"')]
    assert "against the baseline's estimate: 304.2&nbsp;MiB" in answer
    assert "does not fit: the server could not allocate 234.7 MiB" in answer
    assert "no baseline request to pair with" in answer
    assert "RPC device limited to 160 MiB" in index
    # The other pages say why, and draw what there is (each of these was wrong first).
    docs = root / "docs"
    performance = (docs / "performance.md").read_text(encoding="utf-8")
    assert "no baseline to pair with: smollm2-moe-4x2: the baseline does not fit" in performance
    assert "attached, not launched" not in performance  # it was launched; it did not fit
    memory = (docs / "memory.md").read_text(encoding="utf-8")
    assert "does not fit: does not fit" not in memory
    chart = json.loads((docs / "assets" / "charts" / "memory-vram.vl.json").read_text())
    assert "baseline" in chart["spec"]["encoding"]["color"]["scale"]["domain"]


def test_a_held_device_leaves_no_core_file_when_it_aborts(
    tmp_path: Path, engine: EngineBuild
) -> None:
    # Near its size, an allocation that fails mid-compute makes ggml abort and start gdb
    # for a backtrace; gdb inherits the address-space limit, crashes, and left a 34 MB
    # core file in the folder the collector ran from (seen here). Held devices run with
    # no backtrace and no core dumps.
    device = DeviceSection(kind="rpc", threads=1, memory=64 * MIB)
    (server,) = launch_rpc_servers(device, engine.rpc_server, tmp_path, "held")
    try:
        assert server.pid is not None and server.memory_limit is not None
        process = psutil.Process(server.pid)
        assert process.rlimit(psutil.RLIMIT_CORE) == (0, 0)
        limit = server.memory_limit["address_space_bytes"]
        assert process.rlimit(psutil.RLIMIT_AS) == (limit, limit)
        assert limit == server.memory_limit["idle_address_space_bytes"] + 64 * MIB
        assert process.environ().get("GGML_NO_BACKTRACE") == "1"
    finally:
        server.stop()
