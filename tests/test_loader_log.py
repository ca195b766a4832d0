"""collector.loader_log: the loader-log facts the whitepaper's memory figures rest on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.loader_log import LoaderLogSummary, parse_loader_log, print_log_summary
from common.errors import LogParseError
from evidence.llama_names import is_host_device

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
REAL_LOGS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llama-loader-logs"
needs_real_logs = pytest.mark.skipif(
    not REAL_LOGS.exists(), reason=f"reference logs not present at {REAL_LOGS}"
)

JSON_KEYS = {
    "settings",
    "fit_lines",
    "loads",
    "load_differences",
    "expert_count",
    "expert_used_count",
    "expert_shared_count",
    "model_params_text",
    "model_params",
    "file_size_text",
    "file_size_mib",
    "buffers",
    "gpu_total_mib",
    "gpu_model_mib",
    "gpu_kv_mib",
    "gpu_compute_mib",
    "kv_mib",
    "compute_mib",
    "cpu_mapped_mib",
    "overridden_tensor_count",
    "overridden_mib",
    "override_targets",
    "overridden_tensors",
    "overridden_layers",
    "layers_offloaded",
    "layers_total",
    "load_passes",
    "device_alloc_failure",
}


def parse_fixture(name: str, folder: Path = FIXTURES) -> LoaderLogSummary:
    return parse_loader_log((folder / name).read_text(encoding="utf-8"))


def parse_lines(*lines: str) -> LoaderLogSummary:
    return parse_loader_log("\n".join(lines))


# --- own fixtures: old format (Shimmy 1.7.0 / llama.cpp b6686) ---------------------------


def test_old_format_baseline_reads_gpu_buffers_and_model_facts() -> None:
    summary = parse_fixture("shimmy-b6686-cuda-baseline.log")

    assert summary.buffers == {
        "CPU_Mapped": {"model": 41.02},
        "CUDA0": {"model": 1503.75, "kv": 48.0, "compute": 96.5},
        "CUDA_Host": {"output": 0.12, "compute": 5.01},
    }
    assert summary.gpu_total_mib == 1648.25
    assert summary.cpu_mapped_mib == 41.02
    assert (summary.expert_count, summary.expert_used_count, summary.expert_shared_count) == (
        16,
        4,
        1,
    )
    assert summary.model_params_text == "2.71 B"
    assert summary.model_params == 2.71e9
    assert summary.file_size_text == "1.52 GiB"
    assert summary.file_size_mib == pytest.approx(1556.48)
    assert (summary.layers_offloaded, summary.layers_total) == (5, 5)
    assert summary.overridden_tensor_count == 0
    assert summary.overridden_mib == 0.0
    assert summary.override_targets == ()
    assert summary.load_passes == 1


def test_old_format_cpu_moe_counts_expert_overrides() -> None:
    summary = parse_fixture("shimmy-b6686-cuda-cpu-moe.log")

    assert summary.gpu_total_mib == 336.0
    assert summary.cpu_mapped_mib == 1414.02
    assert summary.overridden_tensor_count == 9
    assert summary.overridden_layers == (1, 2, 3)
    assert summary.override_targets == ("CUDA_Host",)
    assert summary.overridden_mib == 3 * (96 + 180 + 96)
    assert summary.overridden_tensors[0] == "blk.1.ffn_down_exps.weight"


# --- own fixtures: llama-server -lv 5 (b11434) -----------------------------------------


def test_lv5_takes_buffers_of_the_real_load_and_dedupes_overrides() -> None:
    summary = parse_fixture("llama-server-b11434-lv5-cpu-moe.log")

    assert summary.load_passes == 2
    # The sizing pass printed "CPU model buffer size = 0.00 MiB"; it must not survive.
    assert summary.buffers == {
        "CPU_Mapped": {"model": 64.5},
        "CPU": {"output": 0.19, "kv": 24.0, "compute": 12.3},
    }
    assert summary.gpu_total_mib is None
    assert summary.overridden_tensor_count == 6
    assert summary.overridden_mib == 24.0
    assert summary.overridden_layers == (0, 1)
    assert summary.override_targets == ("CPU",)
    assert (summary.expert_count, summary.expert_used_count, summary.expert_shared_count) == (
        8,
        2,
        None,
    )
    assert summary.model_params == 143.2e6
    assert summary.file_size_mib == 88.31
    assert summary.layers_offloaded is None


def test_lv5_gpu_with_n_cpu_moe_one() -> None:
    summary = parse_fixture("llama-server-b11434-lv5-cuda-n-cpu-moe-1.log")

    assert summary.buffers["CUDA0"] == {"model": 50.25, "kv": 12.0, "compute": 30.75}
    assert summary.gpu_total_mib == 93.0
    assert summary.overridden_tensors == (
        "blk.0.ffn_down_exps.weight",
        "blk.0.ffn_gate_exps.weight",
        "blk.0.ffn_up_exps.weight",
    )
    assert (summary.layers_offloaded, summary.layers_total) == (3, 3)


def test_to_json_has_exactly_the_documented_keys_and_is_plain_json() -> None:
    summary = parse_fixture("shimmy-b6686-cuda-cpu-moe.log")

    document = summary.to_json()

    assert set(document) == JSON_KEYS
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert document["overridden_layers"] == [1, 2, 3]


# --- tolerance ---------------------------------------------------------------------------


def test_crlf_and_nul_bytes_give_the_same_summary() -> None:
    text = (FIXTURES / "llama-server-b11434-lv5-cuda-n-cpu-moe-1.log").read_text(encoding="utf-8")
    damaged = text.replace("\n", "\r\n").replace("buffer size", "buffer\x00 size")

    assert parse_loader_log(damaged) == parse_loader_log(text)


def test_truncated_log_keeps_what_was_printed() -> None:
    text = (FIXTURES / "shimmy-b6686-cuda-cpu-moe.log").read_text(encoding="utf-8")
    # Cut in the middle of the CUDA0 model buffer line: the number is incomplete.
    cut = text[: text.index("CUDA0 model buffer size =") + len("CUDA0 model buffer size =  18")]

    summary = parse_loader_log(cut)

    assert summary.overridden_tensor_count == 9
    assert summary.buffers == {"CPU_Mapped": {"model": 1414.02}}
    assert summary.gpu_total_mib is None


def test_truncated_before_the_first_meta_line_counts_one_load() -> None:
    summary = parse_loader_log("load_tensors:        CUDA0 model buffer size =   10.00 MiB\n")

    assert summary.load_passes == 1
    assert summary.gpu_total_mib == 10.0


def test_older_llama_cpp_spellings() -> None:
    summary = parse_lines(
        "llm_load_print_meta: n_expert         = 8",
        "llm_load_print_meta: model params     = 46.70 B",
        "tensor blk.3.ffn_up_exps.weight buffer type overriden to CPU",
        "llm_load_tensors:      CUDA0 buffer size =  1234.50 MiB",
        "llama_kv_cache_init:      CUDA0 KV buffer size =   256.00 MiB",
        "llama_new_context_with_model:      CUDA0 compute buffer size =   100.00 MiB",
    )

    assert summary.expert_count == 8
    assert summary.model_params == 46.7e9
    assert summary.overridden_tensors == ("blk.3.ffn_up_exps.weight",)
    assert summary.overridden_mib == 0.0
    assert summary.gpu_total_mib == 1590.5


def test_lookalike_lines_are_ignored() -> None:
    summary = parse_lines(
        "~llama_context:      CUDA0 compute buffer size is  30.7500 MiB, matches expectation",
        "llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  1/1 seqs)",
        "llama_kv_cache: kv_size = 4096 overridden to 2048 to match the shared source cache",
        "llama_context:      CUDA0 LoRA buffer size =     5.00 MiB",
        "load_tensors:        CUDA0 model buffer size =    10.00 MiB",
    )

    assert summary.buffers == {"CUDA0": {"model": 10.0}}
    assert summary.overridden_tensor_count == 0


def test_host_devices_never_count_as_gpu() -> None:
    assert all(map(is_host_device, ["CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host", "ROCm_Host"]))
    assert not any(map(is_host_device, ["CUDA0", "ROCm0", "Vulkan0", "Metal", "MTL0"]))


@pytest.mark.parametrize("text", ["", "hello\nworld\n", "\x00\x00\r\n", "print_info: arch = llama"])
def test_text_without_loader_lines_raises(text: str) -> None:
    with pytest.raises(LogParseError, match="loader lines"):
        parse_loader_log(text)


_FIXTURE_LINES = sorted(
    {
        line
        for path in FIXTURES.glob("*.log")
        for line in path.read_text(encoding="utf-8").splitlines()
    }
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_FIXTURE_LINES),
            st.sampled_from(_FIXTURE_LINES).map(lambda line: line[: len(line) // 2]),
            st.text(max_size=120),
        ),
        max_size=40,
    ),
    st.sampled_from(["\n", "\r\n", "\r", "\x00"]),
)
def test_fuzz_only_log_parse_error_escapes(lines: list[str], separator: str) -> None:
    try:
        summary = parse_loader_log(separator.join(lines))
    except LogParseError:
        return
    json.dumps(summary.to_json(), allow_nan=False)


# --- the CLI body ------------------------------------------------------------------------


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    print_log_summary(FIXTURES / "shimmy-b6686-cuda-baseline.log", as_json=True)

    assert json.loads(capsys.readouterr().out)["gpu_total_mib"] == 1648.25


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    print_log_summary(FIXTURES / "llama-server-b11434-lv5-cpu-moe.log")

    out = capsys.readouterr().out
    assert "load passes" in out
    assert "CPU_Mapped" in out


def test_cli_missing_file_raises_log_parse_error(tmp_path: Path) -> None:
    with pytest.raises(LogParseError, match="not found"):
        print_log_summary(tmp_path / "nope.log")


def test_cli_names_the_file_when_it_has_no_loader_lines(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_text("nothing here\n")

    with pytest.raises(LogParseError, match=r"empty\.log"):
        print_log_summary(path)


# --- the real reference logs (read in place, never copied) --------------------------------


@needs_real_logs
def test_real_deepseek_baseline() -> None:
    summary = parse_fixture("deepseek-moe-16b-q4_k_m-baseline.log", REAL_LOGS)

    assert summary.buffers["CUDA0"] == {"model": 10231.24, "kv": 896.0, "compute": 236.26}
    assert summary.gpu_total_mib == 11363.5
    assert summary.overridden_tensor_count == 0
    assert summary.model_params == 16.38e9
    assert (summary.expert_count, summary.expert_used_count, summary.expert_shared_count) == (
        64,
        6,
        2,
    )


@needs_real_logs
def test_real_deepseek_cpu_moe() -> None:
    summary = parse_fixture("deepseek-moe-16b-q4_k_m-cpu-moe.log", REAL_LOGS)

    assert summary.buffers["CUDA0"] == {"model": 760.24, "kv": 896.0, "compute": 243.51}
    assert summary.gpu_total_mib == 1899.75
    assert summary.overridden_tensor_count == 81
    assert len(summary.overridden_layers) == 27
    assert summary.override_targets == ("CUDA_Host",)


@needs_real_logs
def test_real_smollm2_moe_lv5_cpu_only() -> None:
    summary = parse_fixture("smollm2-moe-4x-b11434-cpu-moe-lv5.log", REAL_LOGS)

    assert summary.gpu_total_mib is None
    assert summary.load_passes == 2
    assert summary.buffers["CPU_Mapped"] == {"model": 234.75}
    assert summary.buffers["CPU"]["kv"] == 90.0
    assert summary.buffers["CPU"]["compute"] == 27.64
    assert summary.overridden_tensor_count == 90
    assert (summary.expert_count, summary.expert_used_count) == (4, 2)


# --- settings the server reports ------------------------------------------------------------


def test_settings_come_from_the_log_of_the_last_load() -> None:
    summary = parse_fixture("llama-server-b11434-lv5-cpu-moe.log")
    assert summary.settings["n_ctx"] == "4096"
    assert (summary.settings["kv_type_k"], summary.settings["kv_type_v"]) == ("f16", "f16")
    # --fit ran (b11434's default): its own lines are kept, as printed.
    assert summary.fit_lines[-1] == "successfully fit params to free device memory"


def test_no_fit_lines_when_fit_did_not_run() -> None:
    summary = parse_fixture("shimmy-b6686-cuda-baseline.log")
    assert summary.fit_lines == ()
    assert summary.settings["n_ctx"] == "4096"


@needs_real_logs
def test_real_settings_b11434() -> None:
    summary = parse_fixture("smollm2-moe-4x-b11434-cpu-moe-lv5.log", REAL_LOGS)
    assert summary.settings == {
        "n_seq_max": "1",
        "n_ctx": "4096",
        "n_batch": "2048",
        "n_ubatch": "512",
        "flash_attn": "auto",
        "kv_unified": "false",
        "threads": "2",
        "threads_batch": "2",
        "kv_type_k": "f16",
        "kv_type_v": "f16",
    }
    assert any("no changes needed" in line for line in summary.fit_lines)


@needs_real_logs
def test_real_settings_shimmy_b6686() -> None:
    summary = parse_fixture("deepseek-moe-16b-q4_k_m-baseline.log", REAL_LOGS)
    assert {k: summary.settings[k] for k in ("n_ctx", "n_batch", "n_ubatch", "flash_attn")} == {
        "n_ctx": "4096",
        "n_batch": "2048",
        "n_ubatch": "512",
        "flash_attn": "auto",
    }
    assert summary.fit_lines == ()


# --- a device out of memory ---------------------------------------------------------------


def test_a_model_buffer_the_rpc_device_refused_is_its_out_of_memory() -> None:
    summary = parse_fixture("llama-server-b11434-lv5-rpc-oom-model.log")

    assert summary.device_alloc_failure == {
        "buffer": "RPC0[127.0.0.1:41591]",
        "device": "RPC0",
        "bytes": 246152448,
        "kind": "model",
    }
    assert summary.gpu_total_mib is None


def test_a_compute_buffer_refused_after_the_model_and_kv_keeps_what_was_held() -> None:
    summary = parse_fixture("llama-server-b11434-lv5-rpc-oom-compute.log")

    assert summary.device_alloc_failure == {
        "buffer": "RPC0[127.0.0.1:42333]",
        "device": "RPC0",
        "bytes": 25704448,
        "kind": "compute",
    }
    assert summary.buffers["RPC0[127.0.0.1:42333]"] == {"model": 108.19, "kv": 45.0}


def test_cuda_out_of_memory_is_read_in_its_own_words() -> None:
    summary = parse_fixture("shimmy-b6686-cuda-oom.log")

    assert summary.device_alloc_failure == {
        "buffer": "CUDA0",
        "device": "CUDA0",
        "bytes": 10728239104,
        "kind": "model",
    }


def test_a_host_buffer_that_fails_is_not_the_device_out_of_memory() -> None:
    text = (
        "llama_model_loader: loaded meta data with 3 key-value pairs and 3 tensors\n"
        "alloc_tensor_range: failed to allocate CUDA_Host buffer of size 1048576\n"
        "llama_model_load: error loading model: unable to allocate CUDA_Host buffer\n"
    )

    assert parse_loader_log(text).device_alloc_failure is None


def test_a_load_that_fits_has_no_failure() -> None:
    assert parse_fixture("llama-server-b11434-lv5-cpu-moe.log").device_alloc_failure is None
