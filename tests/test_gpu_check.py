"""The GPU check and its random MoE, run where there is no GPU: the same code path
with the CPU engine and a toy shape, so a GPU box meets tested code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

from benchmarks.random_moe import TINY, write_random_moe
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
