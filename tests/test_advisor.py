"""`moe-evidence advise`: device memory per --n-cpu-moe K from the model file, the K
that fits, and one-line refusals; `n_cpu_moe = "auto"` in a config. The memory model
itself is checked against llama.cpp's own buffers in tests/test_fit_engine.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from benchmarks.random_moe import MoeShape, write_random_moe
from collector.advisor import RPC_MARGIN_MIN, advise, auto_k
from collector.config import Config, DeviceSection
from collector.gguf_inspect import inspect_model
from common.errors import ConfigError
from common.sizes import MIB
from moe_evidence.cli import main

SHAPE = MoeShape(
    layers=4, embd=256, heads=4, kv_heads=2, ff=256, experts=8, experts_used=2, vocab=1024,
    context=2048,
)  # fmt: skip


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_moe(tmp_path_factory.mktemp("advise") / "tiny-moe.gguf", SHAPE)


@pytest.fixture(scope="module")
def spec(moe: Path) -> dict[str, object]:
    return inspect_model(moe).to_json()


def _advise(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["advise", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_k_is_predicted_and_the_fewest_experts_that_fit_are_recommended(
    spec: dict[str, object],
) -> None:
    everything = advise(spec, 1 << 40, device="rpc", n_ctx=1024)
    sizes = [r.device_bytes for r in everything.rows]
    assert [r.k for r in everything.rows] == list(range(SHAPE.layers + 1))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert everything.recommended_k == 0  # all of it fits: keep every expert on the device

    # A device between two K: the smallest K whose prediction plus the margin fits.
    middle = (sizes[1] + sizes[2]) // 2
    advice = advise(spec, middle, device="rpc", n_ctx=1024, margin=MIB // 4)
    assert advice.recommended_k == 2
    assert sizes[2] + MIB // 4 <= middle < sizes[1] + MIB // 4
    assert [r.fits for r in advice.rows] == [False, False, True, True, True]
    assert advice.flags(2) == ["--n-cpu-moe", "2"]
    assert advice.flags(SHAPE.layers) == ["--cpu-moe"]

    nothing = advise(spec, sizes[-1] // 2, device="rpc", n_ctx=1024)
    assert nothing.recommended_k is None


def test_the_margin_is_named_and_a_gpu_keeps_what_llamas_fit_keeps(
    spec: dict[str, object],
) -> None:
    assert advise(spec, 160 * MIB, device="rpc", n_ctx=1024).margin_bytes == int(3.2 * MIB)
    assert advise(spec, 8 << 30, device="gpu", n_ctx=1024).margin_bytes == 1024 * MIB
    # On a GPU the device computes host-resident experts for prompt batches (CUDA's op
    # offload), so even K = all keeps the FFN's compute buffer.
    gpu, rpc = (advise(spec, 8 << 30, device=d, n_ctx=1024).rows[-1] for d in ("gpu", "rpc"))
    assert gpu.compute_bytes > rpc.compute_bytes


def test_the_table_and_the_json_agree(moe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--model", str(moe), "--device-memory", "12MiB", "--device", "rpc", "--ctx", "512")
    code, table, _ = _advise(capsys, *args)
    assert code == 0
    assert "recommended: K =" in table and "llama-server" in table and "shimmy serve" in table
    code, out, _ = _advise(capsys, *args, "--json")
    document = json.loads(out)
    assert set(document) >= {"rows", "recommended_k", "margin_bytes"}
    assert set(document["rows"][0]) >= {"k", "device_bytes", "fits"}
    k = document["recommended_k"]
    assert f"recommended: K = {k}," in table
    assert document["rows"][k]["fits"] and (k == 0 or not document["rows"][k - 1]["fits"])


def _dense(path: Path) -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 1)
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--device-memory", "lots"), "is not a size"),
        (("--device-memory", "8GiB", "--ctx", "100000"), "was trained for 2048 tokens"),
        (("--device-memory", "8GiB", "--margin", "some"), "is not a size"),
    ],
)
def test_refusals_are_one_line(
    moe: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], said: str
) -> None:
    code, out, err = _advise(capsys, "--model", str(moe), *args)
    assert code == 1 and not out
    assert err.count("\n") == 1 and err.startswith("error: ") and said in err


def test_a_dense_model_a_text_file_and_a_folder_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    for model, said in (
        (_dense(tmp_path / "dense.gguf"), "it is a dense model"),
        (text, "is not a readable GGUF file"),
        (tmp_path, "is a directory"),
    ):
        code, _, err = _advise(capsys, "--model", str(model), "--device-memory", "8GiB")
        assert code == 1 and said in err and err.count("\n") == 1, err


def test_auto_is_the_advice_for_the_device_memory_in_force(spec: dict[str, object]) -> None:
    sizes = [r.device_bytes for r in advise(spec, 1 << 40, device="rpc", n_ctx=1024).rows]
    # Room for K = 1 with the RPC margin, not for K = 0.
    device = DeviceSection(
        kind="rpc", memory=sizes[1] + RPC_MARGIN_MIN + (sizes[0] - sizes[1]) // 2
    )
    assert auto_k(spec, device, ["llama-server", "-c", "1024"]) == 1
    with pytest.raises(ConfigError, match=r"\[device\] memory"):
        auto_k(spec, DeviceSection(kind="rpc"), ["-c", "1024"])


def test_device_memory_is_a_size_on_the_rpc_device_only() -> None:
    assert DeviceSection(kind="rpc", memory="160MiB").memory == 160 * MIB  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RPC device only"):
        DeviceSection(kind="none", memory=1 << 30)
    with pytest.raises(ValueError, match="launches"):
        DeviceSection(kind="rpc", launch=0, endpoints=["10.0.0.2:50052"], memory=1 << 30)


def test_auto_needs_a_server_the_tool_launches() -> None:
    with pytest.raises(ValueError, match='"auto" chooses the K a launched server gets'):
        Config.model_validate(
            {
                "server": {"mode": "attach", "endpoint": "http://127.0.0.1:8080"},
                "models": [{"label": "m"}],
                "configurations": [{"label": "fit", "n_cpu_moe": "auto"}],
            }
        )
