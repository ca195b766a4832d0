"""The store schema (templates/_store_schema.md, on the site's Data page) documents the
store, the public interface, completely."""

from __future__ import annotations

import re
from pathlib import Path

from evidence.store import open_store

DOC = Path(__file__).resolve().parents[1] / "templates" / "_store_schema.md"


def test_every_table_and_column_is_documented(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    sections = dict(
        (m.group(1), m.group(2))
        for m in re.finditer(r"^### (\w+)\n(.*?)(?=^### |\Z)", text, re.MULTILINE | re.DOTALL)
    )
    with open_store(tmp_path / "schema.duckdb") as con:
        columns = con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main'"
        ).fetchall()
    missing = [
        f"{table}.{column}"
        for table, column in columns
        if table not in sections or f"| `{column}` |" not in sections[table]
    ]
    assert not missing, f"templates/_store_schema.md does not document: {', '.join(missing)}"
