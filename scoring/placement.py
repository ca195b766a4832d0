"""Expert placement check: are the expert tensors really in CPU memory?

Expected: for `--cpu-moe` every expert tensor the GGUF file has; for
`--n-cpu-moe K` those of blocks 0..K-1; for the baseline none (the SQL macro
`expert_on_cpu`, evidence.metrics, decides which). Observed: the tensors the
server's loader log says it overrode to a CPU-side buffer (`CPU`, `CUDA_Host`,
... : any buffer type that is host memory). The check compares the two sets
by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placement:
    status: str  # PASS | FAIL | NOT MEASURED
    expected_count: int | None
    overridden_count: int | None
    missing: list[str]
    unexpected: list[str]
    message: str


def check_placement(
    expected_on_cpu: list[str] | None, expert_tensors: int, log_summary: dict[str, Any] | None
) -> Placement:
    """Compare the expert tensors the configuration should keep in CPU memory (None:
    the model was not inspected) with the log's overrides for one server run."""
    if expected_on_cpu is None:
        return Placement(
            "NOT MEASURED", None, None, [], [], "the model file was not inspected (attached server)"
        )
    if not log_summary:
        return Placement(
            "NOT MEASURED", None, None, [], [], "no loader log was parsed for this server run"
        )
    expected = set(expected_on_cpu)
    overridden = set(log_summary.get("overridden_tensors") or [])
    missing = sorted(expected - overridden)
    unexpected = sorted(overridden - expected)
    total = expert_tensors
    # A server that loads the model per request logs one placement per load; the
    # summary is the last load's, so a placement that changed between loads (the
    # parser names the first that differs) must not pass on the last one alone.
    moved = [
        d
        for d in log_summary.get("load_differences") or []
        if d.startswith(("overridden tensors", "override targets"))
    ]
    if moved:
        message = f"expert placement not the same in every load: {moved[0]}"
        return Placement("FAIL", len(expected), len(overridden), missing, unexpected, message)
    if not missing and not unexpected:
        if expected:
            where = "all" if len(expected) == total else f"{len(expected)} of {total}"
            message = f"{where} expert tensors in CPU memory, as configured"
        else:
            message = f"no expert tensor overridden: all {total} placed by default"
        return Placement("PASS", len(expected), len(overridden), [], [], message)
    if expected and not overridden:
        # A server that takes the flag and ignores it (Shimmy 2.x accepts --cpu-moe and
        # no longer runs llama.cpp): an offload run that offloaded nothing.
        message = (
            f"flag accepted, no expert tensor moved: expected {len(expected)} expert tensors "
            "in CPU memory, the log shows none"
        )
        return Placement("FAIL", len(expected), 0, missing, [], message)
    message = (
        f"expected {len(expected)} expert tensors in CPU memory, the log shows "
        f"{len(overridden)}: {len(missing)} missing, {len(unexpected)} unexpected"
    )
    return Placement("FAIL", len(expected), len(overridden), missing, unexpected, message)
