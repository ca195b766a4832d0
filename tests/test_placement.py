"""The expert placement check: what the configuration asked for against what the loader
log says moved. An offload that moved nothing never passes."""

from __future__ import annotations

from pathlib import Path

from collector.loader_log import parse_loader_log
from scoring.placement import check_placement

EXPERTS = [f"blk.{b}.ffn_{p}_exps.weight" for b in range(3) for p in ("up", "gate", "down")]


def test_cpu_moe_with_every_expert_tensor_overridden_passes() -> None:
    result = check_placement(EXPERTS, len(EXPERTS), {"overridden_tensors": EXPERTS})
    assert result.status == "PASS" and result.message.startswith("all expert tensors in CPU memory")


def test_a_baseline_with_nothing_overridden_passes() -> None:
    result = check_placement([], len(EXPERTS), {"overridden_tensors": []})
    assert result.status == "PASS"


def test_a_baseline_whose_log_shows_an_expert_override_fails() -> None:
    """--fit on can move expert tensors off the device in a baseline: the A/B would then be
    offload against offload."""
    result = check_placement([], len(EXPERTS), {"overridden_tensors": EXPERTS[:3]})
    assert result.status == "FAIL" and result.unexpected == sorted(EXPERTS[:3])


def test_a_flag_accepted_and_ignored_fails_and_says_so() -> None:
    """Shimmy 2.x accepts --cpu-moe and ignores it: the log shows no override."""
    result = check_placement(EXPERTS, len(EXPERTS), {"overridden_tensors": [], "buffers": {}})
    assert result.status == "FAIL"
    assert result.message.startswith("flag accepted, no expert tensor moved")


def test_no_loader_log_is_not_measured() -> None:
    result = check_placement(EXPERTS, len(EXPERTS), None)
    assert result.status == "NOT MEASURED" and "no loader log" in result.message


def test_a_placement_that_changes_between_loads_fails_naming_the_load() -> None:
    """A server that reloads per request logs one placement per load: the summary is the
    last load's, so an offload that held in the last load but not in an earlier one must
    not pass on the last alone."""
    logs = Path(__file__).parent / "fixtures" / "logs"
    baseline = (logs / "shimmy-b6686-cuda-baseline.log").read_text(encoding="utf-8")
    cpu_moe = (logs / "shimmy-b6686-cuda-cpu-moe.log").read_text(encoding="utf-8")
    summary = parse_loader_log(baseline + "\n" + cpu_moe).to_json()
    expected = summary["overridden_tensors"]  # the last load's: every expert tensor moved
    assert expected
    result = check_placement(expected, len(expected), summary)
    assert result.status == "FAIL"
    assert result.message.startswith("expert placement not the same in every load")
    assert "load 1 and load 2" in result.message
    # The same log loaded twice the same way passes.
    twice = parse_loader_log(cpu_moe + "\n" + cpu_moe).to_json()
    assert check_placement(expected, len(expected), twice).status == "PASS"
