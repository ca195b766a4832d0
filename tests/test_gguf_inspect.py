"""collector.gguf_inspect on tiny GGUF files written here, so every byte is known."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from collector.gguf_inspect import ModelSpec, inspect_model, print_spec
from common.errors import GGUFError, ModelError
from evidence.metrics import weights_on_device
from tests.support.gguf import f32, write_gguf

JSON_KEYS = {
    "path",
    "architecture",
    "name",
    "parameter_count",
    "block_count",
    "context_length",
    "expert_count",
    "expert_used_count",
    "expert_shared_count",
    "file_bytes",
    "sha256",
    "quantization_mix",
    "tensor_count",
    "tensor_bytes_total",
    "expert_tensor_count",
    "expert_tensor_bytes",
    "moe_layer_count",
    "moe_layers",
    "expert_tensor_names",
    "expert_bytes_by_layer",
    "embedding_length",
    "feed_forward_length",
    "expert_feed_forward_length",
    "expert_shared_feed_forward_length",
    "kv_elements_per_token",
    "input_tensor_bytes",
    "tied_output_bytes",
}


@pytest.fixture
def dense_model(tmp_path: Path) -> Path:
    # Q8_0 packs 32 weights into 34 bytes: two rows of 32 -> a (2, 34) byte array.
    q8_rows = np.arange(68, dtype=np.uint8).reshape(2, 34)
    return write_gguf(
        tmp_path / "dense.gguf",
        "llama",
        {"block_count": 2, "context_length": 128},
        [
            ("token_embd.weight", f32(8, 4), None),  # 32 weights, 128 bytes
            ("blk.0.attn_q.weight", np.zeros((4, 4), dtype=np.float16), None),  # 16, 32
            ("blk.1.ffn_up.weight", q8_rows, GGMLQuantizationType.Q8_0),  # 64, 68
        ],
    )


@pytest.fixture
def tiny_moe_model(tmp_path: Path) -> Path:
    return write_gguf(
        tmp_path / "moe.gguf",
        "deepseek",
        {"block_count": 3, "expert_count": 4, "expert_used_count": 2, "expert_shared_count": 1},
        [
            ("blk.0.ffn_up.weight", f32(2, 4), None),  # dense lead block, 32 bytes
            ("blk.1.ffn_gate_inp.weight", f32(4, 4), None),  # router stays on GPU, 64
            ("blk.1.ffn_gate_exps.weight", f32(4, 2, 4), None),  # 128
            ("blk.1.ffn_up_exps.weight", f32(4, 2, 4), None),  # 128
            ("blk.1.ffn_down_exps.weight", f32(4, 4, 2), None),  # 128
            ("blk.1.ffn_down_exps.bias", f32(4, 4), None),  # 64
            ("blk.1.ffn_gate_shexp.weight", f32(2, 4), None),  # shared expert stays, 32
            ("blk.2.ffn_gate_exps.weight", f32(4, 2, 4), None),  # 128
            ("blk.2.ffn_gate_exps.scale", f32(4), None),  # 16
            ("output.weight", f32(4, 4), None),  # 64
        ],
    )


def test_dense_model_byte_and_parameter_arithmetic(dense_model: Path) -> None:
    spec = inspect_model(dense_model)

    assert spec.architecture == "llama"
    assert spec.name == "tiny llama"
    assert spec.parameter_count == 32 + 16 + 64
    assert spec.tensor_count == 3
    assert spec.tensor_bytes_total == 128 + 32 + 68
    assert spec.quantization_mix == {"F16": 1, "F32": 1, "Q8_0": 1}
    assert (spec.block_count, spec.context_length) == (2, 128)
    assert (spec.expert_count, spec.expert_used_count, spec.expert_shared_count) == (
        None,
        None,
        None,
    )
    assert spec.expert_tensor_count == spec.expert_tensor_bytes == spec.moe_layer_count == 0
    on_device = [weights_on_device(spec.to_json(), k) for k in (None, -1)]
    assert on_device == [228, 228]
    assert spec.file_bytes == dense_model.stat().st_size
    assert spec.sha256 == hashlib.sha256(dense_model.read_bytes()).hexdigest()
    assert spec.path == str(dense_model.resolve())


def test_moe_model_expert_tensors_include_biases_and_scales(tiny_moe_model: Path) -> None:
    spec = inspect_model(tiny_moe_model)

    # Keys come from the architecture prefix: deepseek.expert_count, ...
    assert (spec.expert_count, spec.expert_used_count, spec.expert_shared_count) == (4, 2, 1)
    assert spec.expert_tensor_names == (
        "blk.1.ffn_down_exps.bias",
        "blk.1.ffn_down_exps.weight",
        "blk.1.ffn_gate_exps.weight",
        "blk.1.ffn_up_exps.weight",
        "blk.2.ffn_gate_exps.scale",
        "blk.2.ffn_gate_exps.weight",
    )
    assert spec.expert_tensor_bytes == 3 * 128 + 64 + 128 + 16
    assert spec.tensor_bytes_total == 784
    assert spec.moe_layers == (1, 2)
    assert spec.moe_layer_count == 2
    assert weights_on_device(spec.to_json(), -1) == 784 - 592


@pytest.mark.parametrize(
    ("k", "expected"),
    [(None, 784), (0, 784), (1, 784), (2, 784 - 448), (3, 784 - 592), (99, 784 - 592)],
)
def test_n_cpu_moe_moves_the_experts_of_blocks_below_k(
    tiny_moe_model: Path, k: int | None, expected: int
) -> None:
    # The one definition, the SQL macro the store's views use, reached from Python.
    assert weights_on_device(inspect_model(tiny_moe_model).to_json(), k) == expected


def test_to_json_keys_are_exact_and_plain(tiny_moe_model: Path) -> None:
    document = inspect_model(tiny_moe_model).to_json()

    assert set(document) == JSON_KEYS
    assert json.loads(json.dumps(document)) == document
    assert document["quantization_mix"] == {"F32": 10}
    assert document["moe_layers"] == [1, 2]


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        inspect_model(tmp_path / "absent.gguf")


def test_directory_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        inspect_model(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16],
    ids=["empty", "text", "bad-counts"],
)
def test_bad_content_is_a_gguf_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)

    with pytest.raises(GGUFError, match="not a readable GGUF file") as info:
        inspect_model(path)
    assert "\n" not in str(info.value)


def test_truncated_file_is_a_gguf_error(dense_model: Path) -> None:
    data = dense_model.read_bytes()
    dense_model.write_bytes(data[: len(data) - 40])

    with pytest.raises(GGUFError):
        inspect_model(dense_model)


def test_wrongly_typed_key_is_a_gguf_error(tmp_path: Path) -> None:
    writer = GGUFWriter(tmp_path / "odd.gguf", "llama")
    writer.add_string("llama.block_count", "thirty")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with pytest.raises(GGUFError, match=r"llama\.block_count"):
        inspect_model(tmp_path / "odd.gguf")


def test_cli_json(tiny_moe_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    print_spec(tiny_moe_model, as_json=True)

    document = json.loads(capsys.readouterr().out)
    assert set(document) == JSON_KEYS
    assert document["expert_tensor_count"] == 6


def test_cli_table(tiny_moe_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    print_spec(tiny_moe_model)

    out = capsys.readouterr().out
    assert "weights only" in out
    assert "deepseek" in out


def test_cli_lets_model_errors_propagate(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        print_spec(tmp_path / "absent.gguf")


def test_spec_is_frozen(dense_model: Path) -> None:
    spec: ModelSpec = inspect_model(dense_model)

    with pytest.raises(AttributeError):
        spec.name = "changed"  # type: ignore[misc]
