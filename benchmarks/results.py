"""One figure per measured quantity: printed as one table, stored in `perf_results`."""

from __future__ import annotations

import math
import operator
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from collector.inventory import collect_host
from evidence.store import open_store
from evidence.writer import Transaction, insert_row, to_json


@dataclass(frozen=True)
class Measurement:
    """A measured value, its unit and its target.

    `passed` is None when the figure has no target (a reference figure) or was
    not measured; `value` is None when it was not measured, and `detail` then
    says why under "not_measured".
    """

    name: str
    value: float | None
    unit: str
    target: str | None = None
    passed: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def result(self) -> str:
        if self.value is None:
            return "not measured"
        if self.passed is None:
            return "-"
        return "PASS" if self.passed else "FAIL"


# The condition a target states: its first comparison with a number ("p99 < 1 ms",
# ">= 100,000 rows/s", "<= 1.1 (linear, ...)").
_CONDITION = re.compile(r"(<=|>=|<|>)\s*(\d[\d,]*(?:\.\d+)?)")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
    ">": operator.gt,
}


def judged(name: str, value: float, unit: str, target: str, **detail: Any) -> Measurement:
    """A figure with a target, passed when `value` meets the condition the target
    states, so that each threshold is written once: where the table shows it."""
    condition = _CONDITION.search(target)
    if condition is None:
        raise ValueError(f"the target {target!r} states no condition such as '< 1'")
    op, bound = condition.groups()
    passed = _COMPARE[op](value, float(bound.replace(",", "")))
    return Measurement(name, value, unit, target, passed, dict(detail))


def reference(name: str, value: float, unit: str, **detail: Any) -> Measurement:
    """A figure printed for context, with no target of its own."""
    return Measurement(name, value, unit, None, None, dict(detail))


def not_measured(name: str, unit: str, reason: str, target: str | None = None) -> Measurement:
    return Measurement(name, None, unit, target, None, {"not_measured": reason})


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if value == 0 or 0.01 <= abs(value) < 1e6:
        digits = 3 if abs(value) < 10 else (1 if abs(value) < 1000 else 0)
        text = f"{value:,.{digits}f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def print_table(figures: Sequence[Measurement], console: Console, title: str) -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("Measurement")
    table.add_column("Value", justify="right")
    table.add_column("Target")
    table.add_column("Result")
    table.add_column("Note", overflow="fold")
    colours = {"PASS": "green", "FAIL": "red", "not measured": "yellow"}
    for f in figures:
        result = f.result
        style = colours.get(result)
        note = str(f.detail.get("not_measured") or f.detail.get("note") or "")
        table.add_row(
            f.name,
            format_value(f.value, f.unit),
            f.target or "",
            f"[{style}]{result}[/]" if style else result,
            note,
        )
    console.print(table)


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def store_figures(db: Path, figures: Sequence[Measurement]) -> str:
    """Write the figures as one perf run (with the host's row when the store lacks it);
    return the perf_run_id."""
    host = collect_host()
    run_id = str(uuid.uuid4())
    measured = datetime.now(UTC)
    with open_store(db) as con, Transaction(con):
        if not con.execute("SELECT 1 FROM hosts WHERE host_id = ?", [host.host_id]).fetchone():
            facts = dict(host.facts)
            facts["gpus"] = to_json(facts["gpus"])
            insert_row(con, "hosts", {"host_id": host.host_id, **facts})
        for f in figures:
            insert_row(
                con,
                "perf_results",
                {
                    "perf_run_id": run_id,
                    "host_id": host.host_id,
                    "measured_utc": measured,
                    "name": f.name,
                    "value": f.value if f.value is None or math.isfinite(f.value) else None,
                    "unit": f.unit,
                    "target": f.target,
                    "passed": f.passed,
                    "detail": to_json(_finite(f.detail)),
                },
            )
    return run_id
