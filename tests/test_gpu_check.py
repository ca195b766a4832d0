"""The GPU check and its random MoE, run where there is no GPU: the same code path
with the CPU engine and a toy shape, so a GPU box meets tested code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from benchmarks.gpu_check import main as gpu_check
from benchmarks.random_moe import TINY, write_random_moe
from collector.engine import EngineBuild
from collector.gguf_inspect import inspect_model


def test_the_random_moe_has_the_shape_asked_for(tmp_path: Path) -> None:
    path = write_random_moe(tmp_path / "tiny.gguf", TINY)
    spec = inspect_model(path)
    assert (spec.expert_count, spec.expert_used_count) == (TINY.experts, TINY.experts_used)
    assert spec.expert_tensor_count == 3 * TINY.layers
    reader = GGUFReader(path)
    gate = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate_exps.weight")
    assert gate.tensor_type == GGMLQuantizationType.Q8_0
    assert [int(n) for n in gate.shape] == [TINY.embd, TINY.ff, TINY.experts]
    # every Q8_0 block's scale is a finite, non-zero f16

    blocks = np.asarray(gate.data).reshape(-1, 34)
    scales = blocks[:, :2].copy().view(np.float16)
    assert np.isfinite(scales).all() and (scales != 0).all()


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
