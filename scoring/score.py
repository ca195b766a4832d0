"""The one shape every scorer returns: a named value with a JSON-able detail.

The caller stores each `Score` as a row of the `scores` table:
(request_id, name, value, detail, scorer_version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"


@dataclass(frozen=True)
class Score:
    """One named score of one request.

    `value` is what the report aggregates; `detail` says how it was reached
    (what was checked, what matched, where a loop starts) and must stay
    JSON-serialisable because it is stored as a JSON column.
    """

    name: str
    value: float | None  # None: not judged (the detail's `not_judged` says why)
    detail: JSONObject = field(default_factory=dict)


def clip_text(text: str, limit: int) -> str:
    """Shorten `text` to at most `limit` characters, marking the cut with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…"
