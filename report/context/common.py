"""Small helpers the page contexts share: JSON columns, reasons, ranges, GPUs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from report.values import Figure, Missing, Quantity


@dataclass(frozen=True)
class Gpu:
    """One GPU of a host, as `hosts.gpus` recorded it."""

    name: str
    memory: Figure


def gpus(value: Any, missing: str) -> tuple[Gpu, ...]:
    """The GPUs of a `hosts.gpus` column (an empty tuple: none); `missing` is why a
    GPU shows no memory size."""
    return tuple(
        Gpu(
            str(g.get("name", "unnamed GPU")),
            Quantity(float(g["memory_bytes"]), "bytes", "measured")
            if g.get("memory_bytes") is not None
            else Missing(missing),
        )
        for g in as_list(value)
        if isinstance(g, dict)
    )


def loads(value: Any) -> Any:
    """A JSON column's value as Python data (DuckDB returns JSON as text); None stays None."""
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return None


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON object column as a dict ({} when NULL or not an object)."""
    data = loads(value)
    return data if isinstance(data, dict) else {}


def as_list(value: Any) -> list[Any]:
    """A JSON array column as a list ([] when NULL or not an array)."""
    data = loads(value)
    return data if isinstance(data, list) else []


def no_gpu_reason(gpu_status: str | None) -> str:
    """Why GPU figures are absent on a host, in the words the pages use."""
    status = (gpu_status or "GPU status not recorded").strip()
    return f"no NVIDIA GPU on this host ({status})"


def ranges(values: Iterable[int]) -> str:
    """Sorted integers as compact ranges: [1, 2, 3, 7] -> '1–3, 7'."""
    items = sorted(set(values))
    if not items:
        return "none"
    parts: list[str] = []
    start = prev = items[0]
    for v in items[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        start = prev = v
    parts.append(str(start) if start == prev else f"{start}–{prev}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Gate:
    """One gate of one campaign as the scorer stored it (`gates`, or `sel_gates` when
    the build decided them again with the starved requests)."""

    campaign: str
    gate_id: str
    title: str
    status: str
    threshold: str
    measured: str


def gate_rank(gate_id: str) -> tuple[int, str]:
    """Sort key putting gates in the protocol's order (`scoring.gates.GATES`)."""
    from scoring.gates import GATES

    order = [g for g, _ in GATES]
    return (order.index(gate_id) if gate_id in order else len(order), gate_id)
