"""Models page: what each GGUF file is, read from its header, with checksums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from report.context.common import as_dict
from report.queries import Selection, record, rows
from report.values import Figure, Missing, Quantity

_NOT_INSPECTED = "the model file was not inspected (attached server)"


@dataclass(frozen=True)
class ModelInfo:
    model: str
    label: str
    name: str | None
    architecture: str | None
    path: str
    sha256: str | None
    parameters: Figure
    experts: Figure
    experts_used: Figure
    experts_shared: Figure
    context_length: Figure
    blocks: Figure
    moe_layers: Figure
    file_size: Figure
    expert_tensors: Figure
    expert_bytes: Figure
    expert_share: Figure
    quantization: tuple[tuple[str, int], ...]
    log_check: str


@dataclass(frozen=True)
class ModelsContext:
    """The models page: one entry per model of the selected campaigns."""

    models: tuple[ModelInfo, ...]


def _fact(value: Any, unit: str = "", missing: str = _NOT_INSPECTED) -> Figure:
    return Quantity(value, unit, None) if value is not None else Missing(missing)


def _log_check(row: dict[str, Any]) -> str:
    """Do the loader log's expert counts agree with the GGUF header's?"""
    log = as_dict(row["log_summary"])
    if not log:
        return "no loader log was parsed, so the counts could not be cross-checked"
    pairs = [
        ("experts", row["expert_count"], log.get("expert_count")),
        ("active experts", row["expert_used_count"], log.get("expert_used_count")),
    ]
    known = [(n, g, lg) for n, g, lg in pairs if g is not None and lg is not None]
    if not known:
        return "neither the GGUF header nor the loader log states the expert counts"
    wrong = [f"{n}: GGUF {g}, log {lg}" for n, g, lg in known if int(g) != int(lg)]
    if wrong:
        return "MISMATCH: " + "; ".join(wrong)
    return "the loader log reports the same expert counts as the GGUF header"


def _shared_experts(experts: int | None, shared: int | None) -> Figure:
    """A MoE header without a shared-expert count declares none: nothing to measure, so
    "not applicable", not "not measured"."""
    if shared is None and experts:
        return Missing("the GGUF header declares no shared experts", not_applicable=True)
    return _fact(shared, "", "the GGUF header was not read")


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> ModelsContext:
    """The models page's context."""
    out = []
    for m in rows(
        con,
        """
        SELECT m.*, (SELECT log_summary FROM sel_runs r WHERE r.model_id = m.model_id
                     AND r.log_summary IS NOT NULL ORDER BY r.started_utc LIMIT 1) AS log_summary
        FROM sel_models m ORDER BY model_order
        """,
    ):
        spec = as_dict(m["spec"])
        total = m["tensor_bytes_total"]
        experts = m["expert_tensor_bytes"]
        mix = as_dict(spec.get("quantization_mix"))
        out.append(
            record(
                ModelInfo,
                m,
                model=m["display"],
                parameters=_fact(m["parameter_count"], "params"),
                experts=_fact(m["expert_count"], "", "the GGUF header has no expert count"),
                experts_used=_fact(m["expert_used_count"], "", "not in the GGUF header"),
                experts_shared=_shared_experts(m["expert_count"], m["expert_shared_count"]),
                context_length=_fact(m["context_length"], "tokens"),
                blocks=_fact(m["block_count"]),
                moe_layers=_fact(spec.get("moe_layer_count")),
                file_size=_fact(m["file_bytes"], "bytes"),
                expert_tensors=_fact(m["expert_tensor_count"]),
                expert_bytes=_fact(experts, "bytes"),
                expert_share=Quantity(100.0 * experts / total, "%", None)
                if experts is not None and total
                else Missing(_NOT_INSPECTED),
                quantization=tuple(
                    sorted(((str(k), int(v)) for k, v in mix.items()), key=lambda kv: -kv[1])
                ),
                log_check=_log_check(m),
            )
        )
    return ModelsContext(tuple(out))
