"""`report.queries.record`: one query row -> one page dataclass, typed by its fields."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pytest

from report.queries import record, rows


@dataclass(frozen=True)
class _Row:
    model: str
    requests: int
    mean: float | None
    stream: bool
    note: str | None
    reason: str


_SQL = """
    SELECT 'm' AS model, sum(x) AS requests, avg(x)::DECIMAL(9, 2) AS mean,
           1 AS stream, NULL AS note, 'not a field' AS other
    FROM (VALUES (1::HUGEINT), (2::HUGEINT)) t(x)
"""


def test_each_field_is_its_column_converted_to_the_fields_type() -> None:
    row = rows(duckdb.connect(), _SQL)[0]
    # What DuckDB hands back is not what the page declares: a page must not print
    # a HUGEINT sum, a DECIMAL average or a 0/1 flag differently from its field.
    assert not isinstance(row["mean"], float) and not isinstance(row["stream"], bool)
    found = record(_Row, row, reason="given")
    assert found == _Row("m", 3, 1.5, True, None, "given")
    assert type(found.requests) is int and type(found.mean) is float and found.stream is True


def test_a_given_value_wins_and_a_missing_column_is_named() -> None:
    row = rows(duckdb.connect(), _SQL)[0]
    assert record(_Row, row, reason="r", mean=None).mean is None
    with pytest.raises(KeyError, match="reason"):
        record(_Row, row)
