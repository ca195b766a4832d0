"""The site never contradicts itself or claims more than N supports.

Checked on the built pages (the Markdown the site is rendered from, and the chart specs)
against the store, for a synthetic store and for a real quick campaign:
- no interval or spread for a group of fewer than MIN_N_FOR_INTERVAL requests, in any table
  cell or chart;
- one VRAM-saved figure per (model, configuration), the store's, on every page that shows one;
- the gap counts are (content events - 1) summed over requests, recounted from raw chunks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.consistency import check_site
from tests.support.report import build, project

NBSP = "&nbsp;"
N_IN_CELL = re.compile(r"N(?:&nbsp;| )=(?:&nbsp;| )(\d+)")
INTERVAL_MARKS = ("±", "CI ", "CI&nbsp;")
PERCENT = re.compile(r"(-?\d+(?:\.\d+)?)(?:&nbsp;| )?%")


@pytest.mark.engine
def test_a_real_quick_campaign_agrees_with_itself(quick_store: Path, tmp_path: Path) -> None:
    root = project(tmp_path)
    check_site(quick_store, root, build(quick_store, root))
