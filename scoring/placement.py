"""Expert placement check: are the expert tensors really in CPU memory?

Expected: for `--cpu-moe` every expert tensor the GGUF file has; for
`--n-cpu-moe K` those of blocks 0..K-1; for the baseline none. Observed: the
tensors the server's loader log says it overrode to a CPU-side buffer (`CPU`,
`CUDA_Host`, ... : any buffer type that is host memory). The check compares
the two sets by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Placement:
    status: str  # PASS | FAIL | NOT MEASURED
    expected_count: int | None
    overridden_count: int | None
    missing: list[str]
    unexpected: list[str]
    message: str


def expected_on_cpu(expert_tensors: list[str], n_cpu_moe: int | None) -> list[str]:
    """Expert tensors the configuration should keep in CPU memory."""
    if n_cpu_moe is None or n_cpu_moe == 0:
        return []
    if n_cpu_moe < 0:
        return sorted(expert_tensors)
    out = []
    for name in expert_tensors:
        match = _BLOCK.match(name)
        if match and int(match.group(1)) < n_cpu_moe:
            out.append(name)
    return sorted(out)


def check_placement(
    spec: dict[str, Any] | None, log_summary: dict[str, Any] | None, n_cpu_moe: int | None
) -> Placement:
    """Compare the GGUF's expert tensors with the log's overrides for one server run."""
    if not spec or "expert_tensor_names" not in spec:
        return Placement(
            "NOT MEASURED", None, None, [], [], "the model file was not inspected (attached server)"
        )
    if not log_summary:
        return Placement(
            "NOT MEASURED", None, None, [], [], "no loader log was parsed for this server run"
        )
    expected = set(expected_on_cpu(list(spec["expert_tensor_names"]), n_cpu_moe))
    overridden = set(log_summary.get("overridden_tensors") or [])
    missing = sorted(expected - overridden)
    unexpected = sorted(overridden - expected)
    total = len(spec["expert_tensor_names"])
    if not missing and not unexpected:
        if expected:
            where = "all" if len(expected) == total else f"{len(expected)} of {total}"
            message = f"{where} expert tensors in CPU memory, as configured"
        else:
            message = f"no expert tensor overridden: all {total} placed by default"
        return Placement("PASS", len(expected), len(overridden), [], [], message)
    message = (
        f"expected {len(expected)} expert tensors in CPU memory, the log shows "
        f"{len(overridden)}: {len(missing)} missing, {len(unexpected)} unexpected"
    )
    return Placement("FAIL", len(expected), len(overridden), missing, unexpected, message)
