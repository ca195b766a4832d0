"""The site never contradicts itself or claims more than N supports.

Checked on the built pages (the Markdown the site is rendered from, and the chart specs)
against the store, for a synthetic store and for a real quick campaign:
- no interval or spread for a group of fewer than MIN_N_FOR_INTERVAL requests, in any table
  cell or chart;
- one VRAM-saved figure per (model, configuration), the store's, on every page that shows one;
- the gap counts are (content events - 1) summed over requests, recounted from raw chunks.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.consistency import (
    check_site,
    intervals_below_min_n,
    vram_saved_on_pages,
)
from tests.support.report import build, project, synthetic_store


def test_a_synthetic_store_agrees_with_itself(tmp_path: Path) -> None:
    db = tmp_path / "synthetic.duckdb"
    synthetic_store(db)
    root = project(tmp_path)
    check_site(db, root, build(db, root))


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """Each check fails on a page that breaks its rule (so none passes vacuously)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(
        "| Model | Configuration | VRAM saved | Avg |\n|---|---|---|---|\n"
        "| m | cpu-moe | 67.6&nbsp;% | 3.0&nbsp;±&nbsp;1.0 (N&nbsp;=&nbsp;2) |\n\n"
        "| Test | Configuration | N | Mean | SD | 95&nbsp;% CI |\n|---|---|---|---|---|---|\n"
        "| t | c | 2 | 1.0 | 0.5 | 0.1&nbsp;–&nbsp;2.0 |\n",
        encoding="utf-8",
    )
    (docs / "b.md").write_text(
        "### m: `cpu-moe` against `baseline`\n\n| Question | Answer |\n|---|---|\n"
        "| **VRAM saved** (device memory) | **80.9&nbsp;%** |\n",
        encoding="utf-8",
    )
    assert len(intervals_below_min_n(docs)) == 2
    assert vram_saved_on_pages(docs) == {("m", "cpu-moe"): {67.6, 80.9}}
