"""A dataclass record's own fields as JSON-ready values: the one way the capture and
calibration records (model spec, loader-log summary, scenario, stream record) write
themselves out, so a field added to a record reaches its JSON without a second list."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any


def json_fields(record: Any, *, skip: Collection[str] = ()) -> dict[str, Any]:
    """`record`'s dataclass fields by name, in declaration order, but those in `skip`:
    nested records as dicts, mappings as dicts and tuples as lists, recursively
    (what `json.dumps` and `json.loads` give back). Derived values (properties) are
    the caller's to add: they are not fields."""
    return {
        f.name: _json_value(getattr(record, f.name))
        for f in dataclasses.fields(record)
        if f.name not in skip
    }


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_fields(value)
    if isinstance(value, Mapping):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value
