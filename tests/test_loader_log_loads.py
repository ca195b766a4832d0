"""collector.loader_log with many loads in one log (a server that loads the model for
every request, Shimmy 1.7.0): split, each load parsed, and the loads compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.loader_log import parse_loader_log, split_loads

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
REAL_LOGS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llama-loader-logs"
needs_real_logs = pytest.mark.skipif(
    not REAL_LOGS.exists(), reason=f"reference logs not present at {REAL_LOGS}"
)
REQUEST_NOISE = "srv  log_server_r: request: POST /api/generate 127.0.0.1 200\n"


def _repeated(text: str, times: int) -> str:
    """The log a per-request-reload server writes: the whole loader log per request."""
    return "".join(text + "\n" + REQUEST_NOISE for _ in range(times))


@needs_real_logs
@pytest.mark.parametrize(
    ("name", "gpu_total", "overridden", "passes"),
    [
        ("deepseek-moe-16b-q4_k_m-baseline.log", 11363.50, 0, 1),
        ("deepseek-moe-16b-q4_k_m-cpu-moe.log", 1899.75, 81, 1),
        ("smollm2-moe-4x-b11434-cpu-moe-lv5.log", None, 90, 2),
    ],
)
def test_a_reference_log_repeated_n_times_is_n_agreeing_loads(
    tmp_path: Path, name: str, gpu_total: float | None, overridden: int, passes: int
) -> None:
    log = tmp_path / "reloads.log"
    log.write_text(_repeated((REAL_LOGS / name).read_text(encoding="utf-8"), 7), encoding="utf-8")
    one = parse_loader_log((REAL_LOGS / name).read_text(encoding="utf-8"))
    many = parse_loader_log(log.read_text(encoding="utf-8"))

    assert (one.loads, many.loads) == (1, 7)
    assert many.load_differences == ()
    if gpu_total is None:
        assert many.gpu_total_mib is None
    else:
        assert many.gpu_total_mib == pytest.approx(gpu_total)
    assert many.overridden_tensor_count == overridden
    # b11434's sizing pass stays part of its load: two passes per load, not 14 loads.
    assert many.load_passes == passes
    assert (many.buffers, many.settings) == (one.buffers, one.settings)
    if name.startswith("smollm2"):
        assert many.buffers["CPU_Mapped"]["model"] == 234.75
        assert many.buffers["CPU"]["kv"] == 90.0


@needs_real_logs
def test_loads_that_disagree_are_named() -> None:
    base = (REAL_LOGS / "deepseek-moe-16b-q4_k_m-baseline.log").read_text(encoding="utf-8")
    moe = (REAL_LOGS / "deepseek-moe-16b-q4_k_m-cpu-moe.log").read_text(encoding="utf-8")
    summary = parse_loader_log(_repeated(base, 2) + _repeated(moe, 1))

    assert summary.loads == 3
    said = " | ".join(summary.load_differences)
    assert "buffer sizes differ between load 1 and load 3 of 3" in said
    assert "overridden tensors differ between load 1 and load 3 of 3" in said
    assert "settings" not in said  # same context, threads and KV types in every load
    # The figures are the last load's, and the differences travel with them.
    assert summary.overridden_tensor_count == 81
    assert summary.to_json()["load_differences"] == list(summary.load_differences)


@pytest.mark.parametrize(
    "name",
    [
        "shimmy-b6686-cuda-baseline.log",
        "shimmy-b6686-cuda-cpu-moe.log",
        "llama-server-b11434-lv5-cpu-moe.log",
        "llama-server-b11434-lv5-cuda-n-cpu-moe-1.log",
    ],
)
def test_own_fixtures_repeated_split_into_their_loads(name: str) -> None:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    prefix, parts = split_loads(_repeated(text, 4))
    assert len(parts) == 4
    assert parse_loader_log(_repeated(text, 4)).to_json() == {
        **parse_loader_log(text).to_json(),
        "loads": 4,
    }
    # Everything before the first load's first line is start-up, not a load.
    assert "loaded meta data" not in prefix


@needs_real_logs
def test_a_start_up_line_holds_for_every_load() -> None:
    # b11434 prints its thread counts once, before loading: not a difference.
    text = (REAL_LOGS / "smollm2-moe-4x-b11434-cpu-moe-lv5.log").read_text(encoding="utf-8")
    head, rest = text.split("\n", 8)[:8], text.split("\n", 8)[8]
    summary = parse_loader_log("\n".join(head) + "\n" + _repeated(rest, 3))
    assert summary.loads == 3
    assert summary.settings.get("threads") == "2"
    assert summary.load_differences == ()


def test_a_load_cut_short_differs_from_the_others() -> None:
    text = (FIXTURES / "shimmy-b6686-cuda-cpu-moe.log").read_text(encoding="utf-8")
    cut = text[: text.index("llama_context:")]  # died before its context was made
    summary = parse_loader_log(_repeated(text, 2) + cut)
    assert summary.loads == 3
    assert any("load 3 of 3" in d for d in summary.load_differences)
