"""The GPU check and its random MoE, run where there is no GPU: the same code path
with the CPU engine and a toy shape, so a GPU box meets tested code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.gpu_check import main as gpu_check
from benchmarks.random_moe import TINY
from collector.engine import EngineBuild


@pytest.mark.engine
def test_the_gpu_check_runs_on_the_cpu_engine(
    tmp_path: Path, engine: EngineBuild, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.json"
    code = gpu_check(
        ["run", "--engine", "cpu", "--shape", "tiny", "--work", str(tmp_path), "--json", str(out)]
    )
    assert code == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"baseline", "cpu-moe", f"n-cpu-moe-{TINY.layers // 2}"}
    assert all(r["decode_tps"] > 0 for r in rows.values())
    # no GPU here: every GPU view says so, none is invented
    assert all(r["nvml_device_mib"] is None and r["log_gpu_mib"] is None for r in rows.values())
    assert "12 expert tensors overridden to CPU" in rows["cpu-moe"]["note"]
    assert "6 expert tensors overridden to CPU" in rows["n-cpu-moe-2"]["note"]
    table = capsys.readouterr().out
    assert "| configuration | NVML device" in table and "| cpu-moe |" in table
